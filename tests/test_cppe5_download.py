"""`make cppe5` offline: a small archive in the CPPE-5 release layout, fetched by URL or path, checksum-checked,
unpacked into a COCO folder that validates."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from detr_ft.data import cppe5_download
from detr_ft.data.sources import load_coco_folder
from detr_ft.data.synthetic import write_synthetic_coco
from detr_ft.data.validation import validate_split


def release_folder(folder: Path) -> Path:
    """images/ and annotations/{train,test}.json, as the authors' archive holds them."""
    write_synthetic_coco(folder, num_train=6, num_validation=0, num_test=3, image_size=32, seed=0)
    (folder / "annotations" / "validation.json").unlink()
    return folder


def pack(folder: Path) -> Path:
    archive = folder.parent / "dataset.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "annotations", "annotations")
        tar.add(folder / "images", "images")
    return archive


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """dataset.tar.gz in the layout of the authors' archive."""
    return pack(release_folder(tmp_path_factory.mktemp("release") / "dataset"))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("address", ["file URL", "local path"])
def test_release_archive_is_unpacked_into_the_coco_folder_layout(release, tmp_path, address):
    url = release.as_uri() if address == "file URL" else str(release)
    output_dir = tmp_path / "cppe5"
    argv = ["--output_dir", str(output_dir), "--url", url, "--checksum", f"md5:{md5(release)}"]
    assert cppe5_download.main(argv) == 0
    assert sorted(p.name for p in (output_dir / "annotations").iterdir()) == ["test.json", "train.json"]
    for split, count in (("train", 6), ("test", 3)):
        assert len(validate_split(load_coco_folder(output_dir, split)).coco["images"]) == count


def test_an_archive_with_another_checksum_is_refused_and_nothing_written(release, tmp_path, capsys):
    output_dir = tmp_path / "cppe5"
    argv = ["--output_dir", str(output_dir), "--url", str(release), "--checksum", f"md5:{'0' * 32}"]
    assert cppe5_download.main(argv) == 2
    assert f"md5 {md5(release)}, expected {'0' * 32}" in capsys.readouterr().err
    assert not output_dir.exists()



def test_what_validation_repairs_is_reported_per_split_after_unpacking(tmp_path, capsys):
    """CPPE-5's json gives some images a size unlike their file: the report says how many each repair touched."""
    folder = release_folder(tmp_path / "dataset")
    train_json = folder / "annotations" / "train.json"
    coco = json.loads(train_json.read_text())
    wrong_size, unfit = coco["images"][0], coco["images"][1]  # 32 x 32 files
    wrong_size.update(width=10, height=10)  # its boxes, drawn on the file, reach past 10 px
    unfit.update(width=10, height=10)
    next(ann for ann in coco["annotations"] if ann["image_id"] == unfit["id"])["bbox"] = [20, 20, 30, 30]
    train_json.write_text(json.dumps(coco))
    archive = pack(folder)

    argv = ["--output_dir", str(tmp_path / "cppe5"), "--url", str(archive), "--checksum", f"md5:{md5(archive)}"]
    assert cppe5_download.main(argv) == 0
    out = capsys.readouterr().out
    assert ("train: 5 images kept; json width x height unlike the image's: 1 json width x height set to the "
            "image's, 1 left out with their annotations") in out
    assert "test: 3 images kept; json width x height unlike the image's: none" in out
