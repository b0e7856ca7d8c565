"""Device and precision settings: contradictions fail before any model is built and name the fix (on HPU also the
flags only the other trainer reads); PT_HPU_LAZY_MODE follows the flags; --bf16 / --autocast train the entry under
autocast with the DETR loss in float32; --torch_compile runs the entry, with the loss's host copy as a graph
break."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import run_object_detection
from detr_ft.config import parse_arguments
from detr_ft.data.padding import DetectionCollator
from detr_ft.model.build import build_model
from detr_ft.model.criterion import DetrCriterion
from detr_ft.train.devices import DeviceSettingsError, check_device_settings, is_installed, trainer_stack
from detr_ft.train.run_summary import SUMMARY_FILE, RunSummaryCallback, graph_compilations, hpu_graph_compilations
from detr_ft.train.training_arguments import training_arguments
from patches import detr_label_free_forward

LAZY_FLAGS = ["--use_habana", "--use_lazy_mode", "--pad_objects", "--num_buckets", "1"]


def device_arguments(*flags: str):
    return parse_arguments(["--output_dir", "unused", *flags]).device


@pytest.fixture
def no_lazy_mode_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    # setenv first: it records the original state (maybe unset), which delenv alone would not restore.
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "")
    monkeypatch.delenv("PT_HPU_LAZY_MODE")
    return monkeypatch


HF_ON_HPU = ["--use_habana", "--trainer", "hf"]


@pytest.mark.parametrize(("flags", "env", "fix"), [
    (["--use_lazy_mode"], None, "add --use_habana or drop them"),
    (["--use_hpu_graphs_for_training"], None, "add --use_habana or drop them"),
    (["--use_habana", "--device", "cpu"], None, "drop one of them"),
    (["--use_habana", "--device", "cuda"], None, "--use_habana contradicts --device cuda"),
    (["--use_habana", "--use_lazy_mode"], "0", "unset it or set PT_HPU_LAZY_MODE=1"),
    (["--use_habana"], "1", "set PT_HPU_LAZY_MODE=0, or add --use_lazy_mode"),
    ([*HF_ON_HPU, "--gaudi_config_name", "gaudi_config.json"], None, "--gaudi_config_name: optimum-habana's "
     "GaudiTrainer only, and this run trains with transformers' Trainer: drop them, or train with --trainer gaudi"),
    ([*HF_ON_HPU, "--use_lazy_mode", "--use_hpu_graphs_for_inference"], None, "--use_hpu_graphs_for_inference: "
     "optimum-habana's GaudiTrainer only"),
    ([*HF_ON_HPU, "--throughput_warmup_steps", "3"], None, "--throughput_warmup_steps: optimum-habana's"),
    (["--trainer", "hf", "--cpu_position_embedding"], None, "--cpu_position_embedding: optimum-habana's"),
    ([*HF_ON_HPU, "--use_hpu_graphs_for_training"], None, "HPU graphs capture lazy-mode graphs only: add "
     "--use_lazy_mode"),
])
def test_contradictory_settings_name_the_fix(no_lazy_mode_env, flags, env, fix):
    if env is not None:
        no_lazy_mode_env.setenv("PT_HPU_LAZY_MODE", env)

    with pytest.raises(DeviceSettingsError, match=re.escape(fix)):
        check_device_settings(device_arguments(*flags))


@pytest.mark.skipif(is_installed("habana_frameworks"), reason="checks a machine without Intel Gaudi software")
def test_habana_without_intel_gaudi_software_is_refused(no_lazy_mode_env):
    with pytest.raises(DeviceSettingsError, match=r"habana_frameworks \(Intel Gaudi software\) is not installed"):
        check_device_settings(device_arguments("--use_habana"))
    assert "PT_HPU_LAZY_MODE" not in os.environ


@pytest.mark.skipif(is_installed("optimum.habana"), reason="checks the venv without optimum-habana")
def test_without_optimum_habana_habana_trains_with_transformers_trainer_and_gaudi_is_refused():
    assert trainer_stack(device_arguments("--use_habana")) == "hf"
    assert trainer_stack(device_arguments()) == "hf"
    with pytest.raises(DeviceSettingsError, match="optimum-habana is not installed in this environment"):
        check_device_settings(device_arguments("--trainer", "gaudi"))


@pytest.mark.parametrize(("flags", "lazy_mode"), [(["--use_habana", "--use_lazy_mode"], "1"),
                                                  (["--use_habana"], "0"), (["--device", "hpu"], "0")])
def test_habana_sets_pt_hpu_lazy_mode(no_lazy_mode_env, habana_stand_in, flags, lazy_mode):
    assert check_device_settings(device_arguments(*flags)) == "hpu"
    assert os.environ["PT_HPU_LAZY_MODE"] == lazy_mode


def test_without_habana_pt_hpu_lazy_mode_is_left_alone(no_lazy_mode_env):
    assert check_device_settings(device_arguments("--device", "cpu")) == "cpu"
    assert "PT_HPU_LAZY_MODE" not in os.environ


@pytest.mark.parametrize(("flags", "env", "message"), [
    (LAZY_FLAGS, "0", "PT_HPU_LAZY_MODE=0 in the environment contradicts lazy mode"),
    ([*LAZY_FLAGS, "--torch_compile"], None, "--torch_compile: HPU lazy mode builds its own graphs, and Habana's "
     "torch.compile backend runs in eager mode only: drop --use_lazy_mode (eager mode), or drop --torch_compile"),
    ([*LAZY_FLAGS, "--torch_compile_backend", "hpu_backend"], None, "--torch_compile: HPU lazy mode"),
    ([*HF_ON_HPU, "--gaudi_config_name", "gaudi_config.json"], None, "--gaudi_config_name: optimum-habana's "
     "GaudiTrainer only"),
])
def test_entry_refuses_contradictions_before_building_a_model(no_lazy_mode_env, habana_stand_in, tmp_path, caplog,
                                                              flags, env, message):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was built despite contradictory device settings")

    no_lazy_mode_env.setattr("detr_ft.model.build.build_model", no_model)
    if env is not None:
        no_lazy_mode_env.setenv("PT_HPU_LAZY_MODE", env)
    output_dir = tmp_path / "run"

    status = run_object_detection.main(["--output_dir", str(output_dir), "--model_name_or_path", "detr-tiny",
                                        *flags])

    assert status == 2
    assert message in caplog.text
    assert not output_dir.exists()


def test_lazy_mode_command_line_parses(capsys):
    """In-process `python run_object_detection.py ... --help` (a subprocess would spend its time importing)."""
    with pytest.raises(SystemExit) as exit_info:
        run_object_detection.main([*LAZY_FLAGS, "--help"])

    assert exit_info.value.code == 0
    assert "--use_lazy_mode" in capsys.readouterr().out


# transformers refuses --bf16 without a bf16 GPU unless --use_cpu is given too: --bf16 is read as --autocast, which is
# applied after the device is known.
@pytest.mark.parametrize("flags", [["--bf16", "--use_cpu"], ["--autocast"], ["--bf16"]])
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_bf16_and_autocast_both_mean_bf16_autocast(flags):
    args = parse_arguments(["--output_dir", "unused", *flags])

    arguments = training_arguments(check_device_settings(args.device), args, images_per_canvas=[8])

    assert arguments.bf16 and arguments.use_cpu


def test_batches_go_to_a_gpu_pinned_and_without_waiting_for_its_queue():
    """On CUDA the loader pins batches and accelerate copies them non-blocking; without pinning a non-blocking copy
    would be a plain one, and on the CPU nothing is copied."""
    def derived(device_type: str, *flags: str):
        return training_arguments(device_type, parse_arguments(["--output_dir", "unused", *flags]), [8])

    cuda, cpu = derived("cuda"), derived("cpu")
    assert cuda.dataloader_pin_memory and cuda.accelerator_config.non_blocking
    assert not cpu.dataloader_pin_memory and not cpu.accelerator_config.non_blocking
    assert not derived("cuda", "--dataloader_pin_memory", "false").accelerator_config.non_blocking


def test_padded_loss_is_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = build_model("detr-tiny", {0: "circle", 1: "square", 2: "triangle"})
    detr_label_free_forward.patch_model(model)
    generator = torch.Generator().manual_seed(0)
    examples = [{
        "pixel_values": torch.rand(3, 64, 64, generator=generator),  # (3, H, W)
        "class_labels": torch.tensor([index % 3]),  # (1,)
        "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]]),  # (1, 4)
        "image_index": torch.tensor(index),
    } for index in range(2)]
    batch = DetectionCollator(64, [4])(examples)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        loss, loss_dict = DetrCriterion(model.config)(outputs, batch["labels"])
    loss.backward()

    assert outputs.logits.dtype == torch.bfloat16  # autocast is on: the model ran in bf16
    assert loss.dtype == torch.float32
    assert all(value.dtype == torch.float32 for value in loss_dict.values())
    assert math.isfinite(loss.item())
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


def run_entry(dataset_dir: Path, output_dir: Path, *flags: str) -> dict:
    status = run_object_detection.main([
        "--device", "cpu", "--model_name_or_path", "detr-tiny", "--dataset_dir", str(dataset_dir),
        "--output_dir", str(output_dir), "--pad_images", "--image_size", "64", "--pad_objects", "--num_buckets", "1",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--report_to", "none",
        "--logging_steps", "1", "--dataloader_num_workers", "0", "--seed", "0", *flags,
    ])
    assert status == 0
    return json.loads((output_dir / SUMMARY_FILE).read_text())


@pytest.mark.slow  # an entry run
def test_bf16_run_trains_under_autocast(synthetic_dir, tmp_path):
    summary = run_entry(synthetic_dir, tmp_path, "--autocast", "--max_steps", "3")

    assert summary["precision"] == "bf16 autocast"
    assert summary["steps"] == 3
    assert math.isfinite(summary["train_loss"])


@pytest.mark.slow  # an entry run
def test_torch_compile_run_compiles_the_forward_and_each_criterion_part_once(synthetic_dir, tmp_path):
    """dynamo's eager backend: the capture of --torch_compile, without inductor's slow CPU codegen. The trainer calls
    the model without labels (the loss, with the matcher's host copy, runs outside the compiled module), so the
    forward is one graph with no break, compiled once for every step (static shapes); the criterion's matching costs
    and loss terms are a graph each for the one target bucket."""
    summary = run_entry(synthetic_dir, tmp_path, "--torch_compile", "--torch_compile_backend", "eager",
                        "--max_steps", "4")

    assert summary["steps"] == 4
    assert math.isfinite(summary["train_loss"])
    assert summary["graph_compilations"]["torch_compile"] == 1 + 2


@pytest.mark.slow  # an entry run
def test_torch_compile_runs_the_compiled_forward_at_every_step_but_the_audited_one(synthetic_dir, tmp_path,
                                                                                    compiled_graph_runs):
    """The host-sync audit runs step 2 under torch dispatch modes. Met by dynamo at the compiled forward's frame,
    they made torch 2.13 skip that frame for good (pytorch/pytorch#190286): steps 2-6 ran eager. The audited step
    now runs eager on purpose (run_summary.py) and every other step runs the graphs compiled at step 1: the forward,
    the criterion's matching costs and its loss terms (graphs 0, 1, 2)."""
    summary = run_entry(synthetic_dir, tmp_path, "--torch_compile", "--torch_compile_backend", "eager",
                        "--max_steps", "6", "--audit_host_syncs")

    assert summary["host_syncs_per_step"] is not None
    assert [graph for graph, _ in compiled_graph_runs.training_runs] == [0, 1, 2] * 5


@pytest.mark.slow  # an entry run
def test_torch_compile_on_canvases_compiles_one_static_graph_per_canvas(aspect_ratio_dir, tmp_path,
                                                                         compiled_graph_runs):
    """With the Trainer's dynamic=None, dynamo made the image sides symbolic at the second canvas: one
    dynamic-shape graph shared by canvases 2 and 3. Static shapes compile each canvas's own static graph."""
    summary = run_entry(aspect_ratio_dir, tmp_path, "--image_buckets", "3", "--torch_compile",
                        "--torch_compile_backend", "eager", "--max_steps", "8")

    forward = compiled_graph_runs.frames[0]  # the first function a step compiles
    shapes_of_graph = {}
    for graph, shape in compiled_graph_runs.training_runs:
        if compiled_graph_runs.frames[graph] == forward:
            shapes_of_graph.setdefault(graph, set()).add(shape)
    assert len(shapes_of_graph) == len(summary["image_canvases"]) == 3  # every canvas met in 8 steps
    assert all(len(shapes) == 1 for shapes in shapes_of_graph.values())
    assert compiled_graph_runs.symbolic == []


@pytest.mark.slow  # an entry run
def test_torch_compile_by_regions_compiles_static_graphs_per_canvas_and_saves_plain_weights(
        aspect_ratio_dir, tmp_path, compiled_graph_runs, monkeypatch):
    """accelerate's regional compilation (the Trainer's --torch_compile with ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION
    set, README "CUDA"): every layer is a region, compiled statically once per canvas, within the recompile limit
    the run sets (a frame over it would run eager: its runs would stop being recorded); the checkpoint holds the
    model's own parameter names, not the compiled wrappers'."""
    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", "1")
    summary = run_entry(aspect_ratio_dir, tmp_path, "--image_buckets", "3", "--torch_compile",
                        "--torch_compile_backend", "eager", "--max_steps", "8")

    assert summary["steps"] == 8 and compiled_graph_runs.symbolic == []
    shapes_of_graph: dict[int, set] = {}
    for graph, shape in compiled_graph_runs.training_runs:
        shapes_of_graph.setdefault(graph, set()).add(shape)
    assert all(len(shapes) == 1 for shapes in shapes_of_graph.values())
    assert len({shape[2:] for shapes in shapes_of_graph.values() for shape in shapes}) >= 3  # images of 3 canvases
    assert summary["graph_compilations"]["torch_compile"] > 3  # the regions, not 3 whole-forward graphs
    uncompiled = tmp_path / "uncompiled"
    build_model("detr-tiny", {0: "any"}).save_pretrained(uncompiled)
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(uncompiled / "model.safetensors"))


class GraphCompiler:
    """Stands in for Habana's graph compiler: `compile()` adds a graph to the process-wide `graph_compilation`
    metric, read as habana_frameworks' own tests read it: metric_global(name).stats() -> (name, value) pairs."""

    def __init__(self, compiled_before: int):
        self.total, self.seconds = compiled_before, 0.0

    def compile(self) -> None:
        self.total += 1
        self.seconds += 0.25

    def stats(self) -> list[tuple[str, float]]:
        return [("TotalNumber", self.total), ("TotalTime", self.seconds * 1e6),
                ("AvgTime", self.seconds * 1e6 / max(self.total, 1))]


class CompileOnSteps(TrainerCallback):
    """A new graph at each of `steps` (as a new input shape would compile one)."""

    def __init__(self, compiler: GraphCompiler, steps: set[int]):
        self.compiler, self.steps = compiler, steps

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 in self.steps:
            self.compiler.compile()


def test_summary_counts_the_hpu_graphs_compiled_during_training(monkeypatch, tmp_path, tiny_trainer):
    """Graphs compiled before training (model set-up, an earlier run in the process) are not the run's; the count is
    Habana's TotalNumber, not its times."""
    compiler = GraphCompiler(compiled_before=5)
    metrics = types.ModuleType("habana_frameworks.torch.hpu.metrics")
    metrics.metric_global = lambda name: compiler if name == "graph_compilation" else None
    for name in ("habana_frameworks", "habana_frameworks.torch", "habana_frameworks.torch.hpu"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "habana_frameworks.torch.hpu.metrics", metrics)
    summary = RunSummaryCallback(tmp_path, "hpu", [4], 64, "fp32")
    trainer = tiny_trainer(tmp_path, max_steps=4, callbacks=[CompileOnSteps(compiler, {1, 3}), summary])

    trainer.train()

    assert compiler.total == 7
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["graph_compilations"] == {"hpu": 2}


def test_graph_compilations_without_habana_count_only_torch_compile():
    if "habana_frameworks" in sys.modules:
        pytest.skip("habana_frameworks is importable in this environment")
    assert hpu_graph_compilations() is None
    assert "hpu" not in graph_compilations()
