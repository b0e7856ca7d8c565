"""Compile proofs: a DETR training step whose forward runs without labels and whose loss is the criterion on its
outputs compiles without graph breaks and recompiles only for a new target bucket: the forward is one graph for the
whole epoch, and the criterion compiled as `--torch_compile` compiles it (its matching costs and its loss terms, each
`fullgraph=True`, the host matcher between them) one graph per bucket for each part.

Graphs are counted by dynamo's CompileCounter backend (it traces, counts and runs the graph eagerly: no code
generation), with `dynamic=False`: every new shape is a new graph, as on HPU and with CUDA graphs.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.labels import ClassMapping
from detr_ft.data.padding import DetectionCollator, compute_bucket_sizes
from detr_ft.data.sources import load_coco_folder
from detr_ft.model.criterion import DetrCriterion
from patches import apply_patches

IMAGE_SIZE, BATCH_SIZE, NUM_BATCHES, NUM_BUCKETS = 64, 2, 12, 3


@pytest.fixture(scope="module")
def epoch(synthetic_dir) -> list[dict]:
    """The first NUM_BATCHES batches of the 64 px shapes (1-4 objects per image), targets padded to 3 buckets; every
    bucket occurs."""
    split = load_coco_folder(synthetic_dir, "train")
    classes = ClassMapping.from_categories(split.coco["categories"])
    dataset = DetectionDataset(split, classes.category_to_label, IMAGE_SIZE)
    buckets = compute_bucket_sizes(dataset.object_counts(), NUM_BUCKETS)
    collator = DetectionCollator(IMAGE_SIZE, buckets)
    batches = [collator([dataset[i] for i in range(start, start + BATCH_SIZE)])
               for start in range(0, NUM_BATCHES * BATCH_SIZE, BATCH_SIZE)]
    assert len(buckets) == NUM_BUCKETS and {target_slots(batch) for batch in batches} == set(buckets)
    return batches


def target_slots(batch: dict) -> int:
    return batch["labels"]["class_labels"].shape[1]


@pytest.fixture
def model(tiny_detr):
    """detr-tiny (2 decoder layers, auxiliary loss, 16 queries) with the patches the entry applies (the label-free
    forward and the sync patches)."""
    detr = tiny_detr(num_labels=4).train()
    apply_patches(detr, static_shapes=True)
    return detr


def buckets_seen(batches: list[dict]) -> list[int]:
    """How many distinct target buckets the batches up to each one have brought."""
    seen, counts = set(), []
    for batch in batches:
        seen.add(target_slots(batch))
        counts.append(len(seen))
    return counts


def train_epochs(model, step, batches: list[dict], epochs: int) -> list[int]:
    """Train `epochs` passes over `batches` with `step(batch) -> loss` and AdamW; the number of graphs `step`'s
    counter held after each batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    graphs = []
    for _ in range(epochs):
        for batch in batches:
            step(batch).backward()
            optimizer.step()
            optimizer.zero_grad()
            graphs.append(step.counter.frame_count)
    return graphs


class CountedCompile:
    """`torch.compile(function, fullgraph=True, dynamic=False)` with its own CompileCounter."""

    def __init__(self, function):
        self.counter = CompileCounter()
        self.compiled = torch.compile(function, fullgraph=True, dynamic=False, backend=self.counter)

    def __call__(self, *args, **kwargs):
        return self.compiled(*args, **kwargs)


@pytest.mark.slow
def test_compiled_step_compiles_the_forward_once_and_each_criterion_part_once_per_bucket(model, epoch):
    """Over two epochs: the forward one graph for every batch; the criterion's two parts a graph each when a bucket
    first occurs, never again; no graph break anywhere (fullgraph would raise, and dynamo counts none)."""
    torch._dynamo.reset()
    counters.clear()
    forward = CountedCompile(model)
    criterion_graphs = CompileCounter()
    criterion = DetrCriterion(model.config, {"backend": criterion_graphs})

    def step(batch):
        outputs = forward(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        return criterion(outputs, batch["labels"])[0]

    step.counter = criterion_graphs
    graphs = train_epochs(model, step, epoch, epochs=2)
    assert forward.counter.frame_count == 1
    assert graphs == [2 * buckets for buckets in buckets_seen(epoch)] + [2 * NUM_BUCKETS] * len(epoch)
    assert not counters["graph_break"]
