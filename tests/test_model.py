"""Model building: the backbone-freezing fix, DETR's from-scratch init (kept by a folder our from-scratch run saved),
backbone learning rate groups, the "what trains" report."""

import pytest
import torch
from torch import nn
from transformers import DetrConfig, DetrForObjectDetection, PretrainedConfig, ResNetConfig

from detr_ft.model.build import build_model, trained_from_scratch
from detr_ft.run_files import save_run_arguments
from detr_ft.train.optimizer import build_optimizer, describe_training, optimizer_param_groups
from patches import apply_patches

ID2LABEL = {0: "a", 1: "b", 2: "c"}


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def saved_resnet_detr(path):
    """A small HF-ResNet DETR saved like facebook/detr-resnet-50@no_timm (4 stages, frozen BatchNorm)."""
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], layer_type="basic",
                            out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
                        d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=16, decoder_ffn_dim=16,
                        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=4, num_labels=91)
    DetrForObjectDetection(config).save_pretrained(path)
    return path


def test_pretrained_model_gets_a_head_for_the_labels(tmp_path):
    model = build_model(str(saved_resnet_detr(tmp_path)), ID2LABEL)
    assert model.config.id2label == ID2LABEL and model.class_labels_classifier.out_features == 4


@pytest.mark.parametrize(("name", "revision", "loaded_revision"), [
    ("facebook/detr-resnet-50", None, "no_timm"),  # the default model: no timm needed
    ("facebook/detr-resnet-101", None, "no_timm"),
    ("facebook/detr-resnet-50", "main", "main"),  # --model_revision stands
    ("someone/detr-finetuned", None, None),  # a hub id without a table entry: the hub's default
])
def test_hub_models_load_at_their_revision(monkeypatch, name, revision, loaded_revision):
    """README: facebook/detr-resnet-50 is loaded at revision no_timm, its config (for its family) and its weights.
    The hub is unreachable here: the config read answers "detr", the weights' load fails as an unreachable hub does."""
    calls = []

    def config_from_hub(name_or_path, **kwargs):
        calls.append(("config", name_or_path, kwargs["revision"]))
        return {"model_type": "detr"}, {}

    def unreachable_hub(name_or_path, **kwargs):
        calls.append(("weights", name_or_path, kwargs["revision"]))
        raise OSError("hub unreachable")

    monkeypatch.setattr(PretrainedConfig, "get_config_dict", config_from_hub)
    monkeypatch.setattr(DetrForObjectDetection, "from_pretrained", unreachable_hub)
    with pytest.raises(OSError, match="hub unreachable"):
        build_model(name, ID2LABEL, revision=revision)
    assert calls == [("config", name, loaded_revision), ("weights", name, loaded_revision)]


def test_a_local_folder_gets_no_hub_revision(tmp_path, monkeypatch):
    folder = str(saved_resnet_detr(tmp_path))
    load = DetrForObjectDetection.from_pretrained
    revisions = []

    def recording_load(name_or_path, **kwargs):
        revisions.append(kwargs["revision"])
        return load(name_or_path, **kwargs)

    monkeypatch.setattr(DetrForObjectDetection, "from_pretrained", recording_load)
    assert build_model(folder, ID2LABEL).config.id2label == ID2LABEL
    assert revisions == [None]


def test_freeze_backbone(tmp_path):
    model = build_model(str(saved_resnet_detr(tmp_path)), ID2LABEL, freeze_backbone=True)
    assert count_trainable(model.model.backbone) == 0 and count_trainable(model) > 0


def test_preset_uses_detr_init_and_trainable_batchnorm():
    torch.manual_seed(0)
    model = build_model("detr-tiny", ID2LABEL)
    backbone = model.model.backbone.model
    assert count_trainable(backbone) == sum(p.numel() for p in backbone.parameters())
    batchnorms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and all(m.weight.requires_grad for m in batchnorms)
    assert not any(type(m).__name__ == "DetrFrozenBatchNorm2d" for m in backbone.modules())
    queries = model.model.query_position_embeddings.weight
    assert 0.7 < queries.std().item() < 1.3  # N(0, 1), not HF's init_std=0.02
    head = model.bbox_predictor.layers[0].weight
    bound = 1 / head.shape[1] ** 0.5  # PyTorch's default U(-bound, bound), std bound / sqrt(3); transformers': 0.02
    assert head.abs().max() <= bound and head.std() > 0.8 * bound / 3**0.5
    weight = model.model.encoder.layers[0].self_attn.q_proj.weight
    bound = (6 / sum(weight.shape)) ** 0.5
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound  # xavier-uniform


def test_backbone_learning_rate_group():
    model = build_model("detr-tiny", ID2LABEL)
    rest, backbone, slow = optimizer_param_groups(model, 1e-4, 1e-5, 1e-4)
    assert backbone["lr"] == 1e-5 and rest["lr"] == 1e-4 and not slow["params"]  # DETR's recipe has no slow part
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("backbone" in names[id(p)] for p in backbone["params"])
    assert len(backbone["params"]) + len(rest["params"]) == sum(1 for p in model.parameters() if p.requires_grad)


def test_a_detr_ft_run_trained_from_scratch_keeps_its_regime(tmp_path):
    """Fine-tuning a folder our own from-scratch run saved: trainable BatchNorm with its learned statistics and the
    whole backbone trained, not the pretrained recipe (frozen BatchNorm, stem and stage 0)."""
    trained = build_model("detr-tiny", ID2LABEL)
    for module in trained.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.fill_(0.5)
    trained.save_pretrained(tmp_path / "run")
    save_run_arguments(tmp_path / "run", {"model_name_or_path": "detr-tiny"})

    model = build_model(str(tmp_path / "run"), ID2LABEL)

    backbone = model.model.backbone.model
    assert count_trainable(backbone) == sum(p.numel() for p in backbone.parameters())
    batchnorms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batchnorms and all(m.weight.requires_grad and (m.running_mean == 0.5).all() for m in batchnorms)
    assert trained_from_scratch(str(tmp_path / "run")) and not trained_from_scratch(str(saved_resnet_detr(tmp_path)))


def what_trains(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, tuple[int, int, str]]:
    """Group -> (trainable, frozen, learning rates) from `describe_training`'s lines."""
    groups = {}
    for line in describe_training(model, optimizer):
        name, counts = line.split(" trainable ")
        tokens = counts.split()  # [trainable, "frozen", frozen, "lr", rates...]
        groups[name.strip()] = (int(tokens[0].replace(",", "")), int(tokens[2].replace(",", "")), " ".join(tokens[4:]))
    return groups


def test_what_trains_shows_the_pretrained_freeze(tmp_path):
    model = build_model(str(saved_resnet_detr(tmp_path)), ID2LABEL)
    apply_patches(model, static_shapes=False, train_backbone_stages=True)  # as the entry does for pretrained models
    groups = what_trains(model, build_optimizer(model, 1e-4, 1e-5, 1e-4))

    for frozen in ("backbone stem", "backbone stage 0", "backbone BatchNorm"):  # BatchNorm: frozen statistics
        trainable, frozen_count, rates = groups[frozen]
        assert trainable == 0 and frozen_count > 0 and rates == "-"
    assert groups["backbone stage 1"][0] > 0 and groups["backbone stage 1"][2] == "1e-05"
    assert groups["transformer"][1] == 0 and groups["heads"][2] == "0.0001"
