"""Model samples from a split: pixels as `images.Preprocessing` makes them, and boxes normalised to their image.

    image  -> RGB -> augment (train only) -> `Preprocessing.pixels` (resize to fit the image's canvas: long side
              image_size; ImageNet normalisation, or none with `uint8_pixels`: the trainer's, on the device)
    boxes  -> COCO [x, y, w, h] pixels -> normalised (cx, cy, w, h) relative to the unpadded image

Boxes are normalised by the image they belong to, before any padding (the original DETR convention), so
`box * (orig_w, orig_h)` gives original pixels whatever the resize or padding was.
"""

from __future__ import annotations

import os

import albumentations as A
import numpy as np
import torch
from PIL import Image

from detr_ft.data.augmentation import reseed_augmentation
from detr_ft.data.canvases import assign_canvases
from detr_ft.data.images import Canvas, Preprocessing
from detr_ft.data.loader_workers import exit_with
from detr_ft.data.sources import CocoSplit
from detr_ft.data.validation import clean_objects


class DetectionDataset(torch.utils.data.Dataset):
    """Model samples from a `CocoSplit`: pixel_values (3, h, w) with max(h, w) == image_size, plus targets.

    `canvases` (H, W) (`detr_ft.data.canvases`; default the image_size square): each image is fitted into the one
    `canvas_of` names, chosen from its json width and height. `uint8_pixels`: pixel_values are the 8-bit pixels,
    for the trainer to normalise on the device (`images.model_pixels`); else float, normalised."""

    def __init__(self, split: CocoSplit, category_to_label: dict[int, int], image_size: int,
                 augmentation: A.Compose | None = None, canvases: list[Canvas] | None = None,
                 uint8_pixels: bool = False):
        self.split = split
        self.image_size = image_size
        self.preprocessing = Preprocessing(image_size)
        self.uint8_pixels = uint8_pixels
        self.augmentation = augmentation
        self.objects = clean_objects(split, category_to_label)
        self.canvases = canvases or [(image_size, image_size)]
        self.canvas_of = assign_canvases(split.image_sizes(), image_size, self.canvases)  # (N,)
        self.max_image_pixels = Image.MAX_IMAGE_PIXELS  # the run's --max_image_pixels, set process-wide before

    def __getstate__(self) -> dict:
        return {**self.__dict__, "loading_process": os.getpid()}

    def __setstate__(self, state: dict) -> None:
        """Unpickled in a data loader worker that was not forked from the training process (forkserver, spawn).
        Pillow's process-wide decompression-bomb limit is back at its default there: set the run's again. And the
        worker ends itself once the process that pickled the dataset is gone (`loader_workers.exit_with`)."""
        loading_process = state.pop("loading_process")
        self.__dict__.update(state)
        Image.MAX_IMAGE_PIXELS = self.max_image_pixels
        if loading_process != os.getpid():
            exit_with(loading_process)

    def __len__(self) -> int:
        return len(self.objects)

    def object_counts(self) -> np.ndarray:
        return np.array([len(labels) for _, labels in self.objects])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.split.open_image(i)
        boxes, labels = self.objects[i]  # (n, 4) xywh pixels, (n,)
        if self.augmentation is not None:
            reseed_augmentation(self.augmentation)
            out = self.augmentation(image=np.asarray(image), bboxes=boxes, labels=labels)
            image = Image.fromarray(out["image"])
            boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)  # (n', 4)
            labels = np.asarray(out["labels"], np.int64)  # (n',)
        size = np.array([image.width, image.height], np.float32)  # (2,)
        centers = (boxes[:, :2] + boxes[:, 2:] / 2) / size  # (n, 2)
        canvas = self.canvases[self.canvas_of[i]]
        pixels = self.preprocessing.uint8_pixels if self.uint8_pixels else self.preprocessing.pixels
        return {
            "pixel_values": pixels(image, canvas),  # (3, h, w) uint8 or float
            "canvas": torch.tensor(canvas),  # (2,) H, W: what the collator pads to
            "class_labels": torch.from_numpy(labels),  # (n,)
            "boxes": torch.from_numpy(np.concatenate([centers, boxes[:, 2:] / size], axis=1)),  # (n, 4)
            "image_index": torch.tensor(i),
        }


class PaddedToMultiple(torch.utils.data.Dataset):
    """Evaluation set grouped by canvas, each group padded with blank filler images (image_index -1, no objects) of
    its canvas to a multiple of `multiple`.

    With it every evaluation batch is full and on one canvas, so shapes stay constant with
    `dataloader_drop_last=True`; the metrics skip the fillers. One canvas: the dataset in order, then the fillers.
    """

    def __init__(self, dataset: DetectionDataset, multiple: int):
        self.dataset = dataset
        self.order: list[tuple[int, int]] = []  # (dataset index or -1 for a filler, canvas index)
        for canvas, _ in enumerate(dataset.canvases):
            members = np.flatnonzero(dataset.canvas_of == canvas).tolist()
            self.order += [(i, canvas) for i in members] + [(-1, canvas)] * (-len(members) % multiple)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        index, canvas = self.order[i]
        if index >= 0:
            return self.dataset[index]
        height, width = self.dataset.canvases[canvas]
        return {
            "pixel_values": torch.zeros(3, height, width),  # (3, H, W)
            "canvas": torch.tensor([height, width]),  # (2,)
            "class_labels": torch.zeros(0, dtype=torch.int64),  # (0,)
            "boxes": torch.zeros(0, 4),  # (0, 4)
            "image_index": torch.tensor(-1),
        }
