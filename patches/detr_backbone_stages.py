"""Train ResNet stages 1-3 of an HF-ResNet DETR backbone, as the original DETR does.

Why: `DetrConvEncoder.__init__` keeps trainable only backbone parameters whose names contain "stage.1", "stage.2" or
"stage.3", but HF's `ResNetBackbone` names them "encoder.stages.1...": no name matches. What a model then trains,
with `facebook/detr-resnet-50@no_timm` or any HF-ResNet DETR (tests/test_backbone_stages.py checks each case):

| stack | built directly (`DetrForObjectDetection(config)`) | `from_pretrained` |
| --- | --- | --- |
| transformers 5.24 | whole backbone frozen | whole backbone trainable, stem and stage 0 too |
| transformers 4.55.4 (Gaudi stack) | whole backbone frozen | whole backbone frozen |

(5.24's `from_pretrained` initialises the model on the meta device and materialises its parameters again, which
drops the flags `__init__` set.) The original DETR, and the timm branch of the same code (layer2-4), trains stages
1-3 and freezes the stem and stage 0: this patch sets exactly that, on either path and stack.
Upstream: not reported as of transformers 5.24. Delete when `DetrConvEncoder` matches "stages.".
"""

from torch import nn

from detr_ft.model.build import backbone_network

TESTED = {"transformers": ("==4.55.*", "==5.24.*")}
TRAINABLE_STAGES = ("stages.1.", "stages.2.", "stages.3.")


def patch_model(model: nn.Module) -> int:
    """Set requires_grad on the backbone of `model` (a DETR with an HF ResNetBackbone) as DETR does; returns 1."""
    train_resnet_stages(backbone_network(model))
    return 1


def train_resnet_stages(backbone: nn.Module) -> None:
    """Set requires_grad on `backbone` (an HF ResNetBackbone) as DETR does."""
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_(any(stage in name for stage in TRAINABLE_STAGES))
