"""Images whose json width x height is neither the stored nor the EXIF-displayed size: repaired by what their boxes
say, one image at a time, or left out with their annotations.

The boxes are the evidence: their far edges (max x + w, max y + h) either fit a size or reach past it. The image's
sizes are the displayed one (EXIF orientation applied) and, for a quarter-turn EXIF orientation, the stored one.

    boxes fit the image (either size)        the json size was wrong: set to that image size, boxes kept; a json
                                             whose width and height are the image's swapped is the same slip
    else boxes fit the json size, and it     the image was resized after annotation: boxes scaled per axis by
    has the image's aspect ratio             image / json size, json size set to the image's
    else boxes fit the json size, which is   drawn on the image turned by a quarter turn, but a turn either way maps
    the image's swapped                      one frame onto the other: the boxes cannot say which; left out
    else                                     left out: no size the boxes could have been drawn on is known

When the boxes fit both the json size and the image (all of them lie inside the smaller size), they decide nothing
and the image is trusted, as the first rule says; such repairs are counted apart in the log and marked in the audit
(an image without boxes just takes the image's size). `validation` logs each repair kind once; the `SizeRepair`
records ride on the split, and the training entry writes them to the run folder (`write_size_repairs`) for the user
to audit. Same aspect ratio: each side of a resize is rounded to whole pixels, so |w_a h_b - h_a w_b| stays below
w + h of the larger size.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from detr_ft.run_files import write_json_atomic

logger = logging.getLogger(__name__)

SIZE_REPAIRS_FILE = "size_repairs.json"
FIT_SLACK = 0.01  # a box may reach this fraction of the side (at least 1 px) past an edge and still fit: clipped
JSON_SIZE_SET = "json_size_set_to_image"
SIDES_SWAPPED = "json_sides_swapped_back"
BOXES_SCALED = "boxes_scaled_to_image"
LEFT_OUT = "left_out"
KIND_NAMES = {  # how the log and `make cppe5` name each repair
    JSON_SIZE_SET: "json width x height set to the image's",
    SIDES_SWAPPED: "json width and height swapped back",
    BOXES_SCALED: "boxes scaled to the image",
    LEFT_OUT: "left out with their annotations",
}
KIND_REASONS = {
    JSON_SIZE_SET: "the boxes fit the image",
    SIDES_SWAPPED: "the boxes fit the image",
    BOXES_SCALED: "resized after annotation: the boxes fit the json size, of the image's aspect ratio",
    LEFT_OUT: "no size the boxes fit maps onto the image",
}
BOTH_FIT = "the boxes fit both sizes, so they do not decide: the image is trusted"

Size = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class SizeMismatch:
    """Image `index` of coco["images"], whose json size is neither of its decoded sizes."""

    index: int
    stored: Size
    displayed: Size


@dataclass(frozen=True)
class SizeRepair:
    """What was done to one image; `new_size` is None when it was left out. One row of size_repairs.json."""

    split: str
    annotation_file: str
    image_id: int
    file_name: str
    repair: str  # a key of KIND_NAMES
    json_size: Size
    image_size: Size  # displayed (EXIF orientation applied)
    new_size: Size | None
    evidence: str


def box_extent(annotations: Iterable[dict]) -> tuple[float, float] | None:
    """(max x + w, max y + h) over the boxes that will be kept (finite, w and h > 0); None without any."""
    edges = [(x + w, y + h) for x, y, w, h in (ann["bbox"] for ann in annotations)
             if all(math.isfinite(v) for v in (x, y, w, h)) and w > 0 and h > 0]
    if not edges:
        return None
    return max(right for right, _ in edges), max(bottom for _, bottom in edges)


def fits(extent: tuple[float, float], size: Size) -> bool:
    return all(edge <= side + max(1.0, FIT_SLACK * side) for edge, side in zip(extent, size, strict=True))


def same_aspect(a: Size, b: Size) -> bool:
    larger = max(a, b, key=lambda size: size[0] * size[1])
    return abs(a[0] * b[1] - a[1] * b[0]) < sum(larger)


def decide(json_size: Size, mismatch: SizeMismatch, extent: tuple[float, float] | None) -> tuple[str, Size | None, str]:
    """(repair kind, new json size or None, evidence) for one image."""
    if extent is None:
        return JSON_SIZE_SET, mismatch.displayed, "no boxes: nothing depends on the json size"
    frames = list(dict.fromkeys([mismatch.displayed, mismatch.stored]))  # as displayed, then as stored if turned
    fit_json = fits(extent, json_size)
    for frame in frames:
        if fits(extent, frame):
            kind = SIDES_SWAPPED if json_size == frame[::-1] else JSON_SIZE_SET
            side = "as stored (EXIF orientation ignored)" if frame != mismatch.displayed else "as displayed"
            return kind, frame, BOTH_FIT if fit_json else f"the boxes fit only the image {side}"
    if not fit_json:
        return LEFT_OUT, None, "the boxes fit neither the json size nor the image"
    for frame in frames:
        if same_aspect(json_size, frame):
            return BOXES_SCALED, frame, "the boxes fit only the json size, which has the image's aspect ratio"
    if json_size == mismatch.displayed[::-1]:
        return LEFT_OUT, None, ("the boxes fit only the json size, the image turned by a quarter turn, and cannot "
                                "tell which way: set the file's EXIF orientation to the turn the annotation tool "
                                "showed (6: clockwise, 8: counter-clockwise)")
    return LEFT_OUT, None, "the boxes fit only the json size, whose aspect ratio is not the image's"


def scaled(annotation: dict, factors: tuple[float, float]) -> dict:
    """`annotation` with its box (and area) scaled by (x factor, y factor)."""
    fx, fy = factors
    x, y, w, h = annotation["bbox"]
    area = {"area": annotation["area"] * fx * fy} if "area" in annotation else {}
    return {**annotation, "bbox": [x * fx, y * fy, w * fx, h * fy], **area}


def repair_sizes(split_name: str, annotation_file: str, coco: dict,
                 mismatches: Sequence[SizeMismatch]) -> tuple[dict, list[SizeRepair]]:
    """`coco` with the repairable images' sizes (and boxes) repaired, and what to do with each mismatched image; the
    caller leaves out the images whose record has no new size."""
    by_image = defaultdict(list)
    for ann in coco["annotations"]:
        by_image[ann["image_id"]].append(ann)
    images, factors_of, records = list(coco["images"]), {}, []
    for mismatch in mismatches:
        entry = images[mismatch.index]
        json_size = (entry["width"], entry["height"])
        kind, new_size, evidence = decide(json_size, mismatch, box_extent(by_image[entry["id"]]))
        records.append(SizeRepair(split_name, annotation_file, entry["id"], entry["file_name"], kind, json_size,
                                  mismatch.displayed, new_size, evidence))
        if new_size is not None:
            images[mismatch.index] = {**entry, "width": new_size[0], "height": new_size[1]}
        if kind == BOXES_SCALED:
            factors_of[entry["id"]] = (new_size[0] / json_size[0], new_size[1] / json_size[1])
    annotations = [scaled(ann, factors_of[ann["image_id"]]) if ann["image_id"] in factors_of else ann
                   for ann in coco["annotations"]]
    return {**coco, "images": images, "annotations": annotations}, records


def describe(record: SizeRepair) -> str:
    """'name (json WxH -> new WxH, image WxH)': one image in a log line."""
    name = record.file_name or f"image id {record.image_id}"
    now = f" -> {record.new_size[0]}x{record.new_size[1]}" if record.new_size else ""
    return (f"{name} (json {record.json_size[0]}x{record.json_size[1]}{now}, image "
            f"{record.image_size[0]}x{record.image_size[1]})")


def write_size_repairs(output_dir: str | os.PathLike, records: Sequence[SizeRepair]) -> Path | None:
    """The audit of every size repair, `output_dir`/size_repairs.json (atomically); nothing when there was none."""
    if not records:
        return None
    path = Path(output_dir) / SIZE_REPAIRS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, [dataclasses.asdict(record) for record in records])
    logger.info("size repairs of %d images written to %s", len(records), path)
    return path
