"""`--use_hpu_graphs_for_training` caches the model's forward (optimum-habana's GaudiTrainer applies HPU graphs'
ModuleCacher to the model, tests/habana_stub stands in for it on CPU). With the criterion outside the forward
(detr_ft/train/trainer.py) what it caches is a forward without labels and without a host read: no matcher, no
loss. Whether Gaudi then captures and replays it is for a Gaudi host to show; this checks what a CPU can.

Run in the Gaudi venv: `.venv-gaudi/bin/python -m pytest tests/gaudi -q`; skipped where optimum-habana is absent.
"""

import pytest
import torch

pytest.importorskip("optimum.habana", reason="optimum-habana lives in .venv-gaudi (see requirements-gaudi.txt)")

import habana_frameworks.torch.hpu  # noqa: E402, F401  (GaudiTrainer reaches ModuleCacher as ht.hpu.ModuleCacher)
from optimum.habana import GaudiTrainingArguments  # noqa: E402
from test_sync_patches_v4 import make_batch, tiny_detr  # noqa: E402

from detr_ft.config import DeviceArguments  # noqa: E402
from detr_ft.model.criterion import DetrCriterion  # noqa: E402
from detr_ft.train.sync_audit import HostSyncCounter  # noqa: E402
from detr_ft.train.trainer import build_trainer  # noqa: E402
from patches import apply_patches  # noqa: E402


def test_hpu_graphs_cache_a_forward_without_labels_or_host_reads(tmp_path):
    model = tiny_detr()
    apply_patches(model, static_shapes=True)
    batch = make_batch(padded=True)
    args = GaudiTrainingArguments(output_dir=str(tmp_path), use_habana=False, use_lazy_mode=False, use_cpu=True,
                                  max_steps=1, per_device_train_batch_size=2, report_to="none",
                                  remove_unused_columns=False)
    args.use_hpu_graphs_for_training = True  # refused without use_habana at construction; off Gaudi only for this
    trainer = build_trainer(DeviceArguments(trainer="gaudi"), args, model=model, train_dataset=[batch],
                            data_collator=lambda samples: samples[0], criterion=DetrCriterion(model.config))
    trainer.train()

    calls = model.forward.calls  # the stand-in ModuleCacher's record of what the trainer ran through the cache
    assert calls and all("labels" not in keywords for keywords in calls), calls
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    with HostSyncCounter() as counter:
        outputs = model(**inputs)
    assert counter.count == 0, counter.by_op
    assert "loss" not in outputs and outputs.layer_logits.shape[0] == model.config.decoder_layers
    assert torch.isfinite(outputs.logits).all()
