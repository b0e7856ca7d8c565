"""Check every split before any training: refuse what has no safe fix, fix the rest and say how much was fixed.

    refused (DatasetError)  malformed json (missing key, wrong type), empty split, duplicate image / annotation /
                            category ids or category names, one image file listed under two ids, an annotation whose
                            image or category is unknown, a file_name outside the images folder (absolute, through
                            ../ or a symbolic link leading out) unless allowed, a missing, unreadable (permission)
                            or undecodable image, an image over Pillow's decompression-bomb limit; with
                            --on_size_mismatch refuse, json width x height matching neither the stored nor the
                            EXIF-rotated image
    fixed (logged, counted) such a json size (`size_repair`: by what the boxes say, or the image left out);
                            box partly outside its image -> clipped; box with NaN / inf, w or h <= 0, or less than
                            1 px inside its image -> dropped; grayscale, RGBA, palette, CMYK, 16-bit -> RGB; EXIF
                            orientation -> applied (rule in `images.to_rgb`); image without boxes -> kept as a negative;
                            crowd annotation (iscrowd 1) -> kept for mAP (an ignore region), left out of training
                            targets (`is_crowd`)

Every image is fully decoded once (threads; Pillow decodes without the GIL), because only a decode finds a
truncated file: less work than one epoch of data loading at any size. More objects in an image than num_queries is
not an input error: `prepare.warn_queries_overflow` warns about it. The rules for boxes (`clip_to_image`, `is_crowd`)
live here; `clean_objects` applies them to what the dataset trains on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from detr_ft.data.images import displayed_size, exif_orientation
from detr_ft.data.size_repair import (
    BOTH_FIT,
    KIND_NAMES,
    KIND_REASONS,
    SIZE_REPAIRS_FILE,
    SizeMismatch,
    SizeRepair,
    describe,
    repair_sizes,
)
from detr_ft.data.sources import CocoSplit, DatasetError

logger = logging.getLogger(__name__)

LISTED = 10  # entries named in one message; the rest are counted
NUMBER = (int, float)
SCHEMA = {  # COCO key -> type, for every entry of each list; a bool is not accepted as a number
    "images": {"id": int, "file_name": str, "width": int, "height": int},
    "annotations": {"id": int, "image_id": int, "category_id": int, "bbox": list},
    "categories": {"id": int, "name": str},
}


def listing(items: Iterable) -> str:
    """'a, b, c' naming at most LISTED items, then how many more."""
    items = list(items)
    more = f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return ", ".join(str(item) for item in items[:LISTED]) + more


def refuse_if(problems: list[str], where: str) -> None:
    if problems:
        raise DatasetError(f"{where}: {len(problems)} problem(s) with no safe automatic fix:\n  - "
                           + "\n  - ".join(problems))


def is_a(value, expected: type) -> bool:
    return isinstance(value, expected) and not isinstance(value, bool)


def entry_problems(key: str, n: int, entry) -> list[str]:
    """What is wrong with entry n of coco[key]: not an object, a key of SCHEMA missing or of the wrong type."""
    if not isinstance(entry, dict):
        return [f"{key}[{n}] is a {type(entry).__name__}, not an object"]
    name = f"{key}[{n}] (id {entry.get('id')!r})"
    problems = []
    for field, expected in SCHEMA[key].items():
        if field not in entry:
            problems.append(f"{name}: key {field!r} is missing")
        elif not is_a(entry[field], expected):
            problems.append(f"{name}: {field!r} must be {expected.__name__}, got {entry[field]!r}")
    bbox = entry.get("bbox")
    if key == "annotations" and isinstance(bbox, list) and not (len(bbox) == 4 and all(is_a(v, NUMBER) for v in bbox)):
        problems.append(f"{name}: 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
    if key == "images" and not problems and min(entry["width"], entry["height"]) <= 0:
        problems.append(f"{name}: width and height must be positive, got {entry['width']}x{entry['height']}")
    return problems


def check_schema(coco, where: str) -> None:
    """Every list of SCHEMA present, each entry an object with SCHEMA's keys and types."""
    if not isinstance(coco, dict):
        refuse_if([f"the json holds a {type(coco).__name__}, not a COCO object"], where)
    refuse_if([f"key {key!r} is missing or not a list" for key in SCHEMA if not isinstance(coco.get(key), list)],
              where)
    refuse_if([problem for key in SCHEMA for n, entry in enumerate(coco[key])
               for problem in entry_problems(key, n, entry)], where)


def reference_problems(coco: dict, category_ids: Collection[int]) -> list[str]:
    """An empty split, repeated ids, annotations of an image not in the file or of an unknown category."""
    problems = [] if coco["images"] else ["the split has no images: point --dataset_dir / the split at real data"]
    for key in SCHEMA:
        repeated = [i for i, count in Counter(entry["id"] for entry in coco[key]).items() if count > 1]
        if repeated:
            problems.append(f"{len(repeated)} {key} ids are used more than once: {listing(repeated)} (give each "
                            "entry its own id)")
    ids_of = defaultdict(list)
    for category in coco["categories"]:
        ids_of[category["name"]].append(category["id"])
    shared = [f"{name!r} (ids {listing(ids)})" for name, ids in ids_of.items() if len(ids) > 1]
    if shared:
        problems.append(f"{len(shared)} category names are used by more than one category: {listing(shared)} "
                        "(merge them into one category or give each its own name)")
    image_ids = {image["id"] for image in coco["images"]}
    orphans = [a["id"] for a in coco["annotations"] if a["image_id"] not in image_ids]
    if orphans:
        problems.append(f"{len(orphans)} annotations refer to an image id not in 'images': ids {listing(orphans)} "
                        "(add the images or remove the annotations)")
    unknown = [a for a in coco["annotations"] if a["category_id"] not in category_ids]
    if unknown:
        problems.append(f"{len(unknown)} annotations have a category id outside {sorted(category_ids)} (ids "
                        f"{listing(sorted({a['category_id'] for a in unknown}))}): annotation ids "
                        f"{listing(a['id'] for a in unknown)} (add the category to the train split's "
                        "'categories' or correct category_id)")
    return problems


ImageReport = tuple[str, tuple[int, int], tuple[int, int], int]


def leaves_image_folder(file_name: str) -> bool:
    """An absolute file_name, or one whose ../ climbs out of the images folder."""
    return os.path.isabs(file_name) or os.path.normpath(file_name).split(os.sep)[0] == os.pardir


def links_out_of(image_dir: Path, file_names: Iterable[str]) -> list[str]:
    """'name -> target' of each file_name that resolves outside `image_dir` (a symbolic link leading out of it)."""
    root = Path(os.path.realpath(image_dir))
    resolved = {name: Path(os.path.realpath(image_dir / name)) for name in file_names}  # a link loop stays as named
    return [f"{name} -> {target}" for name, target in resolved.items() if not target.is_relative_to(root)]


def external_image_problems(coco: dict, image_dir: Path | None) -> list[str]:
    """File names that leave the images folder, by name or through a symbolic link (nothing is opened)."""
    names = [image["file_name"] for image in coco["images"] if image["file_name"]]
    leaving = {name: leaves_image_folder(name) for name in names}
    outside = [name for name in names if leaving[name]]
    inside = [name for name in names if not leaving[name]]
    problems = [f"{len(outside)} images have a file_name outside the images folder (absolute or through ../): "
                f"{listing(outside)} (move them under images/ with a relative file_name, or pass "
                "--allow_external_images to read them where they are)"] if outside else []
    linked = links_out_of(image_dir, inside) if image_dir else []
    if linked:
        problems.append(f"{len(linked)} images in the images folder are symbolic links to files outside it: "
                        f"{listing(linked)} (copy the files into images/, or pass --allow_external_images to read "
                        "them where they are)")
    return problems


def repeated_file_problems(coco: dict) -> list[str]:
    """One image file under several image ids: it would train twice and could fall on both sides of the eval carve."""
    ids_of = defaultdict(list)
    for image in coco["images"]:
        if image["file_name"]:
            ids_of[os.path.normpath(image["file_name"])].append(image["id"])
    repeated = [f"{name} (ids {listing(ids)})" for name, ids in ids_of.items() if len(ids) > 1]
    if not repeated:
        return []
    return [f"{len(repeated)} image files are listed under more than one image id: {listing(repeated)} (keep one "
            "entry per file and give it all the file's annotations: two entries train on one photo twice and can "
            "put it in both the train and the eval split)"]


def inspect_image(read_image: Callable[[], Image.Image]) -> ImageReport | Exception:
    """(mode, stored size, displayed size, EXIF orientation) of an image, fully decoded; the error if unreadable."""
    try:
        with read_image() as image:
            image.load()
            return image.mode, image.size, displayed_size(image), exif_orientation(image)
    except Exception as error:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... on broken files
        return error


def image_problems(split: CocoSplit, where: str) -> tuple[list[str], list[SizeMismatch]]:
    """Missing, unreadable or too large images, and those whose json size is neither of theirs; the mode conversions
    and EXIF rotations are logged."""
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        reports = list(pool.map(lambda i: inspect_image(partial(split.read_image, i)),
                                range(len(split.coco["images"]))))
    missing, denied, unreadable, too_large, rotated, kept_stored, modes = [], [], [], [], [], [], Counter()
    mismatches = []
    largest = 0  # pixels of the largest image over Pillow's limit
    for index, (entry, report) in enumerate(zip(split.coco["images"], reports, strict=True)):
        name = entry["file_name"] or f"image id {entry['id']}"
        if isinstance(report, FileNotFoundError):
            missing.append(report.filename or name)
        elif isinstance(report, PermissionError):
            denied.append(report.filename or name)
        elif isinstance(report, Image.DecompressionBombError):
            too_large.append(f"{name} ({entry['width']}x{entry['height']})")
            largest = max(largest, entry["width"] * entry["height"])
        elif isinstance(report, Exception):
            unreadable.append(f"{name} ({type(report).__name__}: {report})")
        else:
            mode, stored, displayed, orientation = report
            annotated = (entry["width"], entry["height"])
            if annotated == displayed and orientation in range(2, 9):
                rotated.append(name)
            elif annotated == stored != displayed:
                kept_stored.append(name)
            elif annotated != displayed:
                mismatches.append(SizeMismatch(index, stored, displayed))
            if mode != "RGB":
                modes[mode] += 1
    problems = []
    if missing:
        problems.append(f"{len(missing)} image files are missing: {listing(missing)} (restore them or remove "
                        "their entries from 'images')")
    if denied:
        problems.append(f"{len(denied)} image files cannot be read: permission denied: {listing(denied)} (give the "
                        "user running this read access to them and their folders, e.g. chmod a+rX or chown)")
    if unreadable:
        problems.append(f"{len(unreadable)} images cannot be decoded (truncated or not an image): "
                        f"{listing(unreadable)} (re-export them or remove their entries)")
    if too_large:
        problems.append(f"{len(too_large)} images have more pixels than Pillow's decompression-bomb limit "
                        f"({2 * Image.MAX_IMAGE_PIXELS} pixels, twice Image.MAX_IMAGE_PIXELS): "
                        f"{listing(too_large)} (if you trust these files, pass --max_image_pixels {largest}; or "
                        "downscale them)")
    if modes:
        logger.info("%s: converting %d images to 8-bit RGB (%s)", where, modes.total(),
                    ", ".join(f"{count} {mode}" for mode, count in sorted(modes.items())))
    if rotated:
        logger.info("%s: applying the EXIF orientation of %d images (%s)", where, len(rotated), listing(rotated))
    if kept_stored:
        logger.info("%s: ignoring the EXIF orientation of %d images, their json size is that of the stored "
                    "pixels (%s)", where, len(kept_stored), listing(kept_stored))
    return problems, mismatches


def size_mismatch_problems(coco: dict, mismatches: Sequence[SizeMismatch]) -> list[str]:
    """--on_size_mismatch refuse: every image whose json size is neither of its own, named."""
    if not mismatches:
        return []
    named = []
    for mismatch in mismatches:
        image = coco["images"][mismatch.index]
        named.append(f"{image['file_name'] or 'image id ' + str(image['id'])} (json {image['width']}x"
                     f"{image['height']}, image {mismatch.displayed[0]}x{mismatch.displayed[1]})")
    return [f"{len(named)} images have a json width x height unlike the image's, so their boxes cannot be trusted: "
            f"{listing(named)} (set width and height to the size of the image the boxes were drawn on, or pass "
            "--on_size_mismatch repair to repair each image by what its boxes say)"]


def log_size_repairs(records: Sequence[SizeRepair], where: str) -> None:
    """One warning per repair kind: how many images, which, and how many of them the boxes did not decide."""
    by_kind = defaultdict(list)
    for record in records:
        by_kind[record.repair].append(record)
    for kind, group in by_kind.items():
        undecided = sum(record.evidence == BOTH_FIT for record in group)
        note = (f"; the boxes of {undecided} of them fit both sizes and do not decide: check them in "
                f"{SIZE_REPAIRS_FILE} of the run" if undecided else "")
        logger.warning("%s: %d images have a json width x height unlike the image's: %s (%s): %s%s", where,
                       len(group), KIND_NAMES[kind], KIND_REASONS[kind], listing(describe(r) for r in group), note)


def clip_to_image(bbox: list[float], width: int, height: int) -> list[float] | None:
    """COCO [x, y, w, h] clipped to a width x height image; None when it is not finite, has w or h <= 0, or
    keeps less than 1 pixel of width or height inside the image."""
    x, y, w, h = (float(v) for v in bbox)
    if not (all(math.isfinite(v) for v in (x, y, w, h)) and w > 0 and h > 0):
        return None
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    return [x0, y0, x1 - x0, y1 - y0] if x1 - x0 >= 1.0 and y1 - y0 >= 1.0 else None


def is_crowd(annotation: dict) -> bool:
    """A COCO crowd region (iscrowd 1): no training target, as in DETR; COCOeval reads it as an ignore region."""
    return bool(annotation.get("iscrowd"))  # COCOeval's own test


def clean_objects(split: CocoSplit, category_to_label: dict[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image: boxes (n, 4) COCO xywh clipped to the image, labels (n,); degenerate boxes dropped, counted;
    crowd regions left out (`is_crowd`).

    After `validate_split` nothing is left to clip or drop; this guards splits used without it."""
    index_of = {image["id"]: i for i, image in enumerate(split.coco["images"])}
    boxes: list[list] = [[] for _ in index_of]
    labels: list[list] = [[] for _ in index_of]
    dropped = 0
    for ann in split.coco["annotations"]:
        if is_crowd(ann):
            continue
        image = split.coco["images"][index_of[ann["image_id"]]]
        box = clip_to_image(ann["bbox"], image["width"], image["height"])
        if box is None:
            dropped += 1
            continue
        boxes[index_of[ann["image_id"]]].append(box)
        labels[index_of[ann["image_id"]]].append(category_to_label[ann["category_id"]])
    if dropped:
        logger.warning("%s: dropped %d degenerate boxes (zero area after clipping to the image)", split.name, dropped)
    return [(np.asarray(b, np.float32).reshape(-1, 4), np.asarray(lb, np.int64))
            for b, lb in zip(boxes, labels, strict=True)]


def drop_reason(bbox: list[float]) -> str:
    """Why `clip_to_image` rejected a box, in words."""
    if not all(math.isfinite(v) for v in bbox):
        return "NaN or infinite coordinates"
    return "a width or height <= 0" if min(bbox[2], bbox[3]) <= 0 else "less than 1 px inside their image"


def fix_boxes(coco: dict, where: str) -> list[dict]:
    """The annotations with boxes clipped to their image and degenerate ones dropped, each fix logged by kind."""
    size_of = {image["id"]: (image["width"], image["height"]) for image in coco["images"]}
    kept, fixed = [], defaultdict(list)
    for ann in coco["annotations"]:
        box = clip_to_image(ann["bbox"], *size_of[ann["image_id"]])
        if box is None:
            fixed[f"dropped: {drop_reason(ann['bbox'])}"].append(ann["id"])
            continue
        if box != [float(v) for v in ann["bbox"]]:
            fixed["clipped to their image"].append(ann["id"])
            ann = {**ann, "bbox": box, "area": box[2] * box[3]}
        kept.append(ann)
    for kind, ids in fixed.items():
        logger.warning("%s: %d boxes %s (annotation ids %s)", where, len(ids), kind, listing(ids))
    return kept


def validate_split(split: CocoSplit, category_ids: Collection[int] | None = None,
                   allow_external_images: bool = False, on_size_mismatch: str = "repair") -> CocoSplit:
    """`split` checked (DatasetError on what has no safe fix) and returned with its sizes and boxes fixed.

    category_ids: the categories the model predicts (the train split's); default: the split's own.
    allow_external_images: read file_names that leave the images folder; refused before any is opened otherwise.
    on_size_mismatch: "repair" images whose json size is neither of theirs (`size_repair`), or "refuse" them."""
    where = split.source or split.name
    check_schema(split.coco, where)
    if category_ids is None:
        category_ids = {category["id"] for category in split.coco["categories"]}
    external = [] if allow_external_images else external_image_problems(split.coco, split.image_dir)
    # no image is opened while one is outside images/
    opened, mismatches = ([], []) if external else image_problems(split, where)
    if on_size_mismatch == "refuse":
        opened += size_mismatch_problems(split.coco, mismatches)
    refuse_if(external + reference_problems(split.coco, category_ids) + repeated_file_problems(split.coco) + opened,
              where)
    coco, repairs = repair_sizes(split.name, split.source, split.coco, mismatches)
    log_size_repairs(repairs, where)
    split = dataclasses.replace(split, coco=coco, size_repairs=tuple(repairs))
    left_out = {record.image_id for record in repairs if record.new_size is None}
    if left_out:
        kept = [i for i, image in enumerate(coco["images"]) if image["id"] not in left_out]
        if not kept:
            raise DatasetError(f"{where}: every image was left out, its json size unlike the image's and its boxes "
                               "fitting no size that maps onto it: set each image's width and height to the size "
                               "of the image its boxes were drawn on")
        split = dataclasses.replace(split.subset(kept, split.name), size_repairs=split.size_repairs)
    annotations = fix_boxes(split.coco, where)
    crowd = [ann["id"] for ann in annotations if is_crowd(ann)]
    if crowd:
        logger.info("%s: %d crowd annotations (iscrowd 1) left out of the training targets, kept as ignore regions "
                    "for mAP (annotation ids %s)", where, len(crowd), listing(crowd))
    with_boxes = {ann["image_id"] for ann in annotations}
    negatives = [image["id"] for image in split.coco["images"] if image["id"] not in with_boxes]
    if negatives:
        logger.info("%s: keeping %d images without boxes as negatives (image ids %s)", where, len(negatives),
                    listing(negatives))
    return dataclasses.replace(split, coco={**split.coco, "annotations": annotations})
