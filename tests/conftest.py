"""Shared fixtures: the real CPPE-5 test split, small synthetic COCO folders, tiny offline DETRs and Trainers, the
losses a run logged. Tests marked `slow` (entry runs, convergence, DDP, resume, the compiling bench) are left out by
`make test-fast`."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CPPE5_TEST = REPO.parent / "shared" / "data" / "cppe5-test"


@pytest.fixture(scope="session")
def cppe5_dir() -> Path:
    if not (CPPE5_TEST / "annotations" / "test.json").exists():
        pytest.skip(f"the real CPPE-5 test split is not at {CPPE5_TEST} (it lives in ../shared beside the checkout)")
    return CPPE5_TEST


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory):
    """`synthetic_coco(**write_synthetic_coco arguments)`: the folder, written once per session for each set of
    arguments (tests read it; a test that corrupts data works on a copy)."""
    from detr_ft.data.synthetic import write_synthetic_coco

    folders: dict[tuple, Path] = {}

    def folder(**arguments) -> Path:
        key = tuple(sorted(arguments.items()))
        if key not in folders:
            folders[key] = write_synthetic_coco(tmp_path_factory.mktemp("synthetic"), **arguments)
        return folders[key]

    return folder


@pytest.fixture(scope="session")
def synthetic_dir(synthetic_coco) -> Path:
    """64 px shapes: 96 train and 24 validation images, 1-4 objects each."""
    return synthetic_coco(num_train=96, num_validation=24, image_size=64, seed=0)


@pytest.fixture(scope="session")
def tiny_coco(synthetic_coco) -> Path:
    """The entry runs' data (tests/entry_runs.py): 4 train and 2 validation images of 32 px, 1-3 objects each."""
    return synthetic_coco(num_train=4, num_validation=2, image_size=32, min_objects=1, max_objects=3, seed=0)


@pytest.fixture(scope="session")
def reference_run(tiny_coco, tmp_path_factory) -> Path:
    """One uninterrupted entry run (tests/entry_runs.py) per session, for the tests that compare against it."""
    from entry_runs import entry_argv, run_in_process

    output_dir = tmp_path_factory.mktemp("reference_run")
    assert run_in_process(entry_argv(tiny_coco, output_dir)) == 0
    return output_dir


@pytest.fixture
def habana_stand_in(monkeypatch):
    """The test-only habana_frameworks importable in this process for one test (tests/hpu_stand_in.py)."""
    from hpu_stand_in import in_process

    with in_process(monkeypatch):
        yield


ASPECT_SCALES = ((1, 1), (2, 1), (1, 2))  # (width, height) factors: square, landscape 2:1, portrait 1:2


def extend_to_aspect_ratios(folder: Path) -> Path:
    """A square synthetic COCO folder rewritten in place into three image shapes by image position (square,
    landscape 2:1, portrait 1:2): each image is pasted top-left onto its corner colour, twice as wide or tall; boxes
    keep their pixels. At image_size 64 their boxes are 64 x 64, 32 x 64 and 64 x 32: three canvases."""
    for annotation_file in sorted((folder / "annotations").glob("*.json")):
        coco = json.loads(annotation_file.read_text())
        for i, entry in enumerate(coco["images"]):
            width_factor, height_factor = ASPECT_SCALES[i % len(ASPECT_SCALES)]
            path = folder / "images" / entry["file_name"]
            with Image.open(path) as image:
                extended = Image.new("RGB", (image.width * width_factor, image.height * height_factor),
                                     image.getpixel((0, 0)))
                extended.paste(image)
            extended.save(path)
            entry["width"], entry["height"] = extended.size
        annotation_file.write_text(json.dumps(coco))
    return folder


@pytest.fixture(scope="session")
def aspect_ratio_dir(synthetic_dir, tmp_path_factory) -> Path:
    """`synthetic_dir` in three shapes (`extend_to_aspect_ratios`): three canvases at image_size 64."""
    return extend_to_aspect_ratios(shutil.copytree(synthetic_dir, tmp_path_factory.mktemp("aspect_ratios") / "data"))


CANVAS_RUN_ARGUMENTS = ("--image_size", "64", "--image_buckets", "3")
# each optimizer step accumulates 2 batches, which the sampler deals from 2 canvases: 3 steps an epoch
DEALT_CANVAS_RUN_ARGUMENTS = (*CANVAS_RUN_ARGUMENTS, "--gradient_accumulation_steps", "2")


@pytest.fixture(scope="session")
def canvas_coco(synthetic_coco, tmp_path_factory) -> Path:
    """The entry runs' data with 12 train images in three shapes: with CANVAS_RUN_ARGUMENTS 4 images per canvas, 2
    batches of 2 each."""
    square = synthetic_coco(num_train=12, num_validation=2, image_size=32, min_objects=1, max_objects=3, seed=0)
    return extend_to_aspect_ratios(shutil.copytree(square, tmp_path_factory.mktemp("canvas_coco") / "data"))


@pytest.fixture(scope="session")
def canvas_reference_run(canvas_coco, tmp_path_factory) -> Path:
    """`reference_run` on `canvas_coco` with three aspect-ratio canvases."""
    from entry_runs import entry_argv, run_in_process

    output_dir = tmp_path_factory.mktemp("canvas_reference_run")
    assert run_in_process(entry_argv(canvas_coco, output_dir, *CANVAS_RUN_ARGUMENTS)) == 0
    return output_dir


@pytest.fixture(scope="session")
def dealt_canvas_reference_run(canvas_coco, tmp_path_factory) -> Path:
    """`canvas_reference_run` with gradient accumulation over canvases."""
    from entry_runs import entry_argv, run_in_process

    output_dir = tmp_path_factory.mktemp("dealt_canvas_reference_run")
    assert run_in_process(entry_argv(canvas_coco, output_dir, *DEALT_CANVAS_RUN_ARGUMENTS)) == 0
    return output_dir


@pytest.fixture(scope="session")
def logged_losses():
    """`logged_losses(checkpoint)`: (step, training loss) of every logged step, from its trainer_state.json."""

    def losses(checkpoint: Path) -> list[tuple[int, float]]:
        history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
        return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]

    return losses


@pytest.fixture(scope="session")
def tiny_detr():
    """`tiny_detr(seed=0, num_labels=3, **DetrConfig fields)`: a random DetrForObjectDetection of the detr-tiny
    preset's shape (the model the entry builds from scratch, without DETR's init), any config field overridden."""
    from transformers import DetrConfig, DetrForObjectDetection

    from detr_ft.model.presets import load_preset

    def model(seed: int = 0, num_labels: int = 3, **overrides) -> DetrForObjectDetection:
        torch.manual_seed(seed)
        return DetrForObjectDetection(DetrConfig(**{**load_preset("detr-tiny").config, **overrides},
                                                 num_labels=num_labels))

    return model


class CompiledGraphRuns:
    """Stands in for a dynamo backend the Trainer looks up by name (`--torch_compile_backend eager`): it hands each
    graph to the real one and records per graph its frame (dynamo's frame id: one per compiled function, which
    compiles a graph per input shape) and, per run of a compiled graph with grad enabled (training), the graph's
    number and the shape of its first 4-d input (images, feature maps, or the criterion's (L, B, Q, C+1) logits;
    graphs without one are not recorded). `symbolic` holds the graphs compiled for symbolic (dynamic) sizes."""

    def __init__(self, backend: Callable) -> None:
        self.backend = backend
        self.graphs = 0
        self.frames: list[int] = []  # the frame of each graph
        self.symbolic: list[int] = []
        self.training_runs: list[tuple[int, tuple[int, ...]]] = []

    def __call__(self, graph_module: torch.fx.GraphModule, example_inputs: list):
        graph, compiled = self.graphs, self.backend(graph_module, example_inputs)
        self.graphs += 1
        self.frames.append(graph_module.meta["dynamo_compile_id"].frame_id)
        if any(isinstance(value, torch.SymInt) for value in example_inputs):
            self.symbolic.append(graph)

        def run(*args):
            images = next((a for a in args if isinstance(a, torch.Tensor) and a.dim() == 4), None)
            if torch.is_grad_enabled() and images is not None:
                self.training_runs.append((graph, tuple(images.shape)))
            return compiled(*args)
        return run

    def graphs_per_frame(self) -> list[int]:
        """How many graphs each compiled function has, in the order the functions were first compiled."""
        return [self.frames.count(frame) for frame in dict.fromkeys(self.frames)]


@pytest.fixture
def record_compiled_graphs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], CompiledGraphRuns]]:
    """`record_compiled_graphs(name)`: a `CompiledGraphRuns` standing in for dynamo's backend `name` for the test;
    dynamo's caches are emptied before and after."""
    from torch._dynamo.backends import registry

    def record(name: str) -> CompiledGraphRuns:
        recorder = CompiledGraphRuns(registry.lookup_backend(name))
        monkeypatch.setitem(registry._COMPILER_FNS, name, recorder)  # what lookup_backend(name) returns
        return recorder

    torch._dynamo.reset()
    yield record
    torch._dynamo.reset()


@pytest.fixture
def compiled_graph_runs(record_compiled_graphs) -> CompiledGraphRuns:
    """`record_compiled_graphs("eager")`: the capture of --torch_compile without a compiler's code generation."""
    return record_compiled_graphs("eager")


ENCODER_LAYERS, DECODER_LAYERS = 6, 2  # stock_detr's


@pytest.fixture
def stock_detr(tiny_detr):
    """`stock_detr()`: the same random DETR with DETR-R50's 6 encoder layers (the host reads scale with them), 2
    decoder layers and auxiliary loss, in training mode, unpatched: the model of the host-sync and patch tests."""
    return lambda: tiny_detr(num_labels=5, encoder_layers=ENCODER_LAYERS, decoder_layers=DECODER_LAYERS).train()


class TinyRegression(nn.Module):
    """A linear model with a Trainer-shaped output: for tests of the Trainer's machinery, not of DETR."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, labels):
        return {"loss": nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)}


@pytest.fixture(scope="session")
def tiny_trainer():
    """`tiny_trainer(output_dir, max_steps, callbacks)`: a transformers Trainer of TinyRegression on 8 random samples,
    batch 2, a checkpoint every step."""
    from transformers import Trainer, TrainingArguments

    def trainer(output_dir: Path, max_steps: int, callbacks: list | None = None) -> Trainer:
        torch.manual_seed(0)
        samples = [{"x": torch.randn(2), "labels": torch.randn(())} for _ in range(8)]
        args = TrainingArguments(output_dir=str(output_dir), max_steps=max_steps, save_steps=1,
                                 per_device_train_batch_size=2, report_to="none", use_cpu=True)
        return Trainer(model=TinyRegression(), args=args, train_dataset=samples, callbacks=callbacks)

    return trainer


IMAGE_SIZE, SIDE = 64, 26


def write_centered_shapes(folder: Path, num_images: dict[str, int], seed: int = 0) -> Path:
    """A COCO folder whose every image holds one shape (random class) in the same central box."""
    from detr_ft.data.synthetic import CATEGORIES, draw_shape

    rng = np.random.default_rng(seed)
    offset = (IMAGE_SIZE - SIDE) // 2
    (folder / "images").mkdir(parents=True)
    (folder / "annotations").mkdir()
    for split, count in num_images.items():
        images, annotations = [], []
        for i in range(1, count + 1):
            category_id = int(rng.integers(1, len(CATEGORIES) + 1))
            background, colour = tuple(rng.integers(150, 256, 3).tolist()), tuple(rng.integers(0, 100, 3).tolist())
            image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
            draw_shape(ImageDraw.Draw(image), category_id, offset, offset, SIDE, colour)
            image.save(folder / "images" / f"{split}_{i}.png")
            images.append({"id": i, "file_name": f"{split}_{i}.png", "width": IMAGE_SIZE, "height": IMAGE_SIZE})
            annotations.append({"id": i, "image_id": i, "category_id": category_id,
                                "bbox": [offset, offset, SIDE, SIDE], "area": SIDE * SIDE, "iscrowd": 0})
        coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (folder / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return folder


TRAINED_RUN_STEPS = [6, 12, 18]  # 48 images, batch 8: 6 steps an epoch, a checkpoint each epoch
EVAL_CHECKPOINTS_OUTPUTS = ("checkpoint_metrics.json", "checkpoint_metrics.csv", "map_vs_epoch.png")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """detr-tiny, 48 train / 16 validation images, 3 epochs, a checkpoint and mAP every epoch.

    Shared by test_eval_checkpoints.py, test_inference.py and test_faults.py (copied, `copy_run`, before a change).
    """
    base = tmp_path_factory.mktemp("eval-checkpoints-run")
    run_dir = base / "run"
    data_dir = write_centered_shapes(base / "data", {"train": 48, "validation": 16})
    argv = ["--model_name_or_path", "detr-tiny", "--dataset_dir", str(data_dir), "--output_dir", str(run_dir),
            "--image_size", str(IMAGE_SIZE), "--pad_images", "--pad_objects", "--augment", "false",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--num_train_epochs", "3",
            "--ckpt_store_interval_epochs", "1", "--seed", "0", "--report_to", "none", "--disable_tqdm", "true"]
    import run_object_detection

    assert run_object_detection.main(argv) == 0
    return run_dir


def copy_run(run_dir: Path, destination: Path) -> Path:
    """The run's checkpoints, final model, history and flags, without optimizer states or eval_checkpoints' outputs."""
    ignored = shutil.ignore_patterns("optimizer.pt", "scheduler.pt", *EVAL_CHECKPOINTS_OUTPUTS)
    return Path(shutil.copytree(run_dir, destination, ignore=ignored))


def history_map(run_dir: Path) -> dict[str, float]:
    return {Path(r["checkpoint"]).name: r["metrics"]["map"]
            for r in json.loads((run_dir / "eval_history.json").read_text())}


