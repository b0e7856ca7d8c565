"""`--normalize_on_device`: 8-bit training images, normalised by the trainer where the model runs, give the pixels
the data loader's normalisation gives, bit for bit (every 8-bit value of every channel, padding included), and so
the same training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from entry_runs import entry_argv, run_in_process
from PIL import Image
from safetensors.torch import load_file

from detr_ft.data.canvases import choose_canvases
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.images import Preprocessing, model_pixels
from detr_ft.data.labels import ClassMapping
from detr_ft.data.padding import DetectionCollator
from detr_ft.data.sources import load_coco_folder


def test_every_8_bit_value_of_every_channel_normalises_as_on_the_cpu():
    """An image holding each of the 256 values in each channel, shifted per channel so the channels differ."""
    values = np.arange(256, dtype=np.uint8)  # (256,)
    image = Image.fromarray(np.stack([values, np.roll(values, 85), np.roll(values, 170)], axis=-1)[None])  # 1 x 256
    preprocessing = Preprocessing(image_size=256)
    expected = preprocessing.pixels(image)  # (3, 1, 256)
    eight_bit = preprocessing.uint8_pixels(image)  # (3, 1, 256)
    assert eight_bit.dtype == torch.uint8 and eight_bit.shape == expected.shape
    assert {int(v) for v in eight_bit[0, 0]} == set(range(256))
    normalized = model_pixels(eight_bit[None], torch.ones(1, 1, 256, dtype=torch.int64))  # (1, 3, 1, 256)
    assert normalized.dtype == torch.float32 and torch.equal(normalized[0], expected)


def test_padded_8_bit_batches_normalise_to_the_padded_float_batches(aspect_ratio_dir):
    split = load_coco_folder(aspect_ratio_dir, "train")
    category_to_label = ClassMapping.from_categories(split.coco["categories"]).category_to_label
    canvases = choose_canvases(split.image_sizes(), 64, 3)
    collator = DetectionCollator(canvases=canvases)
    float_data = DetectionDataset(split, category_to_label, 64, canvases=canvases)
    uint8_data = DetectionDataset(split, category_to_label, 64, canvases=canvases, uint8_pixels=True)
    padded = 0
    for start in range(0, 24, 4):  # batches of mixed canvases: padded to the smallest holding them all
        indices = range(start, start + 4)
        expected = collator([float_data[i] for i in indices])
        batch = collator([uint8_data[i] for i in indices])
        assert batch["pixel_values"].dtype == torch.uint8 and torch.equal(batch["pixel_mask"], expected["pixel_mask"])
        assert torch.equal(model_pixels(batch["pixel_values"], batch["pixel_mask"]), expected["pixel_values"])
        padded += int((batch["pixel_mask"] == 0).sum())
    assert padded > 0, "no padding: model_pixels's padding went untested"
    floats = expected["pixel_values"]
    assert model_pixels(floats, expected["pixel_mask"]) is floats  # normalised ones pass through


@pytest.mark.slow  # two entry runs
def test_training_on_8_bit_images_is_training_on_normalised_ones(tiny_coco, tmp_path, logged_losses):
    """Augmented, as training is; the loss of every step and the final weights agree exactly."""
    runs = {}
    for name, flags in (("float", ()), ("uint8", ("--normalize_on_device",))):
        assert run_in_process(entry_argv(tiny_coco, tmp_path / name, *flags)) == 0
        runs[name] = tmp_path / name
    assert logged_losses(runs["uint8"] / "checkpoint-4") == logged_losses(runs["float"] / "checkpoint-4")
    weights, expected = (load_file(runs[name] / "model.safetensors") for name in ("uint8", "float"))
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in expected)
