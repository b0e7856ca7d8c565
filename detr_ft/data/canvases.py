"""Aspect-ratio canvases (`--pad_images --image_buckets K`): K fixed (H, W) canvases instead of one square, chosen
once from the training set's image sizes (json width and height: nothing is decoded), and a sampler that draws
every batch from one canvas.

An image keeps the scale of the square canvas (long side = image_size, `images.fitted_size`) and needs the box

    box(w, h) = (ceil32(h'), ceil32(w')), capped at image_size,   (w', h') = w, h scaled to long side image_size

(multiples of 32: the backbone's stride). Sorted by aspect ratio, the training images' boxes fall into contiguous
groups; a group's canvas is the smallest box holding all of its boxes (max H, max W: the long side stays image_size).
The canvases are the partition into at most K groups that minimises the canvas pixels of the training images,

    min  sum_g n_g * H_g * W_g   subject to   n_g >= N / (4K)   (each canvas serves a quarter of an equal share),

solved exactly by dynamic programming over the distinct boxes (a few dozen at 800 px). The floor keeps a graph
from being compiled for a sliver of the data (few batches, of which the dropped last partial one is a large part).
At a quarter of N / K, an aspect ratio held by one image in ten (CPPE-5's square and portrait photos) still gets a
canvas of its own at K = 3, instead of the 3:2 photos sharing the square with it (`make bench-canvas`: README,
Benchmarks). K = 1 is the image_size x image_size square, whatever the data. Every image, train or eval, goes to
the smallest-area canvas holding its box: for a training image its own group's. An image that no canvas holds at
full scale (a portrait photo in the evaluation set of a landscape-only training set) goes to the canvas that keeps
it largest and is shrunk to fit it.

`CanvasGroupedSampler` keeps training batches on one canvas: per epoch it shuffles each canvas's images
(seed + epoch, like accelerate's seedable sampler), cuts them into global batches, drops each canvas's last partial
batch and shuffles the global batches. The DataLoader cuts its index stream into per-process batches and
accelerate hands batch j to process j % world_size, so at every step all processes train on the same canvas, and the
graphs of a run are (number of canvases) x (target buckets). With gradient accumulation (G batches an optimizer
step) the sampler deals each step's G batches from G different canvases where it can (the canvases with the most
batches left first), so one update averages several shapes as the square's mixed batches do, and shuffles the steps,
a last partial step kept last so the trainer's steps stay aligned with the groups.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from detr_ft.data.images import Canvas, fitted_size

CANVAS_MULTIPLE = 32  # DETR-R50's backbone stride: a canvas side that is a multiple maps to whole feature cells


def image_box(width: int, height: int, image_size: int) -> Canvas:
    """The smallest canvas (H, W), sides multiples of CANVAS_MULTIPLE up to image_size, holding the image at the
    square's scale."""
    fitted_width, fitted_height = fitted_size(width, height, (image_size, image_size))
    return tuple(min(image_size, math.ceil(side / CANVAS_MULTIPLE) * CANVAS_MULTIPLE)
                 for side in (fitted_height, fitted_width))


def choose_canvases(sizes: Sequence[tuple[int, int]], image_size: int, count: int) -> list[Canvas]:
    """At most `count` canvases (H, W) for images of `sizes` (width, height), sorted by aspect ratio (W / H)."""
    if count < 1:
        raise ValueError(f"image_buckets must be >= 1, got {count}")
    if count == 1:
        return [(image_size, image_size)]
    boxes = sorted({image_box(w, h, image_size) for w, h in sizes}, key=lambda box: box[1] / box[0])
    box_counts = np.zeros(len(boxes), np.int64)  # (D,)
    position = {box: i for i, box in enumerate(boxes)}
    for w, h in sizes:
        box_counts[position[image_box(w, h, image_size)]] += 1
    min_images = len(sizes) / (4 * count)

    def group(first: int, last: int) -> tuple[Canvas, float]:
        """Canvas of boxes[first:last] and its pixels over their images; inf when it serves too few images."""
        heights, widths = zip(*boxes[first:last], strict=True)
        canvas, images = (max(heights), max(widths)), int(box_counts[first:last].sum())
        return canvas, (canvas[0] * canvas[1] * images if images >= min_images else math.inf)

    # best[g][j]: least pixels of boxes[:j] in g groups; cut[g][j]: where its last group starts.
    best = np.full((count + 1, len(boxes) + 1), math.inf)  # (K+1, D+1)
    cut = np.zeros((count + 1, len(boxes) + 1), np.int64)  # (K+1, D+1)
    best[0, 0] = 0.0
    for groups in range(1, count + 1):
        for end in range(groups, len(boxes) + 1):
            for start in range(groups - 1, end):
                cost = best[groups - 1, start] + group(start, end)[1]
                if cost < best[groups, end]:
                    best[groups, end], cut[groups, end] = cost, start
    groups = int(np.argmin(best[:, len(boxes)]))  # fewer groups when more cannot serve their share or gain nothing
    canvases, end = [], len(boxes)
    for g in range(groups, 0, -1):
        canvases.append(group(int(cut[g, end]), end)[0])
        end = int(cut[g, end])
    return sorted(set(canvases), key=lambda canvas: canvas[1] / canvas[0])


def assign_canvases(sizes: Sequence[tuple[int, int]], image_size: int, canvases: Sequence[Canvas]) -> np.ndarray:
    """Per image of `sizes` (width, height): the index of the smallest-area canvas holding its box, or where none
    does, of the canvas that keeps it largest (it is shrunk to fit there: `images.fitted_size`)."""
    areas = [h * w for h, w in canvases]
    assigned = np.zeros(len(sizes), np.int64)  # (N,)
    for i, (w, h) in enumerate(sizes):
        box_h, box_w = image_box(w, h, image_size)
        holding = [k for k, (ch, cw) in enumerate(canvases) if box_h <= ch and box_w <= cw]
        if holding:
            assigned[i] = min(holding, key=lambda k: areas[k])
        else:
            assigned[i] = max(range(len(canvases)), key=lambda k: fitted_size(w, h, canvases[k])[0])
    return assigned


def padded_pixel_fraction(sizes: Sequence[tuple[int, int]], canvases: Sequence[Canvas],
                          assigned: np.ndarray) -> float:
    """Share of the canvas pixels that are padding when every image of `sizes` (width, height) fills its canvas."""
    image_pixels = sum(int(np.prod(fitted_size(w, h, canvases[k]))) for (w, h), k in zip(sizes, assigned, strict=True))
    canvas_pixels = sum(canvases[k][0] * canvases[k][1] for k in assigned)
    return 1.0 - image_pixels / canvas_pixels


class CanvasGroupedSampler(torch.utils.data.Sampler[int]):
    """Dataset indices whose every run of `global_batch_size` belongs to one canvas, each optimizer step's
    `accumulation_steps` runs from different canvases where possible (see the module docstring)."""

    def __init__(self, canvas_of: np.ndarray, global_batch_size: int, seed: int, accumulation_steps: int = 1):
        self.members = [np.flatnonzero(canvas_of == k) for k in range(int(canvas_of.max(initial=-1)) + 1)]
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.accumulation_steps = accumulation_steps
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by accelerate's DataLoaderShard at the start of every epoch (also after a resume)."""
        self.epoch = epoch

    def batches_per_epoch(self) -> int:
        return sum(len(members) // self.global_batch_size for members in self.members)

    def __len__(self) -> int:
        return self.batches_per_epoch() * self.global_batch_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        canvas_batches = []  # per canvas: its global batches of this epoch
        for members in self.members:
            shuffled = members[torch.randperm(len(members), generator=generator).numpy()]  # (n_k,)
            usable = len(members) // self.global_batch_size * self.global_batch_size
            canvas_batches.append([shuffled[start:start + self.global_batch_size]
                                   for start in range(0, usable, self.global_batch_size)])
        if self.accumulation_steps == 1:
            batches = [batch for one_canvas in canvas_batches for batch in one_canvas]
            for b in torch.randperm(len(batches), generator=generator).tolist():
                yield from batches[b].tolist()
            return
        steps = dealt_steps(canvas_batches, self.accumulation_steps)
        full = [step for step in steps if len(step) == self.accumulation_steps]
        for s in [*torch.randperm(len(full), generator=generator).tolist(), *range(len(full), len(steps))]:
            for batch in steps[s]:
                yield from batch.tolist()


def dealt_steps(canvas_batches: list[list[np.ndarray]], accumulation_steps: int) -> list[list[np.ndarray]]:
    """The batches dealt into optimizer steps of `accumulation_steps` each (the last one may hold fewer): every
    batch of a step from the canvas with the most batches left among those the step does not hold yet (any canvas
    once the step holds them all), so the canvases run out together and a step holds min(G, K) canvases."""
    left = [list(batches) for batches in canvas_batches]
    steps = []
    while any(left):
        step, used = [], set()
        while len(step) < accumulation_steps and any(left):
            with_batches = [k for k in range(len(left)) if left[k]]
            k = max([k for k in with_batches if k not in used] or with_batches, key=lambda k: len(left[k]))
            step.append(left[k].pop())
            used.add(k)
        steps.append(step)
    return steps
