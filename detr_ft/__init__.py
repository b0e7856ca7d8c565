"""detr-ft: fine-tune DETR with static shapes on Gaudi (HPU), CUDA and CPU.

The package follows the pipeline: data/ -> model/ -> train/ -> evaluation/; run_object_detection.py (the entry)
assembles them. run_files.py names the json files a run folder holds; console.py sets up what a person reads.
"""
