"""The one mapping between a dataset's COCO category ids, the model's contiguous labels and the class names.

Training numbers the train split's categories 0..C-1 in category-id order (`from_categories`); the trained model
keeps the names in its config's id2label. Whatever is scored (training's eval split, eval_checkpoints, inference
on a split) is matched to the model's classes by name (`for_model`), so a split that numbers its categories
differently is still scored right.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


def missing_names(wanted: Iterable[str], available: Iterable[str]) -> list[str]:
    """The names of `wanted` not in `available`, each in words; one differing only in case is named as such
    (`Mask` and `mask` are two classes to the model)."""
    available = set(available)
    by_case = {name.casefold(): name for name in available}
    return [f"{name!r} (differs only in case from {by_case[name.casefold()]!r})" if name.casefold() in by_case
            else repr(name) for name in sorted(set(wanted) - available)]


@dataclass(frozen=True)
class ClassMapping:
    """Label i is category `category_ids[i]`, called `names[i]`."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_categories(cls, categories: Sequence[dict]) -> ClassMapping:
        """Labels for a COCO `categories` list: 0..C-1 in category-id order."""
        ordered = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(c["id"] for c in ordered), tuple(c["name"] for c in ordered))

    @classmethod
    def for_model(cls, id2label: Mapping[int, str], categories: Sequence[dict]) -> ClassMapping:
        """A trained model's labels matched by name to a split's `categories` (which may number them otherwise)."""
        category_of = {category["name"]: category["id"] for category in categories}
        names = tuple(id2label[label] for label in range(len(id2label)))
        missing = missing_names(names, category_of)
        if missing:
            raise ValueError(f"model classes {', '.join(missing)} are not among the dataset's categories "
                             f"{sorted(category_of)}")
        return cls(tuple(category_of[name] for name in names), names)

    @classmethod
    def identity(cls, id2label: Mapping[int, str]) -> ClassMapping:
        """A model's labels used as category ids: for images that come without a COCO json."""
        return cls(tuple(range(len(id2label))), tuple(id2label[label] for label in range(len(id2label))))

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: label for label, name in enumerate(self.names)}

    @property
    def category_to_label(self) -> dict[int, int]:
        return {category: label for label, category in enumerate(self.category_ids)}

    @property
    def category_names(self) -> dict[int, str]:
        """COCO category id -> class name."""
        return dict(zip(self.category_ids, self.names, strict=True))
