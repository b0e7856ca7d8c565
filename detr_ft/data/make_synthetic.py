"""Command: write a synthetic COCO folder (see `detr_ft.data.synthetic`).

    python -m detr_ft.data.make_synthetic --output_dir data/synthetic [--num_train 4096 --num_validation 256 ...]
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from transformers import HfArgumentParser

from detr_ft.data.synthetic import write_synthetic_coco


@dataclass
class SyntheticArguments:
    output_dir: str = field(metadata={"help": "Folder to write images/ and annotations/<split>.json into."})
    num_train: int = field(default=4096, metadata={"help": "Images in train.json."})
    num_validation: int = field(default=256, metadata={"help": "Images in validation.json."})
    num_test: int = field(default=0, metadata={"help": "Images in test.json (no file when 0)."})
    image_size: int = field(default=64, metadata={"help": "Long side of the images in pixels."})
    min_objects: int = field(default=1, metadata={"help": "Fewest shapes per image."})
    max_objects: int = field(default=4, metadata={"help": "Most shapes per image."})
    seed: int = field(default=0, metadata={"help": "Same seed, same bytes."})
    aspect_ratios: list[float] = field(
        default_factory=lambda: [1.0],
        metadata={"help": "Image shapes as width / height, taken in turn (e.g. 1 2 0.5: square, 2:1, 1:2)."},
    )


def main() -> None:
    (args,) = HfArgumentParser(SyntheticArguments).parse_args_into_dataclasses()
    start = time.perf_counter()
    output_dir = write_synthetic_coco(**asdict(args))
    print(
        f"synthetic COCO: {args.num_train} train, {args.num_validation} validation, {args.num_test} test images of "
        f"{args.image_size}px -> {output_dir} ({time.perf_counter() - start:.1f}s)"
    )


if __name__ == "__main__":
    main()
