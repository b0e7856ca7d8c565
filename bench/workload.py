"""The benchmark's workload: one random DETR and one synthetic CPPE-5-like data set, batched by either path.

Model: DETR-R50's transformer (6 encoder + 6 decoder layers, d_model 256, 8 heads, FFN 2048, 100 queries, auxiliary
losses, 5 classes as CPPE-5) on a small random HF ResNet (3 stages, stride 16) instead of ResNet-50, so that a 2-core
CPU runs it. Same seed, same weights on both paths.

Data, built in memory as `DetectionDataset` yields it: noise images whose sides are drawn uniformly from
min_side..image_size px (images already fitted into the image_size canvas, in all aspect ratios), with a skewed
objects-per-image count like CPPE-5's, most images holding a few objects and a long tail:

    n = clip(round(exp(N(log 3, 0.8))), 1, MAX_OBJECTS)

Boxes are normalized (cx, cy, w, h), sides 5-50% of the image, inside it.

The two paths batch the same samples in the same order:
- stock, as the HF example: the unpatched model with transformers' loss, labels a list of per-image dicts, images
  padded to the batch's largest (on the Gaudi stack, transformers as `adapt_transformers_to_gaudi()` leaves it);
- ours: images padded to image_size x image_size, targets padded to 1 bucket (the largest count of the data set),
  `use_static_shape_loss` (padded-target loss) and `apply_patches(static_shapes=True)` (the sync patches).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

from detr_ft.data.padding import DetectionCollator, compute_bucket_sizes
from detr_ft.model.static_shapes import use_static_shape_loss
from patches import apply_patches

PATHS = ("stock", "ours")
NUM_LABELS = 5
MAX_OBJECTS = 30
MEDIAN_OBJECTS = 3


@dataclass(frozen=True)
class Workload:
    """Sizes of the model and the data."""

    image_size: int = 160
    min_side: int = 96
    batch_size: int = 4
    batches_per_epoch: int = 8
    d_model: int = 256
    ffn_dim: int = 2048
    encoder_layers: int = 6
    decoder_layers: int = 6
    attention_heads: int = 8
    num_queries: int = 100
    backbone_width: int = 32
    seed: int = 0


def detr_config(workload: Workload) -> DetrConfig:
    width = workload.backbone_width
    backbone = ResNetConfig(
        embedding_size=width, hidden_sizes=[width, 2 * width, 4 * width], depths=[1, 1, 1], out_features=["stage3"]
    )
    return DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=workload.d_model,
        encoder_layers=workload.encoder_layers, decoder_layers=workload.decoder_layers,
        encoder_attention_heads=workload.attention_heads, decoder_attention_heads=workload.attention_heads,
        encoder_ffn_dim=workload.ffn_dim, decoder_ffn_dim=workload.ffn_dim, num_queries=workload.num_queries,
        num_labels=NUM_LABELS, auxiliary_loss=True,
    )


def build_model(workload: Workload, path: str) -> DetrForObjectDetection:
    """The random DETR in training mode, switched to our static-shape loss and patches on path "ours". The stock path
    gets only what it needs to run at all (on the Gaudi stack, patches/habana_detr_loss.py; on the main one nothing)."""
    torch.manual_seed(workload.seed)
    model = DetrForObjectDetection(detr_config(workload)).train()
    if path == "ours":
        use_static_shape_loss(model)
    apply_patches(model, static_shapes=path == "ours")
    return model


def make_samples(workload: Workload) -> list[dict[str, torch.Tensor]]:
    """batches_per_epoch * batch_size samples: pixel_values (3, h, w), class_labels (n,), boxes (n, 4), image_index."""
    rng = np.random.default_rng(workload.seed)
    samples = []
    for index in range(workload.batches_per_epoch * workload.batch_size):
        height, width = rng.integers(workload.min_side, workload.image_size + 1, 2).tolist()
        count = int(np.clip(round(np.exp(rng.normal(np.log(MEDIAN_OBJECTS), 0.8))), 1, MAX_OBJECTS))
        sizes = rng.uniform(0.05, 0.5, (count, 2))  # (n, 2) normalized (w, h)
        centers = rng.uniform(sizes / 2, 1 - sizes / 2)  # (n, 2) normalized (cx, cy)
        samples.append({
            "pixel_values": torch.from_numpy(rng.standard_normal((3, height, width), dtype=np.float32)),  # (3, h, w)
            "class_labels": torch.from_numpy(rng.integers(0, NUM_LABELS, count)),  # (n,)
            "boxes": torch.from_numpy(np.concatenate([centers, sizes], 1).astype(np.float32)),  # (n, 4)
            "image_index": torch.tensor(index),
        })
    return samples


def make_batches(workload: Workload, path: str, samples: list[dict[str, torch.Tensor]]) -> list[dict]:
    """One epoch of model batches, in order, collated as `path` does it."""
    if path == "ours":
        counts = np.array([len(sample["class_labels"]) for sample in samples])  # (N,)
        collator = DetectionCollator(workload.image_size, compute_bucket_sizes(counts, num_buckets=1))
    else:
        collator = DetectionCollator()
    size = workload.batch_size
    return [collator(samples[start:start + size]) for start in range(0, len(samples), size)]


def train_step(model: DetrForObjectDetection, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    """Forward, loss, backward and the optimizer step."""
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
