"""coco_map against the references: pycocotools COCOeval for mAP, transformers' DETR post-processing."""

import contextlib
import copy
import dataclasses
import gc
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_ft.data.labels import ClassMapping
from detr_ft.data.sources import CocoSplit, load_coco_folder
from detr_ft.evaluation.coco_map import SUMMARY_NAMES, coco_map, detections_from_predictions
from detr_ft.evaluation.loop import CocoMetrics


def coco_map_pycocotools(coco_gt: dict, detections: list[dict]) -> dict[str, float]:
    """Reference: pycocotools COCOeval, summary stats and per-category AP@[.5:.95] (area all, 100 dets)."""
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = copy.deepcopy(coco_gt)
        ground_truth.createIndex()
        results = ground_truth.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(ground_truth, results, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = dict(zip(SUMMARY_NAMES, evaluator.stats[: len(SUMMARY_NAMES)].tolist(), strict=True))
    names = {category["id"]: category["name"] for category in coco_gt["categories"]}
    for k, category_id in enumerate(evaluator.params.catIds):
        precision = evaluator.eval["precision"][:, :, k, 0, -1]
        metrics[f"map_{names[category_id]}"] = float(precision[precision > -1].mean()) if (precision > -1).any() else -1
    return metrics


def noisy_detections(coco_gt: dict, rng: np.random.Generator, false_positives_per_image: int) -> list[dict]:
    """GT boxes jittered by up to ~20% of their size (some dropped, some relabelled) plus random false positives."""
    category_ids = [category["id"] for category in coco_gt["categories"]]
    detections = []
    for annotation in coco_gt["annotations"]:
        if rng.uniform() < 0.1:
            continue
        x, y, w, h = annotation["bbox"]
        jitter = rng.normal(0.0, 0.1, 4) * [w, h, w, h]
        relabel = rng.uniform() < 0.1
        detections.append(
            {
                "image_id": annotation["image_id"],
                "category_id": int(rng.choice(category_ids)) if relabel else annotation["category_id"],
                "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)],
                "score": float(rng.uniform(0.2, 1.0)),
            }
        )
    for image in coco_gt["images"]:
        for _ in range(false_positives_per_image):
            w, h = rng.uniform(2, image["width"] / 2), rng.uniform(2, image["height"] / 2)
            detections.append(
                {
                    "image_id": image["id"],
                    "category_id": int(rng.choice(category_ids)),
                    "bbox": [rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h), w, h],
                    "score": float(rng.uniform(0.0, 0.6)),
                }
            )
    return detections


def synthetic_coco_gt(rng: np.random.Generator) -> dict:
    """Random COCO GT with small, medium and large boxes, a few crowd boxes and a category without any box."""
    images, annotations = [], []
    for image_id in range(1, 41):
        height, width = int(rng.integers(100, 700)), int(rng.integers(100, 700))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width})
        for _ in range(int(rng.integers(0, 8))):
            w, h = rng.uniform(4, width * 0.6), rng.uniform(4, height * 0.6)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 4)),
                    "bbox": [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h],
                    "area": w * h,
                    "iscrowd": int(rng.uniform() < 0.05),
                }
            )
    categories = [{"id": i, "name": name} for i, name in enumerate(["cat", "dog", "bird", "never_seen"], start=1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def assert_same_metrics(ours: dict[str, float], reference: dict[str, float]) -> None:
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, abs=1e-6), name


@pytest.fixture(scope="module")
def cppe5_gt(cppe5_dir: Path) -> dict:
    return json.loads((cppe5_dir / "annotations" / "test.json").read_text())


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_map_equals_pycocotools_on_cppe5(cppe5_gt: dict, seed: int) -> None:
    detections = noisy_detections(cppe5_gt, np.random.default_rng(seed), false_positives_per_image=20)
    ours = coco_map(cppe5_gt, detections)
    assert_same_metrics(ours, coco_map_pycocotools(cppe5_gt, detections))
    assert 0.05 < ours["map"] < 0.95  # jittered boxes: neither trivial nor perfect, so the comparison means something
    assert {f"map_{c['name']}" for c in cppe5_gt["categories"]} <= ours.keys()


def test_coco_map_equals_pycocotools_on_synthetic() -> None:
    rng = np.random.default_rng(2)
    coco_gt = synthetic_coco_gt(rng)
    detections = noisy_detections(coco_gt, rng, false_positives_per_image=5)
    ours = coco_map(coco_gt, detections)
    assert_same_metrics(ours, coco_map_pycocotools(coco_gt, detections))
    assert ours["map_never_seen"] == -1.0  # COCO convention: AP undefined without GT boxes
    assert min(ours["map_small"], ours["map_medium"], ours["map_large"]) > 0


def test_coco_map_leaves_inputs_untouched_and_prints_nothing(cppe5_gt: dict, capsys) -> None:
    detections = noisy_detections(cppe5_gt, np.random.default_rng(3), false_positives_per_image=2)
    gt_before, detections_before = copy.deepcopy(cppe5_gt), copy.deepcopy(detections)
    coco_map(cppe5_gt, detections)
    assert cppe5_gt == gt_before
    assert detections == detections_before
    assert capsys.readouterr().out == ""


def perfect_predictions(coco_gt: dict, label_of: dict[int, int]) -> np.ndarray:
    """(N, Q, 6) [score, label, cx, cy, w, h]: every GT box of image i as a normalized model output of score 1 and
    label `label_of[category id]`; Q is the most boxes of an image, unused queries score 0."""
    images = coco_gt["images"]
    num_queries = max(np.unique([a["image_id"] for a in coco_gt["annotations"]], return_counts=True)[1])
    predictions = np.zeros((len(images), num_queries, 6))  # unused queries: score 0, so they rank below every hit
    predictions[..., 2:] = [0.5, 0.5, 0.1, 0.1]
    for i, image in enumerate(images):
        annotations = [a for a in coco_gt["annotations"] if a["image_id"] == image["id"]]
        for q, annotation in enumerate(annotations):
            x, y, w, h = annotation["bbox"]
            box = np.array([x + w / 2, y + h / 2, w, h]) / ([image["width"], image["height"]] * 2)
            predictions[i, q] = [1.0, label_of[annotation["category_id"]], *box]
    return predictions


def perfect_rows(coco_gt: dict, label_of: dict[int, int]) -> np.ndarray:
    """`perfect_predictions` as the evaluation loop's rows (N, Q, 7): image index i in the last column."""
    predictions = perfect_predictions(coco_gt, label_of)  # (N, Q, 6)
    index = np.broadcast_to(np.arange(len(predictions))[:, None, None], (*predictions.shape[:2], 1))  # (N, Q, 1)
    return np.concatenate([predictions, index], axis=-1)


def test_perfect_predictions_through_the_pipeline_give_map_one(cppe5_gt: dict) -> None:
    """GT boxes as normalized (cx, cy, w, h) model outputs -> detections_from_predictions -> coco_map == 1."""
    images = cppe5_gt["images"]
    category_ids = [category["id"] for category in cppe5_gt["categories"]]
    predictions = perfect_predictions(cppe5_gt, {category_id: k for k, category_id in enumerate(category_ids)})
    num_queries = predictions.shape[1]
    image_ids = [image["id"] for image in images]
    orig_sizes = [(image["height"], image["width"]) for image in images]
    detections = detections_from_predictions(predictions, image_ids, orig_sizes, category_ids)
    assert len(detections) == len(images) * num_queries
    hits = [d for d in detections if d["score"] == 1.0]
    gt_boxes = {(a["image_id"], a["category_id"], *a["bbox"]) for a in cppe5_gt["annotations"]}
    assert {(d["image_id"], d["category_id"], *np.round(d["bbox"], 6)) for d in hits} == gt_boxes

    metrics = coco_map(cppe5_gt, detections)
    for name in ["map", "map_50", "map_75", "mar_100", *(f"map_{c['name']}" for c in cppe5_gt["categories"])]:
        assert metrics[name] == pytest.approx(1.0), name


MODEL_ID2LABEL = {0: "circle", 1: "square", 2: "triangle"}  # training's labels for the synthetic categories 1, 2, 3
SWAPPED_CATEGORIES = [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}, {"id": 3, "name": "triangle"}]


def test_for_model_maps_model_labels_to_category_ids_by_name() -> None:
    """A split numbering circle and square the other way round: each model label still goes to its name's id."""
    classes = ClassMapping.for_model(MODEL_ID2LABEL, SWAPPED_CATEGORIES)
    assert classes.category_ids == (2, 1, 3)  # label 0 (circle) -> id 2, 1 (square) -> 1, 2 (triangle) -> 3
    assert classes.id2label == MODEL_ID2LABEL
    assert classes.category_to_label == {2: 0, 1: 1, 3: 2}
    assert classes.category_names == {1: "square", 2: "circle", 3: "triangle"}


@pytest.fixture(scope="module")
def validation_split(synthetic_coco) -> CocoSplit:
    """8 synthetic validation images of 64 px, 1-4 shapes each, categories 1 circle, 2 square, 3 triangle."""
    return load_coco_folder(synthetic_coco(num_train=2, num_validation=8, image_size=64, seed=0), "validation")


def test_split_with_swapped_ids_scores_map_one_with_the_classes_matched_by_name(validation_split) -> None:
    """Perfect rows of the model's labels on a split whose circle and square ids are swapped: for_model's mapping
    scores them 1, the split's own id-order numbering (label 0 = its id 1, now square) scores them lower."""
    assert validation_split.coco["categories"] == [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
                                                   {"id": 3, "name": "triangle"}]
    renumbered = {1: 2, 2: 1, 3: 3}
    coco = {**validation_split.coco, "categories": SWAPPED_CATEGORIES,
            "annotations": [{**a, "category_id": renumbered[a["category_id"]]}
                            for a in validation_split.coco["annotations"]]}
    split = dataclasses.replace(validation_split, coco=coco)
    name_of = {category["id"]: category["name"] for category in SWAPPED_CATEGORIES}
    label_of_name = {name: label for label, name in MODEL_ID2LABEL.items()}
    rows = perfect_rows(coco, {category_id: label_of_name[name] for category_id, name in name_of.items()})

    by_name = CocoMetrics(split, ClassMapping.for_model(MODEL_ID2LABEL, coco["categories"])).score(rows)
    for name in ["map", "map_50", "map_circle", "map_square", "map_triangle"]:
        assert by_name[name] == pytest.approx(1.0), name
    by_position = CocoMetrics(split, ClassMapping.from_categories(coco["categories"])).score(rows)
    assert by_position["map"] < 0.9
    assert by_position["map_triangle"] == pytest.approx(1.0)  # its id is the same either way


def test_filler_rows_are_left_out_of_the_map(validation_split) -> None:
    """Rows of the evaluation set's filler images (image index -1) change no metric: without the filter they would
    score as confident false positives on the split's last image (as the control row below does)."""
    rows = perfect_rows(validation_split.coco, {1: 0, 2: 1, 3: 2})  # (N, Q, 7)
    num_queries = rows.shape[1]
    filler = np.zeros((2, num_queries, 7))  # (2, Q, 7): score 1, every class, small boxes off every object
    filler[..., 0] = 1.0
    filler[..., 1] = np.arange(num_queries) % 3
    filler[..., 2:6] = [0.95, 0.95, 0.05, 0.05]
    filler[..., 6] = -1
    metrics = CocoMetrics(validation_split, ClassMapping.from_categories(validation_split.coco["categories"]))

    without = metrics.score(rows)
    assert without["map"] == pytest.approx(1.0)
    assert metrics.score(np.concatenate([filler, rows, filler])) == without
    last_image = filler.copy()
    last_image[..., 6] = len(rows) - 1
    assert metrics.score(np.concatenate([last_image, rows]))["map"] < 1.0  # control: the same rows, not fillers'


def test_empty_detections_give_zero(cppe5_gt: dict) -> None:
    metrics = coco_map(cppe5_gt, [])
    assert metrics.keys() == {*SUMMARY_NAMES, *(f"map_{c['name']}" for c in cppe5_gt["categories"])}
    assert all(value == 0.0 for value in metrics.values())  # CPPE-5 has boxes of every area range and category


def test_category_names_override_and_unknown_images_rejected(cppe5_gt: dict) -> None:
    detections = noisy_detections(cppe5_gt, np.random.default_rng(4), false_positives_per_image=1)
    names = {category["id"]: category["name"].lower() for category in cppe5_gt["categories"]}
    assert "map_coverall" in coco_map(cppe5_gt, detections, category_names=names)
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_map(cppe5_gt, [{**detections[0], "image_id": -7}])
    assert gc.isenabled()  # coco_map pauses the garbage collector and must restore it, even when it raises


COCO_MAP_METRIC = Path(__file__).resolve().parent.parent / "detr_ft" / "evaluation" / "coco_map_metric"


def image_rows(coco_gt: dict, detections: list[dict]) -> tuple[list[dict], list[dict]]:
    """The `evaluate` module's inputs: one prediction row and one reference row per image."""
    predictions = {image["id"]: {"image_id": image["id"], "boxes": [], "scores": [], "category_ids": []}
                   for image in coco_gt["images"]}
    references = {image["id"]: {"image_id": image["id"], "boxes": [], "category_ids": [], "areas": [], "iscrowd": []}
                  for image in coco_gt["images"]}
    for detection in detections:
        row = predictions[detection["image_id"]]
        row["boxes"].append(detection["bbox"])
        row["scores"].append(detection["score"])
        row["category_ids"].append(detection["category_id"])
    for annotation in coco_gt["annotations"]:
        row = references[annotation["image_id"]]
        row["boxes"].append(annotation["bbox"])
        row["category_ids"].append(annotation["category_id"])
        row["areas"].append(annotation["area"])
        row["iscrowd"].append(annotation["iscrowd"])
    return list(predictions.values()), list(references.values())


def test_evaluate_module_loads_offline_by_path_and_equals_pycocotools(monkeypatch) -> None:
    """`evaluate.load(<folder>)` with the network cut: no hub script, no download; the numbers are coco_map's."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the evaluate module reached for the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    import evaluate

    metric = evaluate.load(str(COCO_MAP_METRIC))
    rng = np.random.default_rng(2)
    coco_gt = synthetic_coco_gt(rng)
    detections = noisy_detections(coco_gt, rng, false_positives_per_image=5)
    predictions, references = image_rows(coco_gt, detections)
    half = len(predictions) // 2
    metric.add_batch(predictions=predictions[:half], references=references[:half])
    metric.add_batch(predictions=predictions[half:], references=references[half:])

    ours = metric.compute(categories=coco_gt["categories"])
    assert_same_metrics(ours, coco_map_pycocotools(coco_gt, detections))
    assert ours["map_never_seen"] == -1.0 and 0.05 < ours["map"] < 0.95
