"""Static batch shapes: image canvas, bucket sizes, padded targets that keep every valid object."""

import numpy as np
import pytest
import torch

from detr_ft.data.padding import PAD_BOX, DetectionCollator, compute_bucket_sizes


def sample(h, w, n, index=0):
    return {"pixel_values": torch.rand(3, h, w), "class_labels": torch.arange(n) % 3,
            "boxes": torch.rand(n, 4) * 0.5 + 0.25, "image_index": torch.tensor(index)}


def test_bucket_sizes():
    """README: N buckets are the object counts' quantiles at 1/N ... 1, rounded up."""
    counts = np.array([1, 1, 2, 2, 3, 5, 8, 30])
    assert compute_bucket_sizes(counts, 1) == [30]
    # Sorted: 1 1 2 3 5 8 13 21. The quantile at q sits at position 7q (linear between neighbours):
    # 1/4: 1.75 -> 1 + 0.75 * (2 - 1) = 1.75 -> 2; 2/4: 3.5 -> 3 + 0.5 * (5 - 3) = 4 -> 4;
    # 3/4: 5.25 -> 8 + 0.25 * (13 - 8) = 9.25 -> 10; 1: 21. Rounded down: 1, 4, 9; the nearest count: 2, 5, 8;
    # quantiles at 0 ... 3/4: 1, 2, 4, 10.
    assert compute_bucket_sizes(np.array([8, 1, 21, 3, 1, 13, 2, 5]), 4) == [2, 4, 10, 21]
    # 1 1 1 1 1 1 2 9: 1.75 -> 1; 3.5 -> 1; 5.25 -> 1 + 0.25 * (2 - 1) = 1.25 -> 2; 9: equal quantiles share a bucket
    assert compute_bucket_sizes(np.array([1, 1, 1, 1, 1, 1, 2, 9]), 4) == [1, 2, 9]
    assert compute_bucket_sizes(np.array([0, 0]), 2) == [1]
    with pytest.raises(ValueError, match="num_buckets"):
        compute_bucket_sizes(counts, 0)


def test_fixed_canvas_and_mask():
    batch = DetectionCollator(image_size=64)([sample(64, 40, 1), sample(30, 64, 2)])
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["pixel_mask"][0, :, :40].all() and not batch["pixel_mask"][0, :, 40:].any()
    assert batch["pixel_mask"][1, :30].all() and not batch["pixel_mask"][1, 30:].any()


def test_per_batch_canvas_is_the_largest_image():
    batch = DetectionCollator()([sample(50, 40, 1), sample(30, 60, 2)])
    assert batch["pixel_values"].shape == (2, 3, 50, 60)
    assert isinstance(batch["labels"], list) and len(batch["labels"][1]["boxes"]) == 2


def test_targets_padded_to_smallest_bucket():
    samples = [sample(8, 8, 0, 0), sample(8, 8, 3, 1), sample(8, 8, 2, 2)]
    labels = DetectionCollator(bucket_sizes=[2, 4, 9])(samples)["labels"]
    assert labels["class_labels"].shape == (3, 4) and labels["boxes"].shape == (3, 4, 4)
    assert labels["valid"].sum(1).tolist() == [0, 3, 2]
    assert torch.equal(labels["boxes"][1, :3], samples[1]["boxes"])
    assert torch.equal(labels["class_labels"][2, :2], samples[2]["class_labels"])
    assert torch.equal(labels["boxes"][0, 0], torch.tensor(PAD_BOX))
    assert labels["image_index"].tolist() == [0, 1, 2]


def test_overflowing_batch_gets_its_own_shape(caplog):
    labels = DetectionCollator(bucket_sizes=[2])([sample(8, 8, 5)])["labels"]
    assert labels["valid"].shape == (1, 5) and labels["valid"].all()
    assert "more than the largest bucket" in caplog.text


def test_fuller_eval_images_get_one_more_bucket_and_a_queries_warning(tmp_path, caplog):
    import shutil

    from detr_ft.config import DataArguments, StaticShapeArguments
    from detr_ft.data.prepare import prepare_data, warn_queries_overflow
    from detr_ft.data.synthetic import write_synthetic_coco

    data_dir = write_synthetic_coco(tmp_path / "data", num_train=8, num_validation=1, image_size=48, max_objects=2)
    fuller = write_synthetic_coco(tmp_path / "fuller", num_train=1, num_validation=3, image_size=48, min_objects=5,
                                  max_objects=6)
    shutil.copy(fuller / "annotations" / "validation.json", data_dir / "annotations" / "validation.json")
    for image in (fuller / "images").glob("validation_*"):
        shutil.copy(image, data_dir / "images" / image.name)
    data = prepare_data(DataArguments(dataset_dir=str(data_dir), image_size=48),
                        StaticShapeArguments(pad_objects=True, num_buckets=1))
    eval_max = int(data.eval.object_counts().max())
    assert data.bucket_sizes == [2] and eval_max >= 5
    assert data.collator().bucket_sizes == [2, eval_max]
    warn_queries_overflow(data, num_queries=4)
    assert "eval: 3 images have more objects than num_queries=4" in caplog.text
    assert not any("train:" in r.getMessage() and "num_queries" in r.getMessage() for r in caplog.records)
