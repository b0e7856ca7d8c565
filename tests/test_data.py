"""Data loading: the real CPPE-5 split, label maps, validation carving, augmentation keeps boxes valid."""

import json

import numpy as np
import pytest
import torch

from detr_ft.data.augmentation import train_augmentation
from detr_ft.data.dataset import DetectionDataset, PaddedToMultiple
from detr_ft.data.labels import ClassMapping
from detr_ft.data.sources import carve_validation, coco_from_hub_split, load_coco_folder


def label_maps(categories: list[dict]) -> tuple[dict[int, int], dict[int, str]]:
    classes = ClassMapping.from_categories(categories)
    return classes.category_to_label, classes.id2label


def test_cppe5_loads_with_right_classes_and_boxes(cppe5_dir):
    split = load_coco_folder(cppe5_dir, "test")
    category_to_label, id2label = label_maps(split.coco["categories"])
    assert id2label == {0: "Coverall", 1: "Face_Shield", 2: "Gloves", 3: "Goggles", 4: "Mask"}
    assert category_to_label == {1: 0, 2: 1, 3: 2, 4: 3, 5: 4}
    dataset = DetectionDataset(split, category_to_label, image_size=128)
    assert len(dataset) == 29
    assert dataset.object_counts().sum() == 207
    modes = set()
    for i in range(len(dataset)):
        sample = dataset[i]
        image = split.coco["images"][i]
        modes.add(split.open_image(i).mode)
        _, h, w = sample["pixel_values"].shape
        assert max(h, w) == 128
        assert abs(w / h - image["width"] / image["height"]) < 0.02
        assert (sample["boxes"] >= 0).all() and (sample["boxes"] <= 1).all()
    assert modes == {"RGB"}  # one of the PNGs is RGBA on disk


def test_cppe5_boxes_round_trip_to_original_pixels(cppe5_dir):
    split = load_coco_folder(cppe5_dir, "test")
    category_to_label, _ = label_maps(split.coco["categories"])
    sample = DetectionDataset(split, category_to_label, image_size=96)[0]
    image = split.coco["images"][0]
    expected = np.array([a["bbox"] for a in split.coco["annotations"] if a["image_id"] == image["id"]])
    size = np.array([image["width"], image["height"]])
    cxcywh = sample["boxes"].numpy()
    xywh = np.concatenate([(cxcywh[:, :2] - cxcywh[:, 2:] / 2) * size, cxcywh[:, 2:] * size], axis=1)
    np.testing.assert_allclose(xywh, expected, atol=1e-3)
    labels = [category_to_label[a["category_id"]] for a in split.coco["annotations"] if a["image_id"] == image["id"]]
    assert sample["class_labels"].tolist() == labels


def test_degenerate_boxes_are_clipped_or_dropped(synthetic_dir, tmp_path, caplog):
    coco = json.loads((synthetic_dir / "annotations" / "validation.json").read_text())
    first = coco["images"][0]
    coco["annotations"].append({"id": 10**6, "image_id": first["id"], "category_id": 1, "bbox": [10, 10, 0, 5],
                                "area": 0, "iscrowd": 0})
    coco["annotations"].append({"id": 10**6 + 1, "image_id": first["id"], "category_id": 1,
                                "bbox": [-5, 50, 20, 40], "area": 800, "iscrowd": 0})
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "validation.json").write_text(json.dumps(coco))
    (tmp_path / "images").symlink_to(synthetic_dir / "images")
    split = load_coco_folder(tmp_path, "validation")
    dataset = DetectionDataset(split, label_maps(coco["categories"])[0], image_size=64)
    assert "dropped 1 degenerate" in caplog.text
    boxes, _ = dataset.objects[0]
    clipped = boxes[-1]
    np.testing.assert_allclose(clipped, [0, 50, 15, 14])


def test_carved_validation_is_disjoint_and_seeded(synthetic_dir):
    train = load_coco_folder(synthetic_dir, "train")
    rest, held_out = carve_validation(train, 0.25, seed=1337)
    ids_rest = {i["id"] for i in rest.coco["images"]}
    ids_held = {i["id"] for i in held_out.coco["images"]}
    assert not ids_rest & ids_held and len(ids_rest | ids_held) == len(train.coco["images"])
    assert len(ids_held) == round(0.25 * len(train.coco["images"]))
    assert ids_held == {i["id"] for i in carve_validation(train, 0.25, seed=1337)[1].coco["images"]}
    assert all(a["image_id"] in ids_held for a in held_out.coco["annotations"])
    first = held_out.coco["images"][0]
    assert held_out.open_image(0).size == (first["width"], first["height"])


def test_augmentation_keeps_boxes_inside_and_is_seeded(synthetic_dir):
    split = load_coco_folder(synthetic_dir, "train")
    category_to_label, _ = label_maps(split.coco["categories"])
    runs = []
    for _ in range(2):
        torch.manual_seed(3)  # augmentation draws its seeds from torch's generator
        dataset = DetectionDataset(split, category_to_label, 64, train_augmentation())
        runs.append([dataset[i] for i in range(20)])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["boxes"], b["boxes"])
        assert (a["boxes"][:, :2] - a["boxes"][:, 2:] / 2 >= -1e-6).all()
        assert (a["boxes"][:, :2] + a["boxes"][:, 2:] / 2 <= 1 + 1e-6).all()


def test_eval_padding_adds_blank_fillers(synthetic_dir):
    split = load_coco_folder(synthetic_dir, "validation")
    dataset = DetectionDataset(split, label_maps(split.coco["categories"])[0], 64)
    padded = PaddedToMultiple(dataset, 7)
    assert len(padded) == 28 and len(dataset) == 24
    assert padded[23]["image_index"] == 23
    filler = padded[27]
    assert filler["image_index"] == -1 and len(filler["class_labels"]) == 0


@pytest.mark.parametrize("multiple", [1, 24])
def test_eval_padding_is_a_no_op_on_multiples(synthetic_dir, multiple):
    split = load_coco_folder(synthetic_dir, "validation")
    dataset = DetectionDataset(split, label_maps(split.coco["categories"])[0], 64)
    assert len(PaddedToMultiple(dataset, multiple)) == 24


def test_hub_split_in_the_cppe5_layout_becomes_a_coco_split():
    """The tests cannot reach the hub: an in-memory datasets split with CPPE-5's features stands in for its split."""
    from datasets import ClassLabel, Dataset, Features, Sequence, Value
    from datasets import Image as ImageFeature
    from PIL import Image

    names = ["Coverall", "Face_Shield", "Gloves", "Goggles", "Mask"]
    features = Features({
        "image_id": Value("int64"), "image": ImageFeature(), "width": Value("int32"), "height": Value("int32"),
        "objects": Sequence({"id": Value("int64"), "area": Value("int64"),
                             "bbox": Sequence(Value("float32"), length=4), "category": ClassLabel(names=names)}),
    })
    rgba = Image.new("RGBA", (40, 30), (10, 20, 30, 128))
    hub = Dataset.from_dict({
        "image_id": [7, 9], "image": [rgba, Image.new("RGB", (20, 20))], "width": [40, 20], "height": [30, 20],
        "objects": [{"id": [1, 2], "area": [20, 4], "bbox": [[1, 2, 5, 4], [0, 0, 2, 2]], "category": [4, 0]},
                    {"id": [3], "area": [9], "bbox": [[3, 3, 3, 3]], "category": [2]}],
    }, features=features)
    split = coco_from_hub_split(hub, "train")
    assert [c["name"] for c in sorted(split.coco["categories"], key=lambda c: c["id"])] == names
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in split.coco["annotations"]] == [
        (7, 4, [1, 2, 5, 4]), (7, 0, [0, 0, 2, 2]), (9, 2, [3, 3, 3, 3])]
    assert [(i["id"], i["width"], i["height"]) for i in split.coco["images"]] == [(7, 40, 30), (9, 20, 20)]
    image = split.open_image(0)
    assert image.mode == "RGB" and image.size == (40, 30)
