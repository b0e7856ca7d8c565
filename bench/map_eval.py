"""mAP evaluation time: pycocotools COCOeval against ours (`detr_ft.evaluation.coco_map`) on the same detections.

Synthetic ground truth: CPPE-5-like images (640-1333 px sides, the workload's skewed objects-per-image count, 5
categories) and DETR-like detections, exactly `detections_per_image` per image (DETR scores every query): each GT
box found with probability 0.9, jittered by ~10% of its size, relabelled with probability 0.1, the rest random
boxes with low scores. Both evaluators start from the same list of COCO result dicts and run in full (index, load
results, evaluate, accumulate, summarize); pycocotools gets deep copies made beforehand, as its loadRes edits them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bench.workload import MAX_OBJECTS, MEDIAN_OBJECTS, NUM_LABELS
from detr_ft.evaluation.coco_map import SUMMARY_NAMES, coco_map


def synthetic_coco(num_images: int, detections_per_image: int, seed: int) -> tuple[dict, list[dict]]:
    """A COCO ground-truth dict and its detections (COCO result dicts, boxes [x, y, w, h] in pixels)."""
    rng = np.random.default_rng(seed)
    categories = [{"id": i, "name": f"class_{i}"} for i in range(1, NUM_LABELS + 1)]
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        width, height = rng.integers(640, 1334, 2).tolist()
        images.append({"id": image_id, "width": width, "height": height})
        count = int(np.clip(round(np.exp(rng.normal(np.log(MEDIAN_OBJECTS), 0.8))), 1, MAX_OBJECTS))
        sizes = rng.uniform(0.05, 0.5, (count, 2)) * [width, height]  # (n, 2) pixels (w, h)
        corners = rng.uniform(0, 1, (count, 2)) * ([width, height] - sizes)  # (n, 2) pixels (x, y)
        labels = rng.integers(1, NUM_LABELS + 1, count)  # (n,)
        for box, label in zip(np.concatenate([corners, sizes], 1).tolist(), labels.tolist(), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
        found = rng.uniform(size=count) < 0.9  # (n,)
        jitter = rng.normal(0, 0.1, (count, 4)) * np.tile(sizes, 2)  # (n, 4)
        found_boxes = (np.concatenate([corners, sizes], 1) + jitter)[found]  # (f, 4)
        found_labels = np.where(rng.uniform(size=count) < 0.1, rng.integers(1, NUM_LABELS + 1, count), labels)[found]
        num_random = detections_per_image - len(found_boxes)
        random_sizes = rng.uniform(0.02, 0.5, (num_random, 2)) * [width, height]  # (r, 2)
        random_corners = rng.uniform(0, 1, (num_random, 2)) * ([width, height] - random_sizes)  # (r, 2)
        boxes = np.concatenate([found_boxes, np.concatenate([random_corners, random_sizes], 1)])  # (D, 4)
        boxes[:, 2:] = boxes[:, 2:].clip(min=1)  # (D, 4)
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(found_boxes)), rng.uniform(0.0, 0.5, num_random)])  # (D,)
        labels = np.concatenate([found_labels, rng.integers(1, NUM_LABELS + 1, num_random)])  # (D,)
        for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist(), strict=True):
            detections.append({"image_id": image_id, "category_id": label, "bbox": box, "score": score})
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def pycocotools_map(coco_gt: dict, detections: list[dict]) -> dict[str, float]:
    """The `SUMMARY_NAMES` metrics by pycocotools; edits its arguments (pass copies)."""
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = coco_gt
        ground_truth.createIndex()
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(SUMMARY_NAMES, evaluator.stats[: len(SUMMARY_NAMES)].tolist(), strict=True))


def compare_map_evaluation(num_images: int, detections_per_image: int, seed: int) -> dict:
    """Seconds of each evaluator, their mAP, and the largest difference over the summary metrics."""
    coco_gt, detections = synthetic_coco(num_images, detections_per_image, seed)
    gt_copy, detections_copy = copy.deepcopy(coco_gt), copy.deepcopy(detections)
    start = time.perf_counter()
    reference = pycocotools_map(gt_copy, detections_copy)
    pycocotools_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = coco_map(coco_gt, detections)
    ours_s = time.perf_counter() - start
    return {
        "images": num_images,
        "detections": len(detections),
        "seconds": {"pycocotools": pycocotools_s, "ours": ours_s},
        "map": {"pycocotools": reference["map"], "ours": ours["map"]},
        "max_abs_diff": max(abs(reference[name] - ours[name]) for name in SUMMARY_NAMES),
    }
