"""Presets: small DETR-family configurations trained from scratch (CPU demo, tests), one json file each in presets/.

    {"description": "...", "image_size": 128, "model_type": "detr", "config": {config fields of that model type}}

`image_size` is the default --image_size for the preset, not a model setting; `model_type` names the family
(transformers' model type: "detr", "conditional_detr", "deformable_detr").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    image_size: int
    model_type: str
    config: dict


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def is_preset(name: str) -> bool:
    return (PRESETS_DIR / f"{name}.json").exists()


def load_preset(name: str) -> Preset:
    return Preset(name=name, **json.loads((PRESETS_DIR / f"{name}.json").read_text()))


def default_image_size(name_or_path: str) -> int:
    """The preset's own image size; 800 (DETR's shortest edge) for pretrained models."""
    return load_preset(name_or_path).image_size if is_preset(name_or_path) else 800
