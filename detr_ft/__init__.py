"""detr-ft: fine-tune DETR with static shapes on Gaudi (HPU), CUDA and CPU.

The package follows the pipeline: config.py (every flag) -> data/ -> model/ -> train/ -> evaluation/, each stage
importing only earlier ones; run_object_detection.py (the entry) assembles them. run_files.py names the json files a
run folder holds, write_failure.py tells a failed write in one line, launcher.py reads a process's rank, console.py
sets up what a person reads, demo.py runs the offline demos.
"""

import os

# albumentations (2.x) asks its package index for a newer version at every import, blocking up to 2 s offline.
# Set here, the package's first import point, so it holds before any module imports albumentations.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
