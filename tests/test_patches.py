"""`patches.apply_patches`: the one place patches are applied; loud outside the versions a patch was tested with and
when a patch reaches another number of modules than the model has."""

import inspect
import logging

import accelerate.utils
import pytest
from packaging.version import Version
from test_sync_audit import ENCODER_LAYERS

import patches
from patches import PatchMismatchError, UntestedVersionWarning, apply_patches, detr_loss_num_boxes


def test_applies_the_static_shape_patches_and_logs_them(caplog, stock_detr):
    with caplog.at_level(logging.INFO, logger="patches"):
        applied = apply_patches(stock_detr(), static_shapes=True)

    assert applied == ["detr_label_free_forward", "detr_encoder_sync", "detr_mask_sync", "detr_loss_num_boxes"]
    assert ("model patches applied: detr_label_free_forward, detr_encoder_sync, detr_mask_sync, detr_loss_num_boxes"
            in caplog.text)


def test_stock_path_gets_no_forward_patch(stock_detr):
    """The bench's stock path: the model as transformers ships it, the loss inside its forward."""
    assert apply_patches(stock_detr(), static_shapes=False, label_free_forward=False) == ["detr_loss_num_boxes"]


def test_loss_count_patch_makes_the_stock_loss_sum_the_counts_it_divides_by_world_size(monkeypatch, stock_detr):
    from transformers.loss import loss_for_object_detection

    monkeypatch.setattr(loss_for_object_detection, "reduce", accelerate.utils.reduce)  # as upstream ships it
    apply_patches(stock_detr(), static_shapes=False)

    assert loss_for_object_detection.reduce is detr_loss_num_boxes.reduce_sum


def test_loss_count_patch_refuses_once_upstream_no_longer_divides_twice(monkeypatch, stock_detr):
    from transformers.loss import loss_for_object_detection

    fixed_upstream = inspect.getsource(loss_for_object_detection).replace("num_boxes / world_size", "num_boxes")
    monkeypatch.setattr(loss_for_object_detection, "reduce", accelerate.utils.reduce)
    monkeypatch.setattr(detr_loss_num_boxes.inspect, "getsource", lambda module: fixed_upstream)

    with pytest.raises(PatchMismatchError, match="detr_loss_num_boxes patched 0 modules, expected 1"):
        apply_patches(stock_detr(), static_shapes=False)
    assert loss_for_object_detection.reduce is accelerate.utils.reduce


def test_warns_naming_the_patch_outside_its_tested_versions(monkeypatch, stock_detr):
    real = patches.installed_version
    monkeypatch.setattr(patches, "installed_version",
                        lambda package: Version("5.99.0") if package == "transformers" else real(package))

    with pytest.warns(UntestedVersionWarning, match=r"patches\.detr_encoder_sync was tested with transformers ==5\.24"):
        apply_patches(stock_detr(), static_shapes=True)


def test_no_warning_inside_the_tested_versions(recwarn, stock_detr):
    apply_patches(stock_detr(), static_shapes=True)

    assert not [w for w in recwarn if issubclass(w.category, UntestedVersionWarning)]


def test_refuses_when_a_patch_misses_modules(stock_detr):
    model = stock_detr()
    model.config.encoder_layers = ENCODER_LAYERS + 1  # as if upstream renamed or restructured a layer

    with pytest.raises(PatchMismatchError, match=f"detr_encoder_sync patched {ENCODER_LAYERS} modules, expected"):
        apply_patches(model, static_shapes=True)
