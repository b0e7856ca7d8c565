"""Training augmentation: mild, box-safe, reproducible and resumable."""

from __future__ import annotations

import albumentations as A
import torch


def train_augmentation() -> A.Compose:
    """Flip, colour jitter and a crop that keeps every box: mild, as for fine-tuning a pretrained DETR.

    Unseeded: `DetectionDataset` reseeds it for every sample (`reseed_augmentation`)."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
            A.BBoxSafeRandomCrop(erosion_rate=0.0, p=0.3),
        ],
        bbox_params=A.BboxParams(format="coco", label_fields=["labels"], clip=True, min_area=1.0),
    )


def reseed_augmentation(augmentation: A.Compose) -> None:
    """Give each transform a fresh seed drawn from torch's generator.

    That generator is what `set_seed` seeds, what every DataLoader worker reseeds differently and what the Trainer
    checkpoints (rng_state.pth): augmentation is reproducible, differs across workers and resumes where it stopped.
    One seed per transform, because albumentations' own `set_random_seed` gives all transforms the same seed, which
    makes their coin flips identical (an image flipped is always colour-jittered too).
    """
    seeds = torch.randint(2**31, (len(augmentation.transforms),))  # (n,)
    for transform, seed in zip(augmentation.transforms, seeds.tolist(), strict=True):
        transform.set_random_seed(seed)


