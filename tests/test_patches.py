"""`patches.apply_patches`: the one place patches are applied; loud outside the versions a patch was tested with and
when a patch reaches another number of modules than the model has."""

import logging

import pytest
from packaging.version import Version
from test_sync_audit import ENCODER_LAYERS

import patches
from patches import PatchMismatchError, UntestedVersionWarning, apply_patches


def test_applies_the_static_shape_patches_and_logs_them(caplog, stock_detr):
    with caplog.at_level(logging.INFO, logger="patches"):
        applied = apply_patches(stock_detr(), static_shapes=True)

    assert applied == ["detr_encoder_sync", "detr_mask_sync"]
    assert "model patches applied: detr_encoder_sync, detr_mask_sync" in caplog.text


def test_stock_path_gets_no_forward_patch(stock_detr):
    assert apply_patches(stock_detr(), static_shapes=False) == []


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
