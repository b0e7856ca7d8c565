"""Aspect-ratio canvases: chosen from CPPE-5's real sizes, each image in the smallest canvas holding it at the
square's scale, batches that stay on one canvas on every process, and the canvases saved with the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from conftest import CANVAS_RUN_ARGUMENTS, extend_to_aspect_ratios, write_centered_shapes
from entry_runs import entry_argv, run_in_process
from transformers import TrainingArguments

from detr_ft.data.augmentation import train_augmentation
from detr_ft.data.canvases import (
    CanvasGroupedSampler,
    assign_canvases,
    choose_canvases,
    image_box,
    padded_pixel_fraction,
)
from detr_ft.data.dataset import DetectionDataset, PaddedToMultiple
from detr_ft.data.images import Preprocessing, fitted_size
from detr_ft.data.labels import ClassMapping
from detr_ft.data.padding import DetectionCollator
from detr_ft.data.sources import load_coco_folder
from detr_ft.run_files import RUN_ARGUMENTS_FILE
from detr_ft.train.training_arguments import steps_per_epoch


def cppe5_sizes(cppe5_dir) -> list[tuple[int, int]]:
    coco = json.loads((cppe5_dir / "annotations" / "test.json").read_text())
    return [(image["width"], image["height"]) for image in coco["images"]]


def test_one_bucket_is_the_square_whatever_the_data(cppe5_dir):
    assert choose_canvases(cppe5_sizes(cppe5_dir), 800, 1) == [(800, 800)]
    with pytest.raises(ValueError, match="image_buckets"):
        choose_canvases(cppe5_sizes(cppe5_dir), 800, 0)


def cppe5_padding(sizes: list[tuple[int, int]], count: int) -> float:
    canvases = choose_canvases(sizes, 800, count)
    return padded_pixel_fraction(sizes, canvases, assign_canvases(sizes, 800, canvases))


@pytest.mark.parametrize("count", [2, 3])
def test_cppe5_canvases_keep_the_scale_and_cut_the_padding(cppe5_dir, count):
    """CPPE-5's 16:9, 3:2 and square/portrait photos (18, 8 and 3 of 29) fill K = 2 and K = 3 canvases, each one
    less padding than the last: the 3 square/portrait photos (1 in 10) get the square canvas to themselves at K = 3."""
    sizes = cppe5_sizes(cppe5_dir)
    canvases = choose_canvases(sizes, 800, count)
    assigned = assign_canvases(sizes, 800, canvases)
    assert len(canvases) == count
    assert all(max(canvas) == 800 and all(side % 32 == 0 for side in canvas) for canvas in canvases)
    for (width, height), k in zip(sizes, assigned, strict=True):
        box = image_box(width, height, 800)
        assert box[0] <= canvases[k][0] and box[1] <= canvases[k][1]
        # the square's scale: long side 800, the image resized exactly as without canvases
        assert fitted_size(width, height, canvases[k]) == fitted_size(width, height, (800, 800))
    assert all((assigned == k).sum() >= len(sizes) / (4 * count) for k in range(len(canvases)))
    assert padded_pixel_fraction(sizes, canvases, assigned) < cppe5_padding(sizes, count - 1) - 0.1


@pytest.mark.parametrize(("squares", "canvases"), [(12, [(160, 160)]), (13, [(160, 160), (96, 160)])])
def test_a_canvas_serves_at_least_a_quarter_of_an_equal_share(squares, canvases):
    """100 images, K = 2: a canvas needs 100 / (4 * 2) = 12.5 images. 12 square images cannot have the square
    to themselves, so every image shares it; 13 can, and the 2:1 landscapes get a 96 x 160 canvas."""
    sizes = [(100, 100)] * squares + [(200, 100)] * (100 - squares)
    assert choose_canvases(sizes, 160, 2) == canvases


def test_an_image_no_canvas_holds_is_shrunk_into_the_one_keeping_it_largest():
    canvases = [(96, 160), (128, 160)]  # landscape only: a portrait image fits none at full scale
    assert assign_canvases([(100, 200)], 160, canvases).tolist() == [1]
    assert fitted_size(100, 200, canvases[1]) == (64, 128)
    assert fitted_size(200, 100, canvases[0]) == (160, 80)  # held: the square's scale


def test_collator_pads_to_the_smallest_canvas_holding_the_batch():
    collator = DetectionCollator(canvases=[(64, 64), (32, 64), (64, 32)])

    def sample(height, width):
        return {"pixel_values": torch.ones(3, height, width), "class_labels": torch.zeros(0, dtype=torch.int64),
                "boxes": torch.zeros(0, 4), "image_index": torch.tensor(0)}

    assert collator([sample(30, 64), sample(20, 50)])["pixel_values"].shape == (2, 3, 32, 64)
    assert collator([sample(64, 30)])["pixel_values"].shape == (1, 3, 64, 32)
    assert collator([sample(30, 64), sample(64, 30)])["pixel_values"].shape == (2, 3, 64, 64)


def batches_of(sampler: CanvasGroupedSampler, batch_size: int) -> list[list[int]]:
    indices = list(sampler)
    return [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]


def test_collator_pads_a_batch_to_the_canvas_its_samples_were_fitted_to():
    """A shrunk augmented crop of 32 x 25 on the landscape canvas fits the smaller portrait one: the batch keeps the
    canvas its samples name (the sampler's); samples naming none get the smallest canvas holding them."""
    collator = DetectionCollator(canvases=[(64, 32), (64, 64), (32, 64)])
    crop = {"pixel_values": torch.ones(3, 32, 25), "class_labels": torch.zeros(0, dtype=torch.int64),
            "boxes": torch.zeros(0, 4), "image_index": torch.tensor(0)}

    assert collator([{**crop, "canvas": torch.tensor([32, 64])}])["pixel_values"].shape == (1, 3, 32, 64)
    assert collator([crop])["pixel_values"].shape == (1, 3, 64, 32)
    assert DetectionCollator()([{**crop, "canvas": torch.tensor([32, 64])}])["pixel_values"].shape == (1, 3, 32, 25)


def test_sampler_batches_stay_on_one_canvas_on_every_process_and_repeat_per_epoch():
    canvas_of = np.array([0] * 13 + [1] * 9 + [2] * 6)  # (28,)
    batch_size, processes = 2, 2
    sampler = CanvasGroupedSampler(canvas_of, batch_size * processes, seed=5)
    assert len(sampler) == (3 + 2 + 1) * 4  # each canvas drops its last partial global batch
    global_batches = batches_of(sampler, batch_size * processes)
    assert all(len(set(canvas_of[batch])) == 1 for batch in global_batches)
    assert len({i for batch in global_batches for i in batch}) == len(sampler)  # no image twice in an epoch
    assert batches_of(sampler, 4) == global_batches  # same seed and epoch: same order (a resume)
    sampler.set_epoch(1)
    assert batches_of(sampler, 4) != global_batches

    # accelerate's sharding over 2 processes: at every step both train on the same canvas
    per_process = [list(BatchSamplerShard(torch.utils.data.BatchSampler(sampler, batch_size, drop_last=True),
                                          num_processes=processes, process_index=rank)) for rank in range(processes)]
    assert len(per_process[0]) == len(per_process[1]) == 6
    for batch_0, batch_1 in zip(*per_process, strict=True):
        assert len(set(canvas_of[batch_0 + batch_1])) == 1


@pytest.mark.parametrize(("accumulation", "full_steps", "last_step"), [
    (2, [2] * 9, [0]),  # every batch of canvases 1 and 2 shares its step with one of canvas 0
    (3, [2, 2, 2, 3, 3, 3], [0]),  # canvas 2's 3 batches: 3 steps of all canvases; then 0 and 1 until 1 runs out
    (4, [2, 3, 3, 3], [1, 0, 1]),
])
def test_sampler_deals_each_accumulated_step_batches_of_different_canvases(accumulation, full_steps, last_step):
    canvas_of = np.array([0] * 40 + [1] * 24 + [2] * 12 + [1] * 3)  # (79,): 10, 6 and 3 global batches of 4
    sampler = CanvasGroupedSampler(canvas_of, 4, seed=3, accumulation_steps=accumulation)
    global_batches = batches_of(sampler, 4)
    assert len(global_batches) == 19 and len(sampler) == 19 * 4
    assert all(len(set(canvas_of[batch])) == 1 for batch in global_batches)
    assert len({i for batch in global_batches for i in batch}) == len(sampler)
    canvases = [int(canvas_of[batch[0]]) for batch in global_batches]
    steps = [canvases[start:start + accumulation] for start in range(0, 19, accumulation)]
    assert sorted(len(set(step)) for step in steps[:-1]) == full_steps
    assert steps[-1] == last_step  # the partial step stays last: the trainer's steps keep their groups
    assert batches_of(sampler, 4) == global_batches  # same seed and epoch: same order (a resume)
    sampler.set_epoch(1)
    assert batches_of(sampler, 4) != global_batches


def training_arguments(output_dir, batch_size: int, accumulation: int = 1):
    return TrainingArguments(output_dir=str(output_dir), report_to="none", use_cpu=True,
                             per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation)


def test_a_batch_no_canvas_fills_is_refused_though_the_whole_set_would(tmp_path):
    """12 images hold a batch of 8, but each canvas drops its last partial batch: 4 per canvas give no batch."""
    with pytest.raises(ValueError, match=r"12 images \(\[4, 4, 4\] per image canvas\), fewer than one batch \(8\)"):
        steps_per_epoch([4, 4, 4], training_arguments(tmp_path, 8))


def test_fewer_batches_than_one_optimizer_step_accumulates_are_refused(tmp_path):
    """8 images are 4 batches of 2; an optimizer step of 8 accumulated batches never comes."""
    with pytest.raises(ValueError, match="lower --per_device_train_batch_size"):
        steps_per_epoch([8], training_arguments(tmp_path, 2, accumulation=8))


def test_batches_that_fill_exactly_one_accumulated_step_make_one_step(tmp_path):
    """The boundary of the refusal above: 4 batches of 2 are one step of 4 accumulated batches."""
    assert steps_per_epoch([8], training_arguments(tmp_path, 2, accumulation=4)) == 1


def test_steps_count_whole_batches_per_canvas_then_accumulated_steps_rounded_up(tmp_path):
    """[11, 7, 7, 3] images, batches of 4: 2 + 1 + 1 + 0 = 4 whole batches per canvas, in steps of 3 accumulated
    batches: ceil(4 / 3) = 2, a full step and the partial one the trainers end an epoch with. Counting the 28 images
    together (7 batches) would give 3 steps; dropping the partial step, 1."""
    assert steps_per_epoch([11, 7, 7, 3], training_arguments(tmp_path, 4, accumulation=3)) == 2


def test_a_run_whose_batch_fits_the_set_but_no_canvas_is_refused_before_anything_is_written(canvas_coco, tmp_path,
                                                                                            monkeypatch, caplog):
    """canvas_coco's 12 train images, 4 on each of the 3 canvases: a batch of 8 exits with 2 before the model is
    built, leaving no run_args.json."""
    def build_model(*args, **kwargs):
        raise AssertionError("a model was built for a batch no canvas fills")

    monkeypatch.setattr("detr_ft.model.build.build_model", build_model)
    argv = entry_argv(canvas_coco, tmp_path / "run", *CANVAS_RUN_ARGUMENTS, "--per_device_train_batch_size", "8")
    assert run_in_process(argv) == 2
    assert "12 images ([4, 4, 4] per image canvas), fewer than one batch (8)" in caplog.text
    assert not (tmp_path / "run" / RUN_ARGUMENTS_FILE).exists()


def test_eval_set_is_grouped_by_canvas_with_fillers_of_its_canvas(aspect_ratio_dir):
    split = load_coco_folder(aspect_ratio_dir, "validation")
    canvases = choose_canvases(load_coco_folder(aspect_ratio_dir, "train").image_sizes(), 64, 3)
    assert canvases == [(64, 32), (64, 64), (32, 64)]
    dataset = DetectionDataset(split, ClassMapping.from_categories(split.coco["categories"]).category_to_label, 64,
                               canvases=canvases)
    padded = PaddedToMultiple(dataset, 5)
    collator = DetectionCollator(canvases=canvases)
    shapes = [collator([padded[i] for i in range(start, start + 5)])["pixel_values"].shape[2:]
              for start in range(0, len(padded), 5)]
    assert set(shapes) == {(64, 32), (64, 64), (32, 64)}
    indices = sorted(int(padded[i]["image_index"]) for i in range(len(padded)) if padded[i]["image_index"] >= 0)
    assert indices == list(range(len(dataset)))


def test_augmented_crops_are_shrunk_into_their_canvas_and_groups_collate_to_it(aspect_ratio_dir):
    """A crop of another shape than its image, fitted at the square's scale, would overflow a landscape or portrait
    canvas: the dataset shrinks it to fit, so every sample stays inside its canvas and a canvas's images collated
    together are padded to that canvas. Some samples must be shrunk (long side < image_size), or no crop overflowed
    and this proves nothing."""
    split = load_coco_folder(aspect_ratio_dir, "train")
    canvases = choose_canvases(split.image_sizes(), 64, 3)
    assert canvases == [(64, 32), (64, 64), (32, 64)]
    torch.manual_seed(3)  # augmentation draws its seeds from torch's generator; 3: some crops fit a smaller canvas
    dataset = DetectionDataset(split, ClassMapping.from_categories(split.coco["categories"]).category_to_label, 64,
                               train_augmentation(), canvases)
    samples = [dataset[i] for i in range(len(dataset))]
    shrunk = 0
    for (width, height), canvas, sample in zip(split.image_sizes(), dataset.canvas_of, samples, strict=True):
        canvas_height, canvas_width = canvases[canvas]
        sample_height, sample_width = sample["pixel_values"].shape[1:]
        assert sample_height <= canvas_height and sample_width <= canvas_width
        # un-augmented, the image keeps the square's scale (long side 64); a shrunk crop's long side is shorter
        shrunk += max(sample_height, sample_width) < max(fitted_size(width, height, canvases[canvas]))
    assert shrunk > 0
    collator = DetectionCollator(canvases=canvases)
    for k, canvas in enumerate(canvases):
        group = [sample for sample, of in zip(samples, dataset.canvas_of, strict=True) if of == k]
        assert collator(group)["pixel_values"].shape[2:] == canvas
    # alone too (one image per process): a crop that a smaller canvas would hold still gets its own canvas, so
    # every process of a step trains on the canvas the sampler drew
    assert [tuple(collator([sample])["pixel_values"].shape[2:]) for sample in samples] == [
        canvases[k] for k in dataset.canvas_of]


def test_canvases_are_saved_with_the_processor_and_read_back(tmp_path):
    preprocessing = Preprocessing(64, True, ((64, 32), (32, 64)))
    preprocessing.image_processor("DetrImageProcessor").save_pretrained(tmp_path)
    assert Preprocessing.from_saved(tmp_path) == preprocessing
    assert preprocessing.canvases == [(64, 32), (32, 64)]
    Preprocessing(64, True).image_processor("DetrImageProcessor").save_pretrained(tmp_path / "square")
    assert Preprocessing.from_saved(tmp_path / "square").canvases == [(64, 64)]


@pytest.mark.slow  # an entry run
def test_a_run_with_three_canvases_reports_them_and_its_saved_model_scores_the_logged_map(tmp_path):
    """Training, run_summary.json, the saved processor and inference with --image_buckets 3; mAP must not be 0
    for the agreement to mean something, hence the centered shapes, which detr-tiny learns in a few epochs."""
    from entry_runs import run_in_process

    from detr_ft.evaluation import inference

    data_dir = extend_to_aspect_ratios(write_centered_shapes(tmp_path / "data", {"train": 48, "validation": 12}))
    run_dir = tmp_path / "run"
    argv = ["--model_name_or_path", "detr-tiny", "--dataset_dir", str(data_dir), "--output_dir", str(run_dir),
            "--image_size", "64", "--pad_images", "--image_buckets", "3", "--pad_objects", "--augment", "false",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4", "--num_train_epochs", "4",
            "--ckpt_store_interval_epochs", "4", "--seed", "0", "--report_to", "none", "--disable_tqdm", "true"]
    assert run_in_process(argv) == 0
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["image_canvases"] == [[64, 32], [64, 64], [32, 64]]
    assert summary["padded_pixel_fraction"] < 0.2  # the square would pad 2/3 of the extended images' pixels
    assert summary["steps"] == 4 * 6  # 16 images per canvas: 2 batches of 8 each, 3 canvases
    assert Preprocessing.from_saved(run_dir).image_canvases == ((64, 32), (64, 64), (32, 64))

    logged = json.loads((run_dir / "eval_history.json").read_text())[-1]
    assert logged["metrics"]["map"] > 0
    assert inference.main(["--model_path", str(run_dir / "checkpoint-24"), "--output_dir", str(tmp_path / "out")]) == 0
    inferred = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert inferred["map"] == pytest.approx(logged["metrics"]["map"], abs=1e-6)
