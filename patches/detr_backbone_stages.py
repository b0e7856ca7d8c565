"""Train ResNet stages 1-3 of an HF-ResNet DETR backbone, as the original DETR does.

Why: `DetrConvEncoder.__init__` (transformers 4.55.4 and 5.24) keeps trainable only backbone parameters whose
names contain "stage.1", "stage.2" or "stage.3", but HF's `ResNetBackbone` names them "encoder.stages.1...".
No name matches, so with `facebook/detr-resnet-50@no_timm` the whole backbone is silently frozen. The
original DETR (and the timm branch of the same code: layer2-4) trains stages 1-3 and freezes the stem and
stage 0.
Upstream: not reported as of transformers 5.24. Delete when `DetrConvEncoder` matches "stages.".
"""

from torch import nn

TRAINABLE_STAGES = ("stages.1.", "stages.2.", "stages.3.")


def train_resnet_stages(backbone: nn.Module) -> None:
    """Set requires_grad on `backbone` (an HF ResNetBackbone) as DETR does."""
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_(any(stage in name for stage in TRAINABLE_STAGES))
