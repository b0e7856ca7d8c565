"""The benchmark's workload: one random DETR and one synthetic CPPE-5-like data set, batched by either path.

Model: DETR-R50's transformer (6 encoder + 6 decoder layers, d_model 256, 8 heads, FFN 2048, 100 queries, auxiliary
losses, 5 classes as CPPE-5) on a small random HF ResNet (3 stages, stride 16) instead of ResNet-50, so that a 2-core
CPU runs it (`resnet50=True` builds ResNet-50 itself, for an accelerator). Same seed, same weights on both paths.

Data, built in memory as `DetectionDataset` yields it: noise images of CPPE-5's real shapes (the 29 (width, height)
of its test split, CPPE5_TEST_SIZES, repeated and shuffled over the epoch; 22 of them 16:9 or 3:2 landscapes)
fitted into the image_size square as training fits them (long side image_size), with a skewed objects-per-image
count like CPPE-5's, most images holding a few objects and a long tail:

    n = clip(round(exp(N(log 3, 0.8))), 1, MAX_OBJECTS)

Boxes are normalized (cx, cy, w, h), sides 5-50% of the image, inside it.

The paths batch the same samples:
- stock, as the HF example: the unpatched model with transformers' loss, labels a list of per-image dicts, images
  padded to the batch's largest (on the Gaudi stack, transformers as `adapt_transformers_to_gaudi()` leaves it);
- ours (the square): images padded to image_size x image_size, targets padded to 1 bucket (the largest count of the
  data set), the label-free forward and DetrCriterion (bench/training_step.py) and the sync patches
  (`apply_patches(static_shapes=True)`);
- k2, k3: ours with `--image_buckets 2` / `3`: the aspect-ratio canvases chosen from the samples' sizes, batches
  drawn by `CanvasGroupedSampler` (one canvas each; a canvas's last partial batch is dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

from bench.training_step import forward_and_loss
from detr_ft.data.canvases import CanvasGroupedSampler, assign_canvases, choose_canvases
from detr_ft.data.images import fitted_size
from detr_ft.data.padding import DetectionCollator, compute_bucket_sizes
from patches import apply_patches

PATHS = ("stock", "ours")
IMAGE_BUCKETS = {"ours": 1, "k2": 2, "k3": 3}  # our paths and their --image_buckets
CANVAS_PATHS = ("stock", *IMAGE_BUCKETS)
NUM_LABELS = 5
MAX_OBJECTS = 30
MEDIAN_OBJECTS = 3
# DETR-R50's backbone, as transformers' ResNetConfig fields (scripts/gpu_check.sh builds its model with it too)
RESNET50 = {"embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 4, 6, 3],
            "layer_type": "bottleneck", "out_features": ["stage4"]}
# (width, height) of the 29 images of CPPE-5's test split (../shared/data/cppe5-test/annotations/test.json, in order)
CPPE5_TEST_SIZES = (
    (960, 499), (1280, 720), (1920, 1088), (1920, 1088), (900, 945), (1280, 720), (500, 300), (2000, 1124),
    (750, 500), (1920, 1088), (1920, 1088), (1280, 720), (1920, 1088), (1200, 800), (1024, 576), (847, 565),
    (800, 451), (410, 205), (716, 481), (600, 338), (626, 417), (800, 450), (600, 400), (1440, 810), (2000, 2000),
    (800, 450), (340, 736), (1200, 800), (1200, 800),
)


@dataclass(frozen=True)
class Workload:
    """Sizes of the model and the data."""

    image_size: int = 160
    batch_size: int = 4
    batches_per_epoch: int = 100
    d_model: int = 256
    ffn_dim: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    attention_heads: int = 8
    num_queries: int = 100
    backbone_width: int = 32
    resnet50: bool = False  # ResNet-50 (as DETR-R50) instead of the small ResNet of backbone_width: for accelerators
    dropout: float = 0.1  # DETR's; 0 makes a compiled step compute the eager one's function (bench/accelerator_step.py)
    seed: int = 0


def detr_config(workload: Workload) -> DetrConfig:
    width = workload.backbone_width
    if workload.resnet50:
        backbone = ResNetConfig(**RESNET50)
    else:
        backbone = ResNetConfig(embedding_size=width, hidden_sizes=[width, 2 * width, 4 * width], depths=[1, 1, 1],
                                out_features=["stage3"])
    return DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=workload.d_model,
        encoder_layers=workload.encoder_layers, decoder_layers=workload.decoder_layers,
        encoder_attention_heads=workload.attention_heads, decoder_attention_heads=workload.attention_heads,
        encoder_ffn_dim=workload.ffn_dim, decoder_ffn_dim=workload.ffn_dim, num_queries=workload.num_queries,
        num_labels=NUM_LABELS, auxiliary_loss=True, dropout=workload.dropout,
    )


def build_model(workload: Workload, path: str) -> DetrForObjectDetection:
    """The random DETR in training mode, with the label-free forward and the sync patches on our paths (all but
    "stock"). The stock path gets only what its loss needs to run at all (on the Gaudi stack,
    patches/habana_detr_loss.py; on the main one nothing).

    Denormal floats are flushed to zero in this process, as accelerators do: the random model's training meets
    denormals that make x86 CPU steps up to 30x slower at random (measured: 0.5 s vs 16 s for the same step),
    which would time the CPU's microcode, not the paths."""
    torch.set_flush_denormal(True)
    torch.manual_seed(workload.seed)
    model = DetrForObjectDetection(detr_config(workload)).train()
    apply_patches(model, static_shapes=path != "stock", label_free_forward=path != "stock")
    return model


def epoch_sizes(workload: Workload) -> list[tuple[int, int]]:
    """(width, height) of the epoch's images: CPPE5_TEST_SIZES repeated to batches_per_epoch * batch_size, shuffled."""
    count = workload.batches_per_epoch * workload.batch_size
    repeated = [CPPE5_TEST_SIZES[i % len(CPPE5_TEST_SIZES)] for i in range(count)]
    return [repeated[i] for i in np.random.default_rng(workload.seed).permutation(count)]


def make_samples(workload: Workload, uint8_pixels: bool = False) -> list[dict[str, torch.Tensor]]:
    """batches_per_epoch * batch_size samples: pixel_values (3, h, w), class_labels (n,), boxes (n, 4), image_index.
    Pixels are standard normal noise, as if normalised, or with `uint8_pixels` uniform 8-bit noise, as
    `DetectionDataset` yields them for `--normalize_on_device`."""
    rng = np.random.default_rng(workload.seed)
    samples = []
    for index, (stored_width, stored_height) in enumerate(epoch_sizes(workload)):
        width, height = fitted_size(stored_width, stored_height, (workload.image_size, workload.image_size))
        count = int(np.clip(round(np.exp(rng.normal(np.log(MEDIAN_OBJECTS), 0.8))), 1, MAX_OBJECTS))
        sizes = rng.uniform(0.05, 0.5, (count, 2))  # (n, 2) normalized (w, h)
        centers = rng.uniform(sizes / 2, 1 - sizes / 2)  # (n, 2) normalized (cx, cy)
        pixels = (rng.integers(0, 256, (3, height, width), dtype=np.uint8) if uint8_pixels
                  else rng.standard_normal((3, height, width), dtype=np.float32))  # (3, h, w)
        samples.append({
            "pixel_values": torch.from_numpy(pixels),  # (3, h, w)
            "class_labels": torch.from_numpy(rng.integers(0, NUM_LABELS, count)),  # (n,)
            "boxes": torch.from_numpy(np.concatenate([centers, sizes], 1).astype(np.float32)),  # (n, 4)
            "image_index": torch.tensor(index),
        })
    return samples


def make_batches(workload: Workload, path: str, samples: list[dict[str, torch.Tensor]]) -> list[dict]:
    """One epoch of model batches, in order, collated as `path` does it."""
    order = list(range(len(samples)))
    if path == "stock":
        collator = DetectionCollator()
    else:
        counts = np.array([len(sample["class_labels"]) for sample in samples])  # (N,)
        sizes = [(s["pixel_values"].shape[2], s["pixel_values"].shape[1]) for s in samples]  # (width, height)
        canvases = choose_canvases(sizes, workload.image_size, IMAGE_BUCKETS[path])
        collator = DetectionCollator(bucket_sizes=compute_bucket_sizes(counts, num_buckets=1), canvases=canvases)
        if len(canvases) > 1:
            canvas_of = assign_canvases(sizes, workload.image_size, canvases)  # (N,)
            order = list(CanvasGroupedSampler(canvas_of, workload.batch_size, workload.seed))
    size = workload.batch_size
    return [collator([samples[i] for i in order[start:start + size]]) for start in range(0, len(order), size)]


def default_optimizer(model: DetrForObjectDetection) -> torch.optim.Optimizer:
    """AdamW as both trainers build it by default: torch's fused kernel (transformers' default `--optim
    adamw_torch_fused`, which detr-ft's optimizer follows too)."""
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def step_loss(model: DetrForObjectDetection, batch: dict) -> torch.Tensor:
    """The training loss of `batch`: stock, the forward's own (labels given); ours, the criterion on the label-free
    forward's outputs (padded labels)."""
    return forward_and_loss(model, batch) if isinstance(batch["labels"], dict) else model(**batch).loss


def train_step(model: DetrForObjectDetection, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    """Forward, loss, backward and the optimizer step."""
    step_loss(model, batch).backward()
    optimizer.step()
    optimizer.zero_grad()
