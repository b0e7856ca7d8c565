"""Batching with static shapes: images padded to one canvas, targets padded to a few bucket sizes.

Images: padded bottom/right with zeros to the canvas the batch's samples were fitted to (`pad_images`: the
image_size x image_size square, or the aspect-ratio canvases of `detr_ft.data.canvases`), else the smallest canvas
holding them, or to the batch's largest image (stock behaviour); `pixel_mask` marks real pixels. The samples' own
canvas decides, not their size: a shrunk augmented crop may fit a smaller canvas, and with one image per process
the processes of a step would then train on different canvases than the one the sampler drew. 8-bit images
(`--normalize_on_device`) keep their dtype; `images.model_pixels` normalises them on the device and gives their
padding the normalised images' 0.

Targets: with buckets, a batch's targets are padded to T = the smallest bucket holding its fullest image and
returned as one dense dict (class_labels (B, T), boxes (B, T, 4), valid (B, T)); valid objects come first,
padded rows hold class 0 and the box (0.5, 0.5, 1, 1) so every op on them stays finite. Without buckets the
labels are the list of per-image dicts that the stock transformers loss expects.

Bucket sizes come once from the training set's objects-per-image counts: 1 bucket = the maximum; N buckets =
the counts' quantiles at 1/N, 2/N, ..., 1 (rounded up, deduplicated), so each bucket serves about as many
images and the graph count stays at N.
"""

from __future__ import annotations

import bisect
import logging

import numpy as np
import torch

from detr_ft.data.images import Canvas

logger = logging.getLogger(__name__)

# The box padded target rows carry, and unmatched queries are compared with in the loss (model/criterion.py): a real
# box, so every op on it stays finite, and identical on both sides, so it adds exactly zero loss and gradient.
PAD_BOX = (0.5, 0.5, 1.0, 1.0)


def compute_bucket_sizes(object_counts: np.ndarray, num_buckets: int) -> list[int]:
    """Sorted bucket sizes (>= 1) for `num_buckets` >= 1 from the objects-per-image counts."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1 to pad objects, got {num_buckets}")
    quantiles = np.quantile(object_counts, np.arange(1, num_buckets + 1) / num_buckets)  # (N,)
    return sorted({max(1, int(np.ceil(q))) for q in quantiles})


class DetectionCollator:
    """Collate samples of `DetectionDataset` into the model's batch dict.

    Images go to the square `image_size` canvas, or to one of `canvases` (H, W): the one the samples name
    (`canvas`), else the smallest holding them all; neither given: the batch's largest image."""

    def __init__(self, image_size: int | None = None, bucket_sizes: list[int] | None = None,
                 canvases: list[Canvas] | None = None):
        square = [(image_size, image_size)] if image_size else None
        self.canvases = sorted((tuple(canvas) for canvas in canvases or square or []),
                               key=lambda canvas: canvas[0] * canvas[1]) or None  # tuples: a json gives lists
        self.bucket_sizes = sorted(bucket_sizes) if bucket_sizes else None
        self.overflow_warned = False
        self.canvas_overflow_warned = False

    def __call__(self, samples: list[dict[str, torch.Tensor]]) -> dict:
        return {**self.pad_images(samples), "labels": self.targets(samples)}

    def pad_images(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        heights = [s["pixel_values"].shape[1] for s in samples]
        widths = [s["pixel_values"].shape[2] for s in samples]
        height, width = self.batch_canvas(samples, max(heights), max(widths))
        dtype = samples[0]["pixel_values"].dtype  # float (normalised) or uint8 (normalised on the device)
        pixel_values = torch.zeros(len(samples), 3, height, width, dtype=dtype)  # (B, 3, H, W)
        pixel_mask = torch.zeros(len(samples), height, width, dtype=torch.int64)  # (B, H, W)
        for i, (sample, h, w) in enumerate(zip(samples, heights, widths, strict=True)):
            pixel_values[i, :, :h, :w] = sample["pixel_values"]
            pixel_mask[i, :h, :w] = 1
        return {"pixel_values": pixel_values, "pixel_mask": pixel_mask}

    def batch_canvas(self, samples: list[dict[str, torch.Tensor]], height: int, width: int) -> Canvas:
        """The one canvas of ours that the samples were fitted to, if they name one that holds them; else
        `canvas_for` the batch's largest height and width."""
        named = {tuple(sample["canvas"].tolist()) for sample in samples if "canvas" in sample}
        if self.canvases is not None and len(named) == 1:
            (canvas,) = named
            if canvas in self.canvases and height <= canvas[0] and width <= canvas[1]:
                return canvas
        return self.canvas_for(height, width)

    def canvas_for(self, height: int, width: int) -> Canvas:
        """The smallest canvas holding a height x width image; without canvases (or when none holds it, with a
        warning: a new shape) that size itself."""
        if self.canvases is None:
            return height, width
        for canvas in self.canvases:
            if height <= canvas[0] and width <= canvas[1]:
                return canvas
        if not self.canvas_overflow_warned:
            logger.warning("a batch's images need %d x %d, more than any canvas %s: it gets its own shape",
                           height, width, self.canvases)
            self.canvas_overflow_warned = True
        return height, width

    def bucket_for(self, num_objects: int) -> int:
        position = bisect.bisect_left(self.bucket_sizes, num_objects)
        if position < len(self.bucket_sizes):
            return self.bucket_sizes[position]
        if not self.overflow_warned:
            logger.warning("a batch holds %d objects in one image, more than the largest bucket %d: "
                           "it gets its own shape", num_objects, self.bucket_sizes[-1])
            self.overflow_warned = True
        return num_objects

    def targets(self, samples: list[dict[str, torch.Tensor]]) -> dict | list[dict]:
        if self.bucket_sizes is None:
            return [{k: s[k] for k in ("class_labels", "boxes", "image_index")} for s in samples]
        counts = [len(s["class_labels"]) for s in samples]
        size = self.bucket_for(max(counts))
        class_labels = torch.zeros(len(samples), size, dtype=torch.int64)  # (B, T)
        boxes = torch.tensor(PAD_BOX).repeat(len(samples), size, 1)  # (B, T, 4)
        valid = torch.zeros(len(samples), size, dtype=torch.bool)  # (B, T)
        for i, (sample, n) in enumerate(zip(samples, counts, strict=True)):
            class_labels[i, :n] = sample["class_labels"]
            boxes[i, :n] = sample["boxes"]
            valid[i, :n] = True
        image_index = torch.stack([s["image_index"] for s in samples])  # (B,)
        return {"class_labels": class_labels, "boxes": boxes, "valid": valid, "image_index": image_index}


def batch_image_index(labels: dict | list[dict]) -> torch.Tensor:
    """Dataset positions of a batch's images (B,), from padded labels (one dict) or stock labels (a dict per image)."""
    if isinstance(labels, dict):
        return labels["image_index"]  # (B,)
    return torch.stack([target["image_index"] for target in labels])  # (B,)
