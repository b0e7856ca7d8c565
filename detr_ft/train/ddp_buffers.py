"""Under DDP, every process evaluates with rank 0's buffers: those of the checkpoint saved at the same step.

DDP copies rank 0's buffers (BatchNorm running statistics of a trainable backbone, as presets train) to every process
at the start of each training forward, and that forward then updates each process's copy with its own batch. The
evaluation loop runs the unwrapped model, so without this each process would score its share of the images with its
own statistics, and the mAP would be neither that of the saved checkpoint (rank 0's weights) nor of any one model.
Frozen BatchNorm (pretrained models) never changes its buffers; the broadcast is then a no-op.
"""

from __future__ import annotations

import torch.distributed as dist
from transformers import TrainerCallback


class BroadcastBuffersBeforeEvaluation(TrainerCallback):
    """At the end of a step that will evaluate, overwrite every process's buffers with rank 0's."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_evaluate and dist.is_available() and dist.is_initialized():
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
