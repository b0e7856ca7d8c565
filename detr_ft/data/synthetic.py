"""Synthetic COCO detection data: circles, squares and triangles on plain or noisy backgrounds.

Each image has image_size as its long side and min_objects..max_objects shapes; an object's class is its shape
(category ids 1..3, 1-based like CPPE-5) and its side is SIDE_RANGE of image_size (at 64 px, 13-29 px: a class must
stay recognisable on a stride-8 feature map). Images are square unless `aspect_ratios` (width / height) are given:
image i of a split takes ratio i mod len(aspect_ratios), drawn natively at that shape, so every shape's objects have
the same pixel sizes (a 2:1 image at 64 px is 64 x 32, with the 13-29 px objects of a 64 x 64 one). Colours are
random but at least MIN_CONTRAST away from the background colour, so every shape is visible. Shapes are placed
without overlapping (so each box is fully visible) unless PLACEMENT_TRIES random positions all collide.
Box = the tight pixel extent [x, y, w, h] of the drawn shape; area = w * h as in CPPE-5.

Each split draws from its own np.random.default_rng((seed, split number)): the same arguments give byte-identical
images and json, and a split's content does not depend on the size of the others.

    python -m detr_ft.data.make_synthetic --output_dir data/synthetic [--num_train 4096 --num_validation 256 ...]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"}]
SPLITS = ("train", "validation", "test")
MIN_CONTRAST = 150  # summed |RGB difference| between a shape's colour and the background colour
NOISE_STD = 20.0  # per-pixel Gaussian noise of noisy backgrounds
PLACEMENT_TRIES = 50
SIDE_RANGE = (0.20, 0.45)  # fractions of the image side


def draw_shape(draw: ImageDraw.ImageDraw, category_id: int, x: int, y: int, side: int, colour: tuple) -> None:
    """Draw shape `category_id` filling exactly the pixels x..x+side-1, y..y+side-1 at its extremes."""
    last = side - 1  # PIL boxes include both corners
    if category_id == 1:
        draw.ellipse([x, y, x + last, y + last], fill=colour)
    elif category_id == 2:
        draw.rectangle([x, y, x + last, y + last], fill=colour)
    else:
        draw.polygon([(x, y + last), (x + last, y + last), (x + last // 2, y)], fill=colour)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    while True:
        colour = rng.integers(0, 256, 3)  # (3,)
        if np.abs(colour - background).sum() >= MIN_CONTRAST:
            return tuple(colour.tolist())


def image_shape(image_size: int, aspect_ratio: float) -> tuple[int, int]:
    """(width, height) of an image with long side image_size and width / height = aspect_ratio."""
    if aspect_ratio >= 1:
        return image_size, round(image_size / aspect_ratio)
    return round(image_size * aspect_ratio), image_size


def _place_squares(
    rng: np.random.Generator, num_objects: int, image_size: int, width: int, height: int
) -> list[tuple[int, int, int]]:
    """(x, y, side) of num_objects squares, sides from SIDE_RANGE of image_size, inside the width x height image,
    apart from each other when PLACEMENT_TRIES allow."""
    placed: list[tuple[int, int, int]] = []
    while len(placed) < num_objects:
        for _ in range(PLACEMENT_TRIES):
            side = max(3, round(rng.uniform(*SIDE_RANGE) * image_size))
            x, y = rng.integers(0, [width - side + 1, height - side + 1]).tolist()
            apart = all(x + side <= px or px + ps <= x or y + side <= py or py + ps <= y for px, py, ps in placed)
            if apart:
                break
        placed.append((x, y, side))
    return placed


def render_image(
    rng: np.random.Generator, image_size: int, aspect_ratio: float, min_objects: int, max_objects: int
) -> tuple[Image.Image, list[tuple[int, list[int]]]]:
    """One RGB image of long side image_size and its objects as (category_id, [x, y, w, h])."""
    width, height = image_shape(image_size, aspect_ratio)
    background = rng.integers(0, 256, 3)  # (3,)
    pixels = np.broadcast_to(background, (height, width, 3)).astype(np.float64)  # (H, W, 3)
    if rng.uniform() < 0.5:
        pixels = pixels + rng.normal(0.0, NOISE_STD, pixels.shape)  # (H, W, 3)
    image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    objects = []
    num_objects = int(rng.integers(min_objects, max_objects + 1))
    for x, y, side in _place_squares(rng, num_objects, image_size, width, height):
        category_id = int(rng.integers(1, len(CATEGORIES) + 1))
        draw_shape(draw, category_id, x, y, side, _contrasting_colour(rng, background))
        objects.append((category_id, [x, y, side, side]))
    return image, objects


def _write_split(
    output_dir: Path,
    split: str,
    num_images: int,
    rng: np.random.Generator,
    aspect_ratios: tuple[float, ...],
    **render_kwargs,
) -> None:
    """Write the images and annotations/<split>.json of one split."""
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        aspect_ratio = aspect_ratios[(image_id - 1) % len(aspect_ratios)]
        image, objects = render_image(rng, aspect_ratio=aspect_ratio, **render_kwargs)
        file_name = f"{split}_{image_id:06d}.png"
        image.save(output_dir / "images" / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
        for category_id, bbox in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (output_dir / "annotations" / f"{split}.json").write_text(json.dumps(coco))


def write_synthetic_coco(
    output_dir: Path | str,
    num_train: int = 4096,
    num_validation: int = 256,
    num_test: int = 0,
    image_size: int = 64,
    min_objects: int = 1,
    max_objects: int = 4,
    seed: int = 0,
    aspect_ratios: tuple[float, ...] = (1.0,),
) -> Path:
    """Write the COCO folder (images/, annotations/{train,validation}.json, test.json if num_test > 0)."""
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    largest_side = max(3, round(SIDE_RANGE[1] * image_size))
    for aspect_ratio in aspect_ratios:
        if aspect_ratio <= 0 or min(image_shape(image_size, aspect_ratio)) < largest_side:
            raise ValueError(
                f"aspect ratio {aspect_ratio} at {image_size} px leaves a short side under the largest object "
                f"({largest_side} px)"
            )
    output_dir = Path(output_dir)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    (output_dir / "annotations").mkdir(parents=True, exist_ok=True)
    for split_number, (split, num_images) in enumerate(zip(SPLITS, (num_train, num_validation, num_test), strict=True)):
        if split != "test" or num_images > 0:
            rng = np.random.default_rng((seed, split_number))
            render_kwargs = {"image_size": image_size, "min_objects": min_objects, "max_objects": max_objects}
            _write_split(output_dir, split, num_images, rng, tuple(aspect_ratios), **render_kwargs)
    return output_dir
