"""COCO box mAP for DETR-family predictions, computed by faster-coco-eval (C++ COCOeval, same numbers as pycocotools).

Pipeline: model outputs -> the family's post-processing (on device, detr_ft/model/postprocess.py) ->
`detections_from_predictions` (numpy, COCO result dicts in original pixels) -> `coco_map` (COCOeval_faster, bbox).

Per-class AP follows COCO's convention: AP@[.5:.95] over all areas with 100 detections, and -1 for a category
that has no ground-truth box (precision undefined), exactly like the summary metrics.
"""

import gc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

# Order of COCOeval.stats for bbox with the default area ranges and maxDets (1, 10, 100).
SUMMARY_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


def _silent(*args, **kwargs) -> None:
    """Print function for faster-coco-eval: its progress messages must not reach stdout or the logs."""


@contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    """Building ~1M acyclic dicts triggers full collections that rescan a training process's whole heap: pausing the
    collector cut coco_map's time by ~25% at 500k detections (more, the bigger the live heap)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@_garbage_collection_paused()
def detections_from_predictions(
    scores_labels_boxes: np.ndarray,
    image_ids: Sequence[int],
    orig_sizes: np.ndarray | Sequence[tuple[int, int]],
    label_to_category_id: Mapping[int, int] | Sequence[int],
) -> list[dict]:
    """COCO result dicts from (N, Q, 6) [score, label, cx, cy, w, h] predictions with boxes normalized to the image.

    Box in original pixels: x = (cx - w / 2) * width, y = (cy - h / 2) * height, w * width, h * height (not clipped,
    like DETR's own evaluation). `orig_sizes` holds (height, width) per image; `label_to_category_id[label]` is the
    COCO category id of model label `label` for every label 0..C-1.
    """
    predictions = np.asarray(scores_labels_boxes, dtype=np.float64)  # (N, Q, 6)
    num_images, num_queries, _ = predictions.shape
    category_lookup = np.array([label_to_category_id[label] for label in range(len(label_to_category_id))])  # (C,)
    height_width = np.asarray(orig_sizes, dtype=np.float64).reshape(num_images, 1, 2)  # (N, 1, 2)
    scale = height_width[..., ::-1]  # (N, 1, 2) as (width, height)
    centers, sizes = predictions[..., 2:4], predictions[..., 4:6]  # (N, Q, 2), (N, Q, 2)
    corners_xywh = np.concatenate([(centers - sizes / 2) * scale, sizes * scale], -1)  # (N, Q, 4)
    category_ids = category_lookup[predictions[..., 1].astype(np.int64)]  # (N, Q)
    repeated_image_ids = np.repeat(np.asarray(image_ids, dtype=np.int64), num_queries)  # (N * Q,)
    return [
        {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}
        for image_id, category_id, bbox, score in zip(
            repeated_image_ids.tolist(),
            category_ids.reshape(-1).tolist(),
            corners_xywh.reshape(-1, 4).tolist(),
            predictions[..., 0].reshape(-1).tolist(),
            strict=True,
        )
    ]


def _results_coco(coco_gt: dict, detections: list[dict]) -> COCO:
    """Detections as a COCO object: what COCO.loadRes builds for box results, minus the polygon per box that loadRes
    adds for segm evaluation (the slowest part of loadRes at 500k detections) and minus mutating the caller's dicts."""
    gt_image_ids = {image["id"] for image in coco_gt["images"]}
    unknown_image_ids = {detection["image_id"] for detection in detections} - gt_image_ids
    if unknown_image_ids:
        raise ValueError(f"detections for images not in the ground truth: {sorted(unknown_image_ids)[:10]}")
    annotations = [
        {**detection, "id": index, "area": detection["bbox"][2] * detection["bbox"][3], "iscrowd": 0}
        for index, detection in enumerate(detections, start=1)  # ids from 1: COCOeval reads id 0 as "unmatched"
    ]
    results = COCO(print_function=_silent)
    results.dataset = {"images": coco_gt["images"], "categories": coco_gt["categories"], "annotations": annotations}
    results.createIndex()
    return results


@_garbage_collection_paused()
def coco_map(
    coco_gt: dict, detections: list[dict], category_names: Mapping[int, str] | None = None
) -> dict[str, float]:
    """COCO bbox metrics: the 9 summary values of `SUMMARY_NAMES` plus `map_<name>` per category (-1: no GT box).

    `coco_gt` is a COCO json dict; `category_names` maps category id -> name (default: the json's categories).
    Neither argument is modified. Empty `detections` give 0 for every metric of categories with GT boxes.
    """
    # COCOeval writes an "ignore" flag into every GT annotation: evaluate copies so the caller's dict stays untouched.
    gt_annotations = [dict(annotation) for annotation in coco_gt["annotations"]]
    ground_truth = COCO({**coco_gt, "annotations": gt_annotations}, print_function=_silent)
    results = _results_coco(coco_gt, detections)
    evaluator = COCOeval_faster(ground_truth, results, iouType="bbox", print_function=_silent)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    summary = evaluator.stats[: len(SUMMARY_NAMES)]  # (9,)
    metrics = {name: float(value) for name, value in zip(SUMMARY_NAMES, summary, strict=True)}

    if category_names is None:
        category_names = {category["id"]: category["name"] for category in coco_gt["categories"]}
    # precision: (iou thresholds, recall thresholds, categories, area ranges, max dets); area "all", 100 dets.
    precision = evaluator.eval["precision"][..., 0, -1]  # (T, R, K)
    for k, category_id in enumerate(evaluator.params.catIds):
        category_precision = precision[..., k]  # (T, R)
        defined = category_precision[category_precision > -1]  # (n,)
        metrics[f"map_{category_names[category_id]}"] = float(defined.mean()) if defined.size else -1.0
    return metrics
