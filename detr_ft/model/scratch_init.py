"""Each family's own initialisation of a model trained from scratch (the presets).

DETR (facebookresearch/detr models/transformer.py, detr.py): xavier-uniform transformer weights, N(0, 1) query
embeddings, and PyTorch's default initialisation for the heads and the input projection (transformers' normal(0.02)
shrinks a 3-layer box MLP's signal and gradients about 4x per layer).

transformers' `_init_weights` gives Conditional DETR and Deformable DETR BERT's normal(0, 0.02) Linear and
Embedding weights and zero biases, except Deformable DETR's deformable attention, reference-point and level-embedding
initialisation, which it takes from the reference code. The reference code (Atten4Vis/ConditionalDETR,
fundamentalvision/Deformable-DETR) further starts from:

- xavier-uniform weights (every parameter of more than one dimension) in the transformer: encoder and decoder
  (with Conditional DETR's query-scale and reference-point MLPs), and Deformable DETR's reference-point,
  two-stage proposal and query-position projections; deformable attention and the level embedding keep the
  initialisation transformers already gives them (the reference code's own);
- N(0, 1) query embeddings (nn.Embedding's default);
- PyTorch's default Linear / Conv2d initialisation for the heads and the input projection (Deformable DETR:
  xavier-uniform input-projection convolutions with zero bias);
- a class-head bias of -log((1 - 0.01) / 0.01), so every class starts at probability 0.01, the focal loss prior
  (RetinaNet): otherwise the many unmatched queries dominate the first steps' focal loss;
- a zero last box-head layer, so the first boxes sit on the reference points; Deformable DETR: its (w, h) bias at
  -2 (sigmoid 0.12), in the first decoder layer's head with box refinement, and 0 with two-stage proposals, whose
  sizes come from the proposals.

Biases the reference code leaves at PyTorch's default stay zero as transformers sets them (as DETR's transformer
biases do).
The backbone is the builder's: trainable BatchNorm, all stages trained.
"""

import math

import torch
from torch import nn
from transformers import ConditionalDetrForObjectDetection, DeformableDetrForObjectDetection, DetrForObjectDetection
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrMultiscaleDeformableAttention

PRIOR_PROBABILITY = 0.01
CLASS_BIAS = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)


@torch.no_grad()
def init_detr(model: DetrForObjectDetection) -> None:
    """DETR's initialisation (facebookresearch/detr models/transformer.py, detr.py)."""
    xavier_uniform_matrices([model.model.encoder, model.model.decoder])
    nn.init.normal_(model.model.query_position_embeddings.weight)
    for layer in (model.class_labels_classifier, *model.bbox_predictor.layers, model.model.input_projection):
        layer.reset_parameters()


@torch.no_grad()
def init_conditional_detr(model: ConditionalDetrForObjectDetection) -> None:
    """Conditional DETR's initialisation (Atten4Vis/ConditionalDETR models/conditional_detr.py, transformer.py)."""
    xavier_uniform_matrices([model.model.encoder, model.model.decoder])
    nn.init.normal_(model.model.query_position_embeddings.weight)
    model.model.input_projection.reset_parameters()
    init_class_head(model.class_labels_classifier)
    init_box_head(model.bbox_predictor.layers)


@torch.no_grad()
def init_deformable_detr(model: DeformableDetrForObjectDetection) -> None:
    """Deformable DETR's initialisation (fundamentalvision/Deformable-DETR models/deformable_detr.py,
    deformable_transformer.py)."""
    base = model.model
    proposal_parts = ["reference_points", "enc_output", "pos_trans"]
    xavier_uniform_matrices([*base.encoder.layers, *base.decoder.layers,
                             *(getattr(base, part) for part in proposal_parts if hasattr(base, part))],
                            keep=DeformableDetrMultiscaleDeformableAttention)
    if not model.config.two_stage:
        nn.init.normal_(base.query_position_embeddings.weight)
    for projection in base.input_proj:
        nn.init.xavier_uniform_(projection[0].weight, gain=1)
        nn.init.zeros_(projection[0].bias)
    for class_head in model.class_embed:
        init_class_head(class_head)
    for box_head in model.bbox_embed:
        init_box_head(box_head.layers)
    # transformers ties the heads of all layers to layer 0's without box refine, and each layer's to the decoder's
    # copy with it, so layer 0's bias is the reference code's shared or first head's.
    if not model.config.two_stage:
        nn.init.constant_(model.bbox_embed[0].layers[-1].bias[2:], -2.0)


def xavier_uniform_matrices(modules: list[nn.Module], keep: type[nn.Module] | None = None) -> None:
    """xavier-uniform every parameter of more than one dimension in `modules`, but those inside `keep` modules."""
    kept = {id(p) for module in modules for sub in module.modules() if keep and isinstance(sub, keep)
            for p in sub.parameters()}
    for module in modules:
        for parameter in module.parameters():
            if parameter.dim() > 1 and id(parameter) not in kept:
                nn.init.xavier_uniform_(parameter)


def init_class_head(layer: nn.Linear) -> None:
    layer.reset_parameters()
    nn.init.constant_(layer.bias, CLASS_BIAS)


def init_box_head(layers: nn.ModuleList) -> None:
    for layer in layers:
        layer.reset_parameters()
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
