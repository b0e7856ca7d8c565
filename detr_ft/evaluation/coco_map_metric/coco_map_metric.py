"""COCO box mAP as a Hugging Face `evaluate` module: a thin wrapper over `detr_ft.evaluation.coco_map.coco_map`
(faster-coco-eval), so `evaluate` users get the numbers training logs, from the same code. Loaded by path, offline:

    metric = evaluate.load("detr_ft/evaluation/coco_map_metric")  # or the path of this file
    metric.add_batch(predictions=[{"image_id": 7, "boxes": [[x, y, w, h], ...], "scores": [...],
                                   "category_ids": [...]}, ...],
                     references=[{"image_id": 7, "boxes": [[x, y, w, h], ...], "category_ids": [...],
                                  "areas": [...], "iscrowd": [...]}, ...])
    metric.compute(categories=[{"id": 1, "name": "Coverall"}, ...])  # {"map": ..., "map_50": ..., "map_Coverall": ...}

One row per image; boxes are COCO [x, y, width, height] in the image's pixels, category ids the dataset's own.
`detr_ft` must be importable (run from the repository root, or install the package).
"""

import datasets
import evaluate

from detr_ft.evaluation.coco_map import coco_map

BOXES = datasets.List(datasets.List(datasets.Value("float64"), length=4))
PREDICTION = {"image_id": datasets.Value("int64"), "boxes": BOXES, "scores": datasets.List(datasets.Value("float64")),
              "category_ids": datasets.List(datasets.Value("int64"))}
REFERENCE = {"image_id": datasets.Value("int64"), "boxes": BOXES,
             "category_ids": datasets.List(datasets.Value("int64")), "areas": datasets.List(datasets.Value("float64")),
             "iscrowd": datasets.List(datasets.Value("int64"))}


class CocoMap(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="COCO box mAP (faster-coco-eval, equal to pycocotools): 9 summary values and per-class AP.",
            citation="Lin et al., Microsoft COCO: Common Objects in Context, ECCV 2014.",
            inputs_description=__doc__,
            features=datasets.Features({"predictions": PREDICTION, "references": REFERENCE}),
        )

    def _compute(self, predictions: list[dict], references: list[dict], categories: list[dict]) -> dict[str, float]:
        """`categories`: the dataset's COCO categories ({"id", "name"}); per-class AP is reported by name."""
        annotations = [
            {"image_id": reference["image_id"], "bbox": box, "category_id": category_id, "area": area, "iscrowd": crowd}
            for reference in references
            for box, category_id, area, crowd in zip(reference["boxes"], reference["category_ids"],
                                                     reference["areas"], reference["iscrowd"], strict=True)
        ]
        ground_truth = {
            "images": [{"id": reference["image_id"]} for reference in references],
            # ids from 1: COCOeval reads id 0 as "unmatched"
            "annotations": [{**annotation, "id": index} for index, annotation in enumerate(annotations, start=1)],
            "categories": categories,
        }
        detections = [
            {"image_id": prediction["image_id"], "bbox": box, "score": score, "category_id": category_id}
            for prediction in predictions
            for box, score, category_id in zip(prediction["boxes"], prediction["scores"], prediction["category_ids"],
                                               strict=True)
        ]
        return coco_map(ground_truth, detections)
