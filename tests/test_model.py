"""Model building: backbone freezing, DETR's from-scratch init, backbone learning rate groups (the backbone-stage
patch: test_backbone_stages.py)."""

import torch
from torch import nn
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

from detr_ft.model.build import build_model
from detr_ft.train.optimizer import optimizer_param_groups

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
    rest, backbone = optimizer_param_groups(model, 1e-4, 1e-5, 1e-4)
    assert backbone["lr"] == 1e-5 and rest["lr"] == 1e-4
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("backbone" in names[id(p)] for p in backbone["params"])
    assert len(backbone["params"]) + len(rest["params"]) == sum(1 for p in model.parameters() if p.requires_grad)
