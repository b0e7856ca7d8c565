"""Images/s of the training data path alone: a COCO split read as training reads it (decode, augment, resize to the
image size, normalise or not, collate), through a DataLoader with a given number of workers, no model.

`make bench` measures it on CPPE-5's test split beside the eager steps' images/s; scripts/gpu_check.sh on its
synthetic training set beside the GPU's, with float pixels (normalised in the workers) and with 8-bit ones
(`--normalize_on_device`), pinned as the Trainer pins them for an accelerator.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from detr_ft.data.augmentation import train_augmentation
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.labels import ClassMapping
from detr_ft.data.padding import DetectionCollator
from detr_ft.data.sources import load_coco_folder


def loader_images_per_s(data_dir: Path, split_name: str, image_size: int, batch_size: int, workers: int,
                        epochs: int = 1, uint8_pixels: bool = False, pin_memory: bool = False) -> dict:
    """Images/s over `epochs` shuffled epochs of augmented batches on the image_size square, timed from the first
    batch on (the workers' start-up left out): {"workers", "images", "images_per_s", "uint8_pixels"}."""
    split = load_coco_folder(data_dir, split_name)
    dataset = DetectionDataset(split, ClassMapping.from_categories(split.coco["categories"]).category_to_label,
                               image_size, train_augmentation(), uint8_pixels=uint8_pixels)
    loader = torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, num_workers=workers,
                                         collate_fn=DetectionCollator(image_size), drop_last=True,
                                         pin_memory=pin_memory)
    start, images = None, 0
    for _ in range(epochs):
        for batch in loader:
            if start is None:
                start = time.perf_counter()
                continue
            images += len(batch["pixel_values"])
    seconds = time.perf_counter() - start if start is not None else 0.0
    return {"workers": workers, "images": images, "images_per_s": images / seconds if images else 0.0,
            "uint8_pixels": uint8_pixels}
