"""Loading never runs pickled code: model weights only from safetensors, every torch.load with weights_only=True, no
trust_remote_code; and transformers' own resume path refuses a pickle that would run code."""

import ast
import builtins
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

REPO = Path(__file__).resolve().parent.parent
SOURCES = sorted([*REPO.glob("*.py"), *(REPO / "detr_ft").rglob("*.py"), *(REPO / "patches").rglob("*.py")])


def calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node


def keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def dotted_name(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def unsafe_calls(path: Path) -> list[str]:
    found = []
    for call in calls(path):
        name = dotted_name(call.func)
        where = f"{path.name}:{call.lineno} {name}"
        if name == "torch.load" and not keyword_is(call, "weights_only", True):
            found.append(f"{where} without weights_only=True")
        if name in ("pickle.load", "pickle.loads", "torch.jit.load"):
            found.append(where)
        remote_code = any(k.arg == "trust_remote_code" for k in call.keywords)
        if remote_code and not keyword_is(call, "trust_remote_code", False):
            found.append(f"{where} with trust_remote_code")
        if name.endswith("ForObjectDetection.from_pretrained") and not keyword_is(call, "use_safetensors", True):
            found.append(f"{where} without use_safetensors=True")
    return found


def test_sources_load_nothing_unsafely():
    assert len(SOURCES) > 10 and REPO / "detr_ft" / "model" / "build.py" in SOURCES
    assert [finding for path in SOURCES for finding in unsafe_calls(path)] == []


def test_the_scanner_flags_unsafe_loads(tmp_path):
    """The check above can fail: each unsafe pattern is reported."""
    sample = tmp_path / "unsafe.py"
    sample.write_text("import pickle, torch\nfrom transformers import DetrForObjectDetection\n"
                      "torch.load('a.pt')\ntorch.load('b.pt', weights_only=False)\npickle.loads(b'')\n"
                      "DetrForObjectDetection.from_pretrained('m', trust_remote_code=True)\n")
    assert len(unsafe_calls(sample)) == 5


class Payload:
    def __reduce__(self):
        return builtins.exec, ("import pathlib; pathlib.Path(__import__('os').environ['PWNED']).write_text('ran')",)


def test_resume_refuses_a_pickled_optimizer_that_runs_code(tmp_path, monkeypatch):
    """transformers' Trainer loads optimizer.pt / scheduler.pt with weights_only=True: the payload never runs."""
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED", str(marker))
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    torch.save({"state": {}, "param_groups": [], "payload": Payload()}, checkpoint / "optimizer.pt")
    torch.save({"payload": Payload()}, checkpoint / "scheduler.pt")
    model = nn.Linear(2, 1)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1)
    trainer = Trainer(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    with pytest.raises(Exception, match="Weights only load failed"):
        trainer._load_optimizer_and_scheduler(str(checkpoint))
    assert not marker.exists()
