"""Every flag is checked before data is read or a model is built: a refusal (exit 2) names the flag and a valid value;
flags the project sets itself are refused when the user sets them otherwise; graph-compiling devices pad images by
default; a model that cannot load fails fast, leaving no run_args.json; no package phones home at import."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import types

import pytest
import torch
from entry_runs import REPO, entry_argv, run_in_process
from transformers import TrainingArguments

from detr_ft.config import FlagError, parse_arguments, user_set_flags
from detr_ft.model.presets import preset_names
from detr_ft.run_files import RUN_ARGUMENTS_FILE, save_run_arguments
from detr_ft.train.flag_checks import check_flags, hpu_compile_default, static_shape_defaults
from detr_ft.train.optimizer import optimizer_class_and_kwargs


class ModelBuilt(AssertionError):
    """Raised by the stand-in for build_model: the entry got past its checks."""


@pytest.fixture
def no_model(monkeypatch):
    def build_model(*args, **kwargs):
        raise ModelBuilt("a model was built")

    monkeypatch.setattr("detr_ft.model.build.build_model", build_model)


@pytest.fixture
def data_dir(tiny_coco):
    return tiny_coco


@pytest.mark.parametrize(("flags", "named"), [
    (["--image_size", "-5"], "--image_size -5: must be at least 32"),
    (["--image_size", "0"], "--image_size 0: must be at least 32"),
    (["--num_buckets", "-1"], "--num_buckets -1: must be >= 1 with --pad_objects"),
    (["--ckpt_store_interval_epochs", "0"], "--ckpt_store_interval_epochs 0: must be >= 1"),
    (["--train_val_split", "0"], "--train_val_split 0.0: must be between 0 and 1"),
    (["--train_val_split", "1.0"], "--train_val_split 1.0: must be between 0 and 1"),
    (["--save_steps", "500", "--eval_strategy", "no"], "--save_steps: checkpoints and mAP evaluations go together"),
    (["--eval_strategy", "no"], "--eval_strategy no: the project sets steps"),
    (["--backbone_lr", "-0.001"], "--backbone_lr -0.001: must be >= 0"),
    (["--image_buckets", "0"], "--image_buckets 0: must be >= 1"),
    (["--pad_images", "false", "--image_buckets", "2"], "--image_buckets 2: needs --pad_images"),
    (["--dataloader_num_workers", "-2"], "--dataloader_num_workers -2: must be >= 0"),
    (["--optim", "adamw_bnb_8bit"], "--optim adamw_bnb_8bit: You need to install `bitsandbytes`"),
    (["--label_smoothing_factor", "0.1"], "--label_smoothing_factor 0.1: does not apply to DETR"),
])
def test_bad_flags_are_refused_before_anything_is_read_or_written(data_dir, tmp_path, no_model, caplog, flags, named):
    output_dir = tmp_path / "run"

    assert run_in_process(entry_argv(data_dir, output_dir, *flags)) == 2

    assert named in caplog.text
    assert not output_dir.exists()


@pytest.mark.parametrize(("flags", "named"), [
    (["--eval_steps", "5"], "--eval_steps: checkpoints and mAP evaluations go together"),
    (["--save_strategy", "epoch"], "--save_strategy epoch: the project sets steps"),
    (["--dataloader_drop_last", "false"], "--dataloader_drop_last False: the project sets True"),
    (["--batch_eval_metrics", "false"], "--batch_eval_metrics False: the project sets True"),
    (["--remove_unused_columns", "true"], "--remove_unused_columns True: the project sets False"),
    (["--use_cpu"], "--use_cpu: the device follows --device: use --device cpu instead"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0: must be >= 1"),
    (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size 0: must be >= 1"),
    (["--model_name_or_path", "{empty_folder}"],
     "--model_name_or_path {empty_folder}: the folder holds no config.json"),
])
def test_flags_the_project_sets_or_bounds_are_refused_naming_the_flag(tmp_path, flags, named):
    """README's table of refused flags: a value the project would replace, or cannot run with, is refused by name."""
    flags = [flag.format(empty_folder=tmp_path) for flag in flags]
    argv = ["--output_dir", "unused", "--model_name_or_path", "detr-tiny", *flags]

    with pytest.raises(FlagError, match=re.escape(named.format(empty_folder=tmp_path))):
        check_flags(parse_arguments(argv))


@pytest.mark.parametrize("flags", [["--use_cpu", "--device", "cpu"], ["--dataloader_drop_last", "true"]])
def test_the_values_the_project_sets_itself_pass(flags):
    argv = ["--output_dir", "unused", "--model_name_or_path", "detr-tiny", *flags]
    check_flags(parse_arguments(argv))


def test_every_refused_flag_is_named_in_one_message(data_dir, tmp_path, no_model, caplog):
    assert run_in_process(entry_argv(data_dir, tmp_path, "--image_size", "0", "--num_buckets", "-1",
                                     "--save_steps", "10")) == 2
    assert all(flag in caplog.text for flag in ("--image_size 0", "--num_buckets -1", "--save_steps"))


def test_a_flag_is_user_set_even_at_its_default_value():
    """--save_steps 500 is TrainingArguments' default, yet the user gave it: it must not be replaced silently."""
    assert {"save_steps", "pad_images"} <= user_set_flags(["--save_steps", "500", "--pad_images", "false"])
    assert "save_steps" not in user_set_flags(["--output_dir", "x"])


def test_batch_larger_than_the_training_set_is_refused_before_the_model_is_built(data_dir, tmp_path, no_model,
                                                                                  caplog):
    argv = entry_argv(data_dir, tmp_path / "run", "--per_device_train_batch_size", "16")

    assert run_in_process(argv) == 2

    assert "fewer than one batch (16): lower --per_device_train_batch_size" in caplog.text
    assert not (tmp_path / "run" / RUN_ARGUMENTS_FILE).exists()


class StopBeforeTraining(Exception):
    pass


@pytest.fixture
def stop_before_training(monkeypatch):
    def build_trainer(*args, **kwargs):
        raise StopBeforeTraining

    monkeypatch.setattr("detr_ft.train.trainer.build_trainer", build_trainer)


def what_trains(caplog) -> dict[str, str]:
    """Group name -> its line from the entry's "what trains" log."""
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("what trains")][0].splitlines()[1:]
    return {line.split("trainable")[0].strip(): line for line in lines}


def test_backbone_lr_zero_is_kept_and_what_trains_is_logged(data_dir, tmp_path, stop_before_training, caplog):
    with caplog.at_level(logging.INFO), pytest.raises(StopBeforeTraining):
        run_in_process(entry_argv(data_dir, tmp_path, "--backbone_lr", "0"))

    groups = what_trains(caplog)
    assert {"backbone stem", "backbone stage 0", "backbone BatchNorm", "transformer", "heads"} <= set(groups)
    assert groups["backbone stage 0"].endswith("lr 0")  # not replaced by the learning rate or 1e-5
    assert groups["heads"].endswith("lr 0.001")
    assert "frozen           0" in groups["backbone BatchNorm"]  # a preset trains its BatchNorm


@pytest.mark.parametrize(("flags", "optimizer_class", "settings"), [
    ([], torch.optim.AdamW, {"fused": True, "betas": (0.9, 0.999)}),  # transformers' default, adamw_torch_fused
    (["--optim", "adamw_torch", "--adam_beta2", "0.98"], torch.optim.AdamW, {"fused": None, "betas": (0.9, 0.98)}),
    (["--optim", "sgd"], torch.optim.SGD, {"momentum": 0}),
])
def test_the_optimizer_is_the_one_optim_names_over_the_project_s_groups(data_dir, tmp_path, monkeypatch, caplog,
                                                                         flags, optimizer_class, settings):
    built = {}

    def build_trainer(*args, **kwargs):
        built["optimizer"] = kwargs["optimizers"][0]
        raise StopBeforeTraining

    monkeypatch.setattr("detr_ft.train.trainer.build_trainer", build_trainer)
    with caplog.at_level(logging.INFO), pytest.raises(StopBeforeTraining):
        run_in_process(entry_argv(data_dir, tmp_path, "--backbone_lr", "2e-5", *flags))

    optimizer = built["optimizer"]
    assert type(optimizer) is optimizer_class
    assert f"what trains, stepped by {optimizer_class.__name__}(" in caplog.text
    assert [group["lr"] for group in optimizer.param_groups] == [1e-3, 2e-5]  # the rest, the backbone
    assert all(group[key] == value for group in optimizer.param_groups for key, value in settings.items())


@pytest.fixture
def saved_detr(tiny_detr, tmp_path):
    """A tiny DETR saved with save_pretrained, as a pretrained model folder is: no run_args.json beside it."""
    tiny_detr().save_pretrained(tmp_path / "detr")
    return tmp_path / "detr"


@pytest.mark.parametrize(("source", "backbone_rates"), [
    ("pretrained folder", {1e-5}),  # DETR's recipe: a pretrained backbone at --backbone_lr's default
    ("preset", {1e-3}),  # from scratch: the whole backbone at --learning_rate
    ("folder trained from scratch by us", {1e-3}),  # its run_args.json names a preset: it keeps that regime
])
def test_backbone_lr_default_is_1e_5_for_pretrained_backbones_and_the_learning_rate_from_scratch(
        data_dir, tmp_path, saved_detr, monkeypatch, source, backbone_rates):
    """Without --backbone_lr the backbone trains at 1e-5 only where it is pretrained (README); the rest of the model
    always at --learning_rate (1e-3 in entry_argv)."""
    if source == "folder trained from scratch by us":
        save_run_arguments(saved_detr, {"model_name_or_path": "detr-tiny"})
    model_name_or_path = "detr-tiny" if source == "preset" else str(saved_detr)
    built = {}

    def build_trainer(*args, **kwargs):
        built.update(model=kwargs["model"], optimizer=kwargs["optimizers"][0])
        raise StopBeforeTraining

    monkeypatch.setattr("detr_ft.train.trainer.build_trainer", build_trainer)
    with pytest.raises(StopBeforeTraining):
        run_in_process(entry_argv(data_dir, tmp_path / "run", "--model_name_or_path", model_name_or_path))

    learning_rates = {id(p): group["lr"] for group in built["optimizer"].param_groups for p in group["params"]}
    rates: dict[bool, set] = {True: set(), False: set()}  # in the backbone -> learning rates of its parameters
    for name, parameter in built["model"].named_parameters():
        if parameter.requires_grad:
            rates["backbone" in name.split(".")].add(learning_rates[id(parameter)])
    assert rates == {True: backbone_rates, False: {1e-3}}


class HabanaFusedAdamW(torch.optim.AdamW):
    """Stands in for habana_frameworks' FusedAdamW (not on PyPI), which takes torch AdamW's arguments."""


@pytest.mark.parametrize(("optim", "optimizer_class"), [
    ("adamw_torch_fused", HabanaFusedAdamW), ("adamw_torch", HabanaFusedAdamW), ("sgd", torch.optim.SGD),
])
def test_adamw_on_hpu_is_habana_s_fused_adamw_with_the_given_betas(monkeypatch, optim, optimizer_class):
    args = TrainingArguments("unused", optim=optim, adam_beta2=0.98, adam_epsilon=1e-6)
    for name in ("habana_frameworks", "habana_frameworks.torch", "habana_frameworks.torch.hpex",
                 "habana_frameworks.torch.hpex.optimizers"):  # after the arguments: accelerate looks for an HPU
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["habana_frameworks.torch.hpex.optimizers"].FusedAdamW = HabanaFusedAdamW

    chosen, kwargs = optimizer_class_and_kwargs(args, on_hpu=True)

    assert chosen is optimizer_class
    if chosen is HabanaFusedAdamW:
        assert kwargs == {"betas": (0.9, 0.98), "eps": 1e-6}


@pytest.mark.parametrize(("flags", "compiled", "backend"), [
    (["--use_habana", "--trainer", "hf"], True, "hpu_backend"),  # eager mode: compiled unless turned off
    (["--use_habana", "--trainer", "hf", "--torch_compile"], True, "hpu_backend"),  # not the CPU's inductor
    (["--use_habana", "--trainer", "hf", "--torch_compile", "false"], False, None),
    (["--use_habana", "--trainer", "hf", "--torch_compile_backend", "eager"], True, "eager"),
    (["--use_habana", "--trainer", "hf", "--use_lazy_mode"], False, None),
    (["--use_habana", "--trainer", "gaudi"], False, None),  # GaudiTrainer: as optimum-habana has it
    ([], False, None),
])
def test_transformers_trainer_on_hpu_compiles_on_hpu_backend_in_eager_mode_unless_told_otherwise(flags, compiled,
                                                                                                 backend):
    args = parse_arguments(["--output_dir", "unused", "--image_buckets", "3", *flags])

    hpu_compile_default(args)

    assert args.training.torch_compile is compiled
    if compiled:
        assert args.training.torch_compile_backend == backend
        check_flags(args)  # --image_buckets without --pad_images: the compiler pads the images


@pytest.mark.parametrize(("flags", "compiler"), [
    (["--use_habana", "--use_lazy_mode"], "HPU lazy mode"),
    (["--torch_compile"], "--torch_compile"),
])
def test_graph_compiling_devices_pad_images_unless_turned_off(flags, compiler, caplog):
    argv = ["--output_dir", "unused", "--pad_objects", "--num_buckets", "1", *flags]
    args = parse_arguments(argv)
    with caplog.at_level(logging.INFO):
        static_shape_defaults(args)
    assert args.shapes.pad_images
    assert f"{compiler}: --pad_images is on" in caplog.text

    argv = ["--output_dir", "unused", "--pad_images", "false", *flags]
    args = parse_arguments(argv)
    static_shape_defaults(args)
    assert not args.shapes.pad_images
    assert f"{compiler} with --pad_images false: every new batch image shape compiles a new graph" in caplog.text
    assert f"{compiler} without --pad_objects --num_buckets N" in caplog.text


def test_image_buckets_pass_where_a_graph_compiler_turns_image_padding_on():
    argv = ["--output_dir", "unused", "--model_name_or_path", "detr-tiny", "--torch_compile", "--image_buckets", "2"]
    check_flags(parse_arguments(argv))  # pad_images comes on by default

    argv = ["--output_dir", "unused", "--model_name_or_path", "detr-tiny", "--image_buckets", "2"]
    with pytest.raises(FlagError, match="--image_buckets 2: needs --pad_images"):
        check_flags(parse_arguments(argv))


def test_eager_cpu_keeps_image_padding_off():
    argv = ["--output_dir", "unused", "--device", "cpu"]
    args = parse_arguments(argv)
    static_shape_defaults(args)
    assert not args.shapes.pad_images


def test_unknown_hub_model_offline_fails_at_once_with_what_to_do(data_dir, tmp_path, no_model, monkeypatch, caplog):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    argv = entry_argv(data_dir, tmp_path / "run", "--model_name_or_path", "nobody/no-such-detr")

    assert run_in_process(argv) == 2

    assert "nobody/no-such-detr: HF_HUB_OFFLINE is set and the hub cache has no copy" in caplog.text
    assert "a local model folder" in caplog.text and f"a preset ({', '.join(preset_names())})" in caplog.text
    assert not (tmp_path / "run").exists()


def test_missing_local_model_folder_is_refused(data_dir, tmp_path, no_model, caplog):
    argv = entry_argv(data_dir, tmp_path / "run", "--model_name_or_path", str(tmp_path / "outputs" / "no-run"))
    assert run_in_process(argv) == 2
    assert "no such folder" in caplog.text


def test_a_model_that_fails_to_load_leaves_no_run_args(data_dir, tmp_path, monkeypatch, caplog):
    def unreachable_hub(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr("detr_ft.model.build.build_model", unreachable_hub)

    assert run_in_process(entry_argv(data_dir, tmp_path / "run")) == 2

    assert "couldn't connect" in caplog.text
    assert not (tmp_path / "run" / RUN_ARGUMENTS_FILE).exists()


def test_importing_the_dataset_module_makes_no_network_attempt():
    """albumentations asks PyPI for its latest version at import unless NO_ALBUMENTATIONS_UPDATE is set."""
    probe = (
        "import socket\n"
        "attempts = []\n"
        "def refuse(*args, **kwargs):\n"
        "    attempts.append(args)\n"
        "    raise OSError('network disabled by the test')\n"
        "socket.getaddrinfo = socket.create_connection = socket.socket.connect = refuse\n"
        "import detr_ft.data.dataset\n"
        "print(len(attempts))\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=environment, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "0", result.stderr


def test_a_recipe_file_parses_as_its_flags_and_later_flags_override_it(tmp_path):
    """A recipe is a JSON file of flags given first (booleans as true/false); flags after it override it, and every
    flag of both counts as set by the user."""
    values = {"output_dir": str(tmp_path / "run"), "model_name_or_path": "detr-tiny", "image_size": 64,
              "pad_images": True, "pad_objects": True, "num_buckets": 2, "learning_rate": 3e-4, "device": "cpu",
              "bf16": True, "per_device_train_batch_size": 4, "report_to": ["none"]}
    (tmp_path / "recipe.json").write_text(json.dumps(values))
    flags = [f"--{name}={value[0] if isinstance(value, list) else value}" for name, value in values.items()]

    from_file, from_flags = parse_arguments([str(tmp_path / "recipe.json")]), parse_arguments(flags)

    groups = ("model", "data", "shapes", "device")
    assert [dataclasses.asdict(getattr(from_file, g)) for g in groups] == [
        dataclasses.asdict(getattr(from_flags, g)) for g in groups]
    assert from_file.training.to_dict() == from_flags.training.to_dict()
    assert from_file.shapes.num_buckets == 2 and from_file.device.autocast  # the file's values, --bf16 as autocast
    assert from_file.user_set == from_flags.user_set == set(values)

    overridden = parse_arguments([str(tmp_path / "recipe.json"), "--num_buckets", "3", "--save_steps", "500"])
    assert overridden.shapes.num_buckets == 3 and overridden.data.image_size == 64
    assert overridden.user_set == {*values, "save_steps"}


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "recipes").glob("*.json")))
def test_every_shipped_recipe_parses_and_passes_the_flag_checks(recipe, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # a hub model id is not looked up
    args = parse_arguments([str(REPO / "recipes" / recipe), "--output_dir", "unused"])
    check_flags(args)
    assert args.user_set >= {"model_name_or_path", "pad_objects"}


@pytest.mark.parametrize(("flags", "named"), [
    (["--optim", "adamw_nope"], "argument --optim: invalid choice: 'adamw_nope'"),
    (["--device", "gpu"], "argument --device: invalid choice: 'gpu' (choose from 'auto', 'cpu', 'cuda', 'hpu')"),
    (["--trainer", "optimum"], "argument --trainer: invalid choice: 'optimum'"),
    (["--image_size", "big"], "argument --image_size/--image-size: invalid int value: 'big'"),
    (["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag 1"),
    (["--num_buckets", "3", "--pad_objects", "false"], "--num_buckets 3: has no effect without --pad_objects"),
    (["--skip_nonfinite_batches", "--check_finite_loss", "false"], "--skip_nonfinite_batches: has no effect"),
])
def test_a_bad_flag_exits_2_with_one_line_naming_it_before_any_data_is_read(data_dir, tmp_path, monkeypatch, caplog,
                                                                             flags, named):
    def read_data(*args, **kwargs):
        raise AssertionError("data were read")

    monkeypatch.setattr("detr_ft.data.prepare.prepare_data", read_data)
    argv = [arg for arg in entry_argv(data_dir, tmp_path / "run") if arg != "--pad_objects"]
    argv = [*argv, *(["--pad_objects"] if "--pad_objects" not in flags else []), *flags]

    assert run_in_process(argv) == 2

    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and named in errors[0], errors
    assert not (tmp_path / "run").exists()


def test_device_flags_in_a_recipe_are_checked_first(tmp_path, no_model, caplog):
    (tmp_path / "flags.json").write_text(json.dumps({"output_dir": str(tmp_path / "run"), "device": "tpu"}))

    assert run_in_process([str(tmp_path / "flags.json")]) == 2
    assert "argument --device: invalid choice: 'tpu'" in caplog.text
    assert not (tmp_path / "run").exists()


def test_a_recipe_that_is_not_a_json_object_of_flags_is_refused_by_name(tmp_path, caplog):
    (tmp_path / "broken.json").write_text("{\"pad_images\": tru")
    (tmp_path / "list.json").write_text("[1, 2]")

    assert run_in_process([str(tmp_path / "broken.json")]) == 2
    assert run_in_process([str(tmp_path / "list.json")]) == 2
    assert f"recipe {tmp_path / 'broken.json'}: cannot be read as JSON" in caplog.text
    assert f"recipe {tmp_path / 'list.json'}: a JSON object of flags is expected, found a list" in caplog.text
