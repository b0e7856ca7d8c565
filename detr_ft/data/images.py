"""Preprocessing, the one source of truth: how a stored image becomes the model's pixels, in training and after.

    image -> 8-bit RGB, EXIF orientation applied (`to_rgb`) -> resized so its long side is image_size, or
    smaller where that would overflow its canvas (`fitted_size`) -> / 255, ImageNet mean / std
    (`Preprocessing.pixels`) -> padded to its canvas by the collator

`Preprocessing` is saved with every checkpoint as the image processor of the model's family that does the same
(`DetrImageProcessor`, `ConditionalDetrImageProcessor`, `DeformableDetrImageProcessor`: their preprocessing is one,
their post-processing the family's), so `pipeline("object-detection", model=checkpoint)` preprocesses as training
did and scores as the family does; `eval_checkpoints` and inference read it back (`Preprocessing.from_saved`).

With `--normalize_on_device` the training images leave the data loader as 8-bit (`Preprocessing.uint8_pixels`), a
quarter of the bytes to collate, pin and copy, and the trainer normalises them on the device (`model_pixels`). Both
ways run `normalize_array`'s float32 math, on the device through a table of its 3 x 256 results
(`normalization_table`), looked up: the same bits on every device, whatever its division rounds like
(tests/test_images_on_device.py compares every entry). Evaluation, inference and the saved processor keep the CPU
path, which gives the training pixels exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import ExifTags, Image, ImageOps
from transformers.image_processing_utils import BaseImageProcessor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


Canvas = tuple[int, int]  # (height, width) a batch is padded to


@dataclass(frozen=True)
class Preprocessing:
    """Fit into image_size x image_size (aspect kept); `pad_images`: pad every image to that square, or with
    `image_canvases` to the smallest of those (H, W) canvases holding it (`detr_ft.data.canvases`)."""

    image_size: int
    pad_images: bool = False
    image_canvases: tuple[Canvas, ...] = ()

    @property
    def canvases(self) -> list[Canvas] | None:
        """The (H, W) canvases batches are padded to; None: the batch's largest image (stock behaviour)."""
        if not self.pad_images:
            return None
        return list(self.image_canvases) or [(self.image_size, self.image_size)]

    def pixels(self, image: Image.Image, canvas: Canvas | None = None) -> torch.Tensor:
        """An RGB image as the model's input: (3, h, w) float fitted into `canvas` (default: the square; see
        `fitted_size`), ImageNet-normalised."""
        pixels = normalize_array(self.resized(image, canvas))  # (h, w, 3)
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy())  # (3, h, w)

    def uint8_pixels(self, image: Image.Image, canvas: Canvas | None = None) -> torch.Tensor:
        """`pixels` before normalisation: (3, h, w) uint8, for `model_pixels` to normalise on the device."""
        return torch.from_numpy(self.resized(image, canvas).transpose(2, 0, 1).copy())  # (3, h, w)

    def resized(self, image: Image.Image, canvas: Canvas | None = None) -> np.ndarray:
        """An RGB image fitted into `canvas` (default: the square): (h, w, 3) uint8."""
        return np.asarray(resize_to_fit(image, canvas or (self.image_size, self.image_size)))  # (h, w, 3)

    def image_processor(self, processor_name: str) -> BaseImageProcessor:
        """The transformers processor `processor_name` (a DETR-family one, e.g. "DetrImageProcessor") set to
        preprocess like `pixels` and the collator's padding.

        It pads to one size: with canvases, to the square that holds them all (the model masks padding, so
        `pipeline` still works); `image_canvases` rides along in preprocessor_config.json for our own tools."""
        canvases = {"image_canvases": [list(canvas) for canvas in self.image_canvases]} if self.image_canvases else {}
        return processor_class(processor_name)(
            size={"shortest_edge": self.image_size, "longest_edge": self.image_size},
            resample=Image.BILINEAR,
            image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD),
            do_pad=True,
            pad_size={"height": self.image_size, "width": self.image_size} if self.pad_images else None,
            **canvases,
        )

    @classmethod
    def from_saved(cls, model_path: str | Path) -> Preprocessing:
        """The preprocessing a model was trained with, from its saved processor (see `image_processor`)."""
        processor = processor_class("DetrImageProcessor").from_pretrained(model_path)  # any family's: same fields
        canvases = tuple(tuple(canvas) for canvas in getattr(processor, "image_canvases", None) or ())
        return cls(processor.size["longest_edge"], processor.pad_size is not None, canvases)


def processor_class(name: str) -> type[BaseImageProcessor]:
    """transformers' image processor `name`: its PIL-based variant on transformers 5 (`name`Pil; the default one
    needs torchvision, and warns), the class itself on 4.55 (the Gaudi stack), where that is the PIL-based one."""
    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def normalize_array(pixels: np.ndarray) -> np.ndarray:
    """8-bit RGB (..., 3) -> float32 (..., 3): / 255, minus the ImageNet mean, over its std, each a float32 op."""
    pixels = np.asarray(pixels, np.float32) / 255.0  # (..., 3)
    return (pixels - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)  # (..., 3)


@functools.cache
def normalization_table(device: torch.device) -> torch.Tensor:
    """`normalize_array` of every 8-bit value of every channel, flattened channel by channel: (3 * 256,) float32 on
    `device`."""
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)  # (256, 3)
    return torch.from_numpy(normalize_array(values).T.copy()).flatten().to(device)  # (3 * 256,)


def model_pixels(pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """The model's input from a batch: 8-bit pixel_values (B, 3, H, W) normalised where it lies (`pixels`' values,
    bit for bit) and padding (pixel_mask 0) set to 0, as the collator pads normalised images; float pixel_values are
    that already and pass through."""
    if pixel_values.dtype != torch.uint8:
        return pixel_values
    channel_offset = torch.arange(0, 3 * 256, 256, device=pixel_values.device)[:, None, None]  # (3, 1, 1)
    table = normalization_table(pixel_values.device)  # (3 * 256,)
    normalized = table[pixel_values.long() + channel_offset]  # (B, 3, H, W)
    return torch.where(pixel_mask[:, None].bool(), normalized, 0.0)  # (B, 3, H, W)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag: 1 = as stored, 2-8 = flips and turns (`ImageOps.exif_transpose` applies them)."""
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied: orientations 5-8 turn the image by 90 degrees."""
    return (image.height, image.width) if exif_orientation(image) in (5, 6, 7, 8) else image.size


def to_rgb(image: Image.Image, annotated_size: tuple[int, int] | None = None) -> Image.Image:
    """8-bit RGB from any mode (RGBA, L, P, CMYK, I;16), EXIF orientation applied.

    16-bit values are divided by 257 (65535 -> 255), the same scale for every image, as image viewers do.

    Annotation tools show images EXIF-rotated, so boxes are taken to be in the displayed pixels; only when the
    json's `annotated_size` (w, h) matches the stored pixels and not the displayed ones were the boxes drawn on
    the stored pixels, and the orientation is ignored. (A 180-degree turn or a flip keeps the size: applied.)
    """
    if annotated_size is None or annotated_size != image.size or annotated_size == displayed_size(image):
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)  # (h, w)
        image = Image.fromarray(np.clip(np.rint(array / 257.0), 0, 255).astype(np.uint8))  # (h, w)
    return image.convert("RGB")


def fitted_size(width: int, height: int, canvas: Canvas) -> tuple[int, int]:
    """(width, height) of an image resized into `canvas` (H, W), aspect kept: its long side becomes the canvas's
    long side (image_size) when that fits, which it always does in the square and for an image whose canvas was
    chosen from its size; else (e.g. a crop of another shape) the largest size that fits."""
    canvas_height, canvas_width = canvas
    scale = max(canvas) / max(width, height)
    if round(width * scale) > canvas_width or round(height * scale) > canvas_height:
        scale = min(canvas_width / width, canvas_height / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_to_fit(image: Image.Image, canvas: Canvas) -> Image.Image:
    """`image` resized to its `fitted_size` in `canvas` (H, W)."""
    new_size = fitted_size(image.width, image.height, canvas)
    return image if new_size == image.size else image.resize(new_size, Image.BILINEAR)


