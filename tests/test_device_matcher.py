"""The device matcher (detr_ft/model/device_matcher.py) against scipy: on 1,000+ problems of every kind its matching
is a valid one-to-one assignment of scipy's total cost, in fact scipy's own assignment; a DETR step with it reads
nothing on the host, and its forward + loss trace into one graph."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from test_sync_audit import make_batch, patched
from test_train import train
from torch import Tensor

from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.labels import ClassMapping
from detr_ft.data.padding import DetectionCollator, compute_bucket_sizes
from detr_ft.data.sources import load_coco_folder
from detr_ft.model.build import build_model
from detr_ft.model.device_matcher import DeviceMatcher, choose_matcher, solve, worst_case_steps
from detr_ft.model.matcher import UNMATCHED, host_assignment, hungarian_match, matching_costs
from detr_ft.model.static_shapes import use_static_shape_loss
from detr_ft.train.checkpoints import all_checkpoints
from detr_ft.train.sync_audit import HostSyncCounter

LARGEST = torch.finfo(torch.float32).max


def as_matching_costs(cost: Tensor) -> Tensor:
    """NaN / inf mapped as `matching_costs` maps them."""
    return torch.nan_to_num(cost, nan=LARGEST, posinf=LARGEST, neginf=LARGEST)


def random_valid(generator: torch.Generator, batch_size: int, num_targets: int) -> Tensor:
    """(B, T) bool: each image's valid targets first (as the collator pads), 0 to T of them, one image full."""
    counts = torch.randint(0, num_targets + 1, (batch_size,), generator=generator)  # (B,)
    counts[0] = num_targets
    return torch.arange(num_targets) < counts[:, None]  # (B, T)


def family(name: str, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One batch of (L=2, B=6) problems of a kind: (L, B, Q, T) costs, (B, T) validity."""
    num_queries = int(torch.randint(2, 13, (), generator=generator))
    num_targets = int(torch.randint(1, num_queries + 1, (), generator=generator))
    if name == "more_targets_than_queries":
        num_targets = num_queries + int(torch.randint(1, 6, (), generator=generator))
    if name == "no_targets":
        num_targets = 0
    shape = (2, 6, num_queries, num_targets)
    cost = torch.rand(shape, generator=generator) * 10 - 3  # (L, B, Q, T)
    if name == "integer_ties":
        cost = torch.randint(0, 3, shape, generator=generator).float()
    if name == "duplicated_queries":
        cost = cost[:, :, torch.randint(0, max(num_queries // 3, 1), (num_queries,), generator=generator)]
    if name == "inf_nan":
        special = torch.tensor([float("inf"), float("nan"), -float("inf")])[torch.randint(0, 3, shape,
                                                                                          generator=generator)]
        cost = torch.where(torch.rand(shape, generator=generator) < 0.3, special, cost)
    return as_matching_costs(cost), random_valid(generator, 6, num_targets)


FAMILIES = ("random", "integer_ties", "duplicated_queries", "inf_nan", "no_targets", "more_targets_than_queries")


def scipy_total(cost: np.ndarray, valid: np.ndarray) -> float:
    columns = np.flatnonzero(valid)
    rows, picked = linear_sum_assignment(cost[:, columns])
    return float(cost[:, columns][rows, picked].astype(np.float64).sum())


def check_against_scipy(cost: Tensor, valid: Tensor, matched: Tensor) -> int:
    """Every problem: a one-to-one assignment of min(Q, n) valid targets, with scipy's float64 total; returns the
    number of problems checked."""
    num_queries = cost.shape[2]
    for layer, image in np.ndindex(*cost.shape[:2]):
        queries = matched[layer, image]  # (Q,)
        targets = queries[queries != UNMATCHED]  # (k,)
        num_valid = int(valid[image].sum())
        assert len(targets) == min(num_queries, num_valid)
        assert len(set(targets.tolist())) == len(targets) and bool(valid[image, targets].all())
        image_cost = cost[layer, image].double().numpy()  # (Q, T)
        ours = float(image_cost[(queries != UNMATCHED).numpy(), targets.numpy()].sum())
        assert ours == scipy_total(image_cost, valid[image].numpy()), (layer, image)
    return cost.shape[0] * cost.shape[1]


@pytest.mark.parametrize("name", FAMILIES)
def test_total_cost_equals_scipys_and_assignment_is_scipys(name):
    generator = torch.Generator().manual_seed(FAMILIES.index(name))
    problems = 0
    for _ in range(15):  # 15 batches of 12 problems: 180 per family, 1,080 in all
        cost, valid = family(name, generator)
        matched, complete = solve(cost, valid)
        assert complete.all()
        problems += check_against_scipy(cost, valid, matched)
        assert torch.equal(matched, host_assignment(cost, valid))  # the same ops in the same order: ties alike
    assert problems == 180


class RecordingMatcher:
    """`hungarian_match` that keeps every call's cost matrices and validity."""

    def __init__(self) -> None:
        self.problems: list[tuple[Tensor, Tensor]] = []

    def __call__(self, logits, pred_boxes, labels, class_cost, bbox_cost, giou_cost) -> Tensor:
        self.problems.append((matching_costs(logits, pred_boxes, labels["class_labels"], labels["boxes"],
                                             class_cost, bbox_cost, giou_cost), labels["valid"]))
        return hungarian_match(logits, pred_boxes, labels, class_cost, bbox_cost, giou_cost)


@pytest.mark.slow
def test_equals_scipy_on_costs_of_real_training_steps(synthetic_dir):
    """detr-tiny trained 6 steps on the synthetic shapes: the costs its matcher saw (the first steps' near-ties
    included) give the device matcher scipy's assignments."""
    torch.manual_seed(0)
    split = load_coco_folder(synthetic_dir, "train")
    classes = ClassMapping.from_categories(split.coco["categories"])
    dataset = DetectionDataset(split, classes.category_to_label, 64)
    collator = DetectionCollator(64, compute_bucket_sizes(dataset.object_counts(), 1))
    model = build_model("detr-tiny", classes.id2label).train()
    recorder = RecordingMatcher()
    use_static_shape_loss(model, recorder)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    for step in range(6):
        model(**collator([dataset[i] for i in range(step * 8, step * 8 + 8)])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    checked = 0
    for cost, valid in recorder.problems:
        matched, complete = solve(cost, valid)
        assert complete.all() and torch.equal(matched, host_assignment(cost, valid))
        checked += check_against_scipy(cost, valid, matched)
    assert checked == 6 * 2 * 8  # steps x decoder layers x images


def test_few_steps_leave_problems_incomplete_and_the_matcher_finishes_them_on_the_host():
    cost, valid = family("random", torch.Generator().manual_seed(7))
    _, complete = solve(cost, valid, steps=2)
    assert not complete.all()
    with HostSyncCounter() as counter:
        matched = DeviceMatcher(steps=2).assign(cost, valid)
    assert torch.equal(matched, host_assignment(cost, valid))
    assert counter.count == 2, counter.by_op  # the flag read, then the host solve's one copy


def tiny_batch(stock_detr) -> tuple:
    model = patched(stock_detr())
    batch = make_batch()
    batch["labels"] = DetectionCollator(bucket_sizes=[4]).targets(batch["labels"])
    return model, batch


def test_training_step_with_device_matcher_reads_nothing_on_the_host(stock_detr):
    model, batch = tiny_batch(stock_detr)
    use_static_shape_loss(model, DeviceMatcher())
    torch.manual_seed(1)  # the same dropout masks in both forwards
    with HostSyncCounter() as counter:
        loss = model(**batch).loss
        loss.backward()
    assert counter.count == 0, counter.by_op
    use_static_shape_loss(model)
    torch.manual_seed(1)
    assert torch.equal(model(**batch).loss, loss.detach())  # the host matcher's loss


@pytest.mark.slow
def test_forward_and_loss_compile_into_one_graph_with_device_matcher(stock_detr):
    model, batch = tiny_batch(stock_detr)
    use_static_shape_loss(model, DeviceMatcher())
    model.eval()  # no dropout: the same forward twice
    expected = model(**batch).loss
    compiled = torch.compile(lambda inputs: model(**inputs).loss, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(batch), expected, rtol=1e-6, atol=0)  # fullgraph: a graph break raises


def test_choose_matcher():
    assert choose_matcher("auto", "cpu") is hungarian_match  # measured: scipy is faster on a CPU (README)
    assert choose_matcher("auto", "cuda") is hungarian_match  # measured: and on an H200 (README)
    assert choose_matcher("host", "cuda") is hungarian_match
    assert isinstance(choose_matcher("device", "cpu"), DeviceMatcher)
    with pytest.raises(ValueError, match="--matcher"):
        choose_matcher("gpu", "cpu")


def test_worst_case_steps_finish_the_slowest_problem():
    """Costs c[i, j] = i * j make every new row displace all earlier ones: row r scans r + 1 columns."""
    size = 6
    cost = (torch.arange(size)[:, None] * torch.arange(size)[None, :]).float()[None, None]  # (1, 1, Q, T)
    valid = torch.ones(1, size, dtype=torch.bool)
    _, complete = solve(cost, valid, steps=worst_case_steps(size, size) - 1)
    matched, complete_at_bound = solve(cost, valid)
    assert complete_at_bound.all() and torch.equal(matched, host_assignment(cost, valid))
    assert not complete.all()


@pytest.mark.slow
def test_entry_trains_with_device_matcher_without_host_reads_and_hosts_loss_history(synthetic_dir, tmp_path,
                                                                                   logged_losses):
    """`--matcher device --check_finite_loss false`: 0 host reads per step in run_summary.json, and the very losses
    of `--matcher host` (the device matcher finds scipy's assignment, so nothing differs)."""
    common = ["--dataset_dir", str(synthetic_dir), "--pad_images", "--pad_objects", "--num_buckets", "1",
              "--deterministic", "--max_steps", "3", "--logging_steps", "1", "--check_finite_loss", "false"]
    runs = {matcher: train(tmp_path, matcher, *common, "--matcher", matcher) for matcher in ("host", "device")}
    syncs = {matcher: json.loads((run / "run_summary.json").read_text())["host_syncs_per_step"]
             for matcher, run in runs.items()}
    assert syncs == {"host": 1, "device": 0}
    last = {matcher: all_checkpoints(run)[-1] for matcher, run in runs.items()}
    assert logged_losses(last["device"]) == logged_losses(last["host"])
