"""The model family registry: a checkpoint is built, loaded, patched, optimised and scored as the family its config
names, read before any weight is; any other model_type, and a two-stage Deformable DETR, are refused in one line
before any data is read. (Entry runs of each family: test_family_runs.py.)"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from entry_runs import entry_argv, run_in_process
from torch import nn
from transformers import CONFIG_MAPPING, AutoModelForObjectDetection, RTDetrConfig, YolosConfig

from detr_ft.config import FlagError, parse_arguments
from detr_ft.evaluation.loop import DetectionRows
from detr_ft.model.build import build_model
from detr_ft.model.criterion import DetrCriterion, TransformersCriterion
from detr_ft.model.families import FAMILIES, UnsupportedModelError, build_criterion, model_family
from detr_ft.model.focal_criterion import FocalCriterion
from detr_ft.model.presets import load_preset
from detr_ft.run_files import save_run_arguments
from detr_ft.train.flag_checks import check_model_family, family_defaults
from detr_ft.train.optimizer import describe_training, run_optimizer
from patches import apply_patches

ID2LABEL = {0: "a", 1: "b", 2: "c"}
PRESETS = {"detr": "detr-tiny", "conditional_detr": "conditional-detr-tiny", "deformable_detr": "deformable-detr-tiny"}


def saved_pretrained(model_type: str, path: Path, **overrides) -> Path:
    """A folder saved as a pretrained checkpoint of the family is: transformers' own model and initialisation (frozen
    BatchNorm), 91 classes, no run_args.json; the preset's sizes."""
    config = CONFIG_MAPPING[model_type](**{**load_preset(PRESETS[model_type]).config, **overrides}, num_labels=91)
    AutoModelForObjectDetection.from_config(config).save_pretrained(path)
    return path


def frozen_batch_norms(model: nn.Module, model_type: str) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, FAMILIES[model_type].frozen_batch_norm)]


def batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("model_type", PRESETS)
def test_a_preset_builds_its_familys_class_with_the_whole_backbone_trainable(model_type):
    model = build_model(PRESETS[model_type], ID2LABEL)

    assert type(model) is FAMILIES[model_type].model_class and model.config.id2label == ID2LABEL
    backbone = model.model.backbone
    assert batch_norms(backbone) and not frozen_batch_norms(model, model_type)
    assert all(p.requires_grad for p in backbone.parameters())


@pytest.mark.parametrize("model_type", PRESETS)
def test_a_pretrained_folder_loads_as_its_own_family_with_the_pretrained_backbone_recipe(model_type, tmp_path):
    """Never into another family's class (DetrForObjectDetection re-initialising what does not fit); frozen BatchNorm
    and, once patched as the entry patches a pretrained model, the stem and stage 0 frozen."""
    model = build_model(str(saved_pretrained(model_type, tmp_path)), ID2LABEL)
    apply_patches(model, static_shapes=False, train_backbone_stages=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    trainable = {line.split(" trainable ")[0].strip(): int(line.split(" trainable ")[1].split()[0].replace(",", ""))
                 for line in describe_training(model, optimizer)}

    assert type(model) is FAMILIES[model_type].model_class and model.config.id2label == ID2LABEL
    assert frozen_batch_norms(model, model_type) and not batch_norms(model)
    assert trainable["backbone stem"] == trainable["backbone stage 0"] == 0 and trainable["backbone stage 1"] > 0


@pytest.mark.parametrize("model_type", PRESETS)
def test_a_folder_our_from_scratch_run_saved_keeps_training_its_batch_norm(model_type, tmp_path):
    trained = build_model(PRESETS[model_type], ID2LABEL)
    for module in batch_norms(trained):
        module.running_mean.fill_(0.5)
    trained.save_pretrained(tmp_path)
    save_run_arguments(tmp_path, {"model_name_or_path": PRESETS[model_type]})

    model = build_model(str(tmp_path), ID2LABEL)

    assert not frozen_batch_norms(model, model_type)
    assert all(m.weight.requires_grad and (m.running_mean == 0.5).all() for m in batch_norms(model))


def write_config(path: Path, config: dict) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("kind", ["yolos", "rt_detr", "bert", "no model_type"])
def test_other_model_types_are_refused_naming_the_supported_families(kind, tmp_path):
    folder = tmp_path / "model"
    if kind == "yolos":
        YolosConfig().save_pretrained(folder)
    elif kind == "rt_detr":
        RTDetrConfig().save_pretrained(folder)
    else:
        write_config(folder, {"model_type": "bert"} if kind == "bert" else {"architectures": ["Model"]})

    with pytest.raises(UnsupportedModelError) as refusal:
        model_family(str(folder))
    message = str(refusal.value)
    assert "\n" not in message and "Conditional DETR (conditional_detr)" in message
    assert (f"model_type '{kind}'" if kind != "no model_type" else "no model_type") in message


def test_a_two_stage_deformable_detr_is_refused_saying_why(tmp_path):
    folder = saved_pretrained("deformable_detr", tmp_path / "two-stage", with_box_refine=True, two_stage=True,
                              two_stage_num_proposals=16)
    with pytest.raises(UnsupportedModelError, match="two-stage Deformable DETR .* never train"):
        model_family(str(folder))
    assert model_family(str(saved_pretrained("deformable_detr", tmp_path / "refine", with_box_refine=True))) \
        is FAMILIES["deformable_detr"]


def test_the_entry_refuses_a_yolos_folder_in_one_line_before_reading_data(tmp_path, monkeypatch, caplog):
    def read_data(*args, **kwargs):
        raise AssertionError("data were read")

    monkeypatch.setattr("detr_ft.data.prepare.prepare_data", read_data)
    YolosConfig().save_pretrained(tmp_path / "yolos")
    argv = entry_argv(tmp_path / "no-data", tmp_path / "run", "--model_name_or_path", str(tmp_path / "yolos"))

    assert run_in_process(argv) == 2

    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert f"--model_name_or_path {tmp_path / 'yolos'}: model_type 'yolos'" in errors[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model_type", PRESETS)
def test_each_family_gets_its_label_free_forward_and_sync_patches(model_type):
    expected = {"detr": ["detr_label_free_forward", "detr_encoder_sync", "detr_mask_sync"],
                "conditional_detr": ["conditional_detr_label_free_forward", "detr_encoder_sync", "detr_mask_sync"],
                "deformable_detr": ["deformable_detr_label_free_forward", "deformable_detr_encoder_sync"]}
    model = build_model(PRESETS[model_type], ID2LABEL)

    assert apply_patches(model, static_shapes=True) == [*expected[model_type], "detr_loss_num_boxes"]
    outputs = model(pixel_values=torch.rand(1, 3, 32, 32), pixel_mask=torch.ones(1, 32, 32, dtype=torch.long))
    assert outputs.layer_logits.shape[0] == model.config.decoder_layers  # every layer, without labels


@pytest.mark.parametrize(("model_type", "padded_criterion"), [
    ("detr", DetrCriterion), ("conditional_detr", FocalCriterion), ("deformable_detr", FocalCriterion)])
def test_each_family_gets_its_criterion_for_padded_targets_and_transformers_loss_for_unpadded_ones(
        model_type, padded_criterion):
    model = build_model(PRESETS[model_type], ID2LABEL)

    assert type(build_criterion(model, padded_targets=True)) is padded_criterion
    assert type(build_criterion(model, padded_targets=False)) is TransformersCriterion


@pytest.mark.parametrize(("model_type", "rows_per_image"), [
    ("detr", 16), ("conditional_detr", 16 * 3), ("deformable_detr", 16 * 3)])  # Q queries; the top min(100, Q * C)
def test_evaluation_rows_come_from_the_familys_post_processing(model_type, rows_per_image):
    model = build_model(PRESETS[model_type], ID2LABEL)
    logits = torch.randn(2, 16, 3 + (model_type == "detr"))  # (B, Q, C'), DETR with its no-object class
    rows = DetectionRows(model)((logits, torch.rand(2, 16, 4)), torch.tensor([5, 6]))  # (B, K, 7)

    assert rows.shape == (2, rows_per_image, 7)
    assert rows[:, :, 6].tolist() == [[5] * rows_per_image, [6] * rows_per_image]
    expected_top = logits.sigmoid().amax((1, 2)) if model_type != "detr" else logits.softmax(-1)[..., :-1].amax((1, 2))
    torch.testing.assert_close(rows[:, :, 0].amax(1), expected_top)


def run_arguments(*flags: str):
    return parse_arguments(["--output_dir", "unused", "--report_to", "none", *flags])


def test_deformable_detr_trains_its_offsets_and_reference_points_at_a_tenth_of_the_learning_rate():
    model = build_model("deformable-detr-tiny", ID2LABEL)
    args = run_arguments("--model_name_or_path", "deformable-detr-tiny", "--learning_rate", "1e-3")
    optimizer = run_optimizer(model, args.model, args.training, from_scratch=True)
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    slow = [n for n in names if "sampling_offsets" in n or "reference_points" in n]

    assert slow and all(rate[id(names[n])] == pytest.approx(1e-4) for n in slow)
    assert rate[id(names["class_embed.0.weight"])] == rate[id(names["model.level_embed"])] == 1e-3
    lines = describe_training(model, optimizer, FAMILIES["deformable_detr"].recipe.slow_parameters)
    groups = [line.split(" trainable ")[0].strip() for line in lines]
    assert {"sampling offsets", "reference points", "heads", "transformer"} <= set(groups)


@pytest.mark.parametrize("model_type", ["detr", "conditional_detr"])
def test_the_other_families_train_every_non_backbone_parameter_at_the_learning_rate(model_type):
    model = build_model(PRESETS[model_type], ID2LABEL)
    args = run_arguments("--model_name_or_path", PRESETS[model_type], "--learning_rate", "1e-3")
    optimizer = run_optimizer(model, args.model, args.training, from_scratch=True)

    assert {group["lr"] for group in optimizer.param_groups} == {1e-3}


@pytest.mark.parametrize(("model_type", "flags", "learning_rate"), [
    ("detr", (), 1e-4), ("conditional_detr", (), 1e-4), ("deformable_detr", (), 2e-4),
    ("deformable_detr", ("--learning_rate", "1e-4"), 1e-4),  # set by the user, even at the project's default
])
def test_a_family_default_learning_rate_never_replaces_the_users(model_type, flags, learning_rate):
    args = run_arguments("--model_name_or_path", PRESETS[model_type], *flags)
    family_defaults(args, check_model_family(args))
    assert args.training.learning_rate == learning_rate


@pytest.mark.parametrize("model_type", ["conditional_detr", "deformable_detr"])
def test_gaudi_trainer_refuses_these_families_stock_loss_and_detrs_position_embedding_flag(model_type):
    """optimum-habana replaces DETR's loss (which these families' losses inherit) untested for them; it moves only
    DETR's position embedding."""
    preset = ("--model_name_or_path", PRESETS[model_type])
    with pytest.raises(FlagError, match=r"^--num_buckets 0 \(or no --pad_objects\) with optimum-habana's Gaudi"):
        check_model_family(run_arguments(*preset, "--trainer", "gaudi"))
    with pytest.raises(FlagError, match="^--cpu_position_embedding: has no effect on"):
        check_model_family(run_arguments(*preset, "--pad_objects", "--cpu_position_embedding"))
    check_model_family(run_arguments(*preset, "--trainer", "gaudi", "--pad_objects"))  # our criterion: fine
    check_model_family(run_arguments("--model_name_or_path", "detr-tiny", "--trainer", "gaudi"))


@pytest.mark.parametrize("auxiliary_loss", [True, False])
@pytest.mark.parametrize("model_type", PRESETS)
def test_unpadded_targets_get_exactly_the_stock_forwards_loss(model_type, auxiliary_loss):
    """`--num_buckets 0`: transformers' own loss, called on the label-free outputs, is the loss the stock forward
    computes with labels (the same weights, the same batch)."""
    torch.manual_seed(0)
    model = build_model(PRESETS[model_type], ID2LABEL)
    model.config.auxiliary_loss = auxiliary_loss
    batch = {"pixel_values": torch.rand(2, 3, 32, 32), "pixel_mask": torch.ones(2, 32, 32, dtype=torch.long)}
    labels = [
        {"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]])},
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])},
    ]
    stock = type(model).forward(model, **batch, labels=labels)
    apply_patches(model, static_shapes=False)

    loss, loss_dict = build_criterion(model, padded_targets=False)(model(**batch), labels)

    assert torch.equal(loss, stock.loss) and loss_dict.keys() == stock.loss_dict.keys()
    assert any(key.endswith("_0") for key in loss_dict) == auxiliary_loss
