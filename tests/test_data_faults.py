"""Faults at the data's edge, one table: each is answered with one line that names the file, the right category of
fault and the right fix (a DatasetError, which the training entry turns into exit 2, or the command's own exit 2),
never with a traceback or another fault's advice."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from detr_ft.config import DataArguments
from detr_ft.data import cppe5_download
from detr_ft.data.prepare import validated_splits
from detr_ft.data.sources import DatasetError
from detr_ft.data.synthetic import write_synthetic_coco

NOBODY = 65534  # the unprivileged user of Debian-like systems
Answer = tuple[str, str]  # (outcome: "DatasetError", "exit 2" or "accepted", message)


@pytest.fixture(scope="module")
def good_dir(synthetic_coco) -> Path:
    return synthetic_coco(num_train=12, num_validation=4, image_size=64, seed=0)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder any user may enter (pytest's tmp_path is its owner's alone): an unprivileged reader works in it."""
    path = Path(tempfile.mkdtemp())
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def as_unprivileged_user(reader: Callable[[], Answer]) -> Answer:
    """reader()'s answer as a user without read permission. Root reads a file whatever its mode, so as root the
    reader runs in a forked child whose user is nobody, after one run as root: nobody cannot read the interpreter's
    own files, so whatever the reader imports lazily must be imported first, and a failed import stays in the child."""
    if os.geteuid() != 0:
        return reader()
    reader()
    readable, writable = os.pipe()
    child = os.fork()
    if child == 0:  # the child: never returns into pytest
        try:
            os.close(readable)
            try:
                os.setuid(NOBODY)
                answer = reader()
            except PermissionError:
                answer = ("no setuid", "")
            os.write(writable, json.dumps(answer).encode())
        finally:
            os._exit(0)
    os.close(writable)
    with os.fdopen(readable, "rb") as pipe:
        answer = tuple(json.loads(pipe.read() or b'["child died", ""]'))
    os.waitpid(child, 0)
    if answer[0] == "no setuid":
        pytest.skip("running as root without the right to change user: a mode-000 file stays readable to root")
    return answer


def read_splits(folder: Path) -> Answer:
    """What training answers about `folder`: validated_splits, whose DatasetError the entry exits 2 with."""
    try:
        validated_splits(DataArguments(dataset_dir=str(folder)))
    except DatasetError as error:
        return "DatasetError", str(error)
    return "accepted", ""


def copy_of(good_dir: Path, where: Path) -> tuple[Path, dict]:
    folder = Path(shutil.copytree(good_dir, where / "data"))
    folder.chmod(0o755)  # copied from a folder private to its owner
    return folder, json.loads((folder / "annotations" / "train.json").read_text())


def unreadable_image(good_dir: Path, where: Path) -> tuple[Callable[[], Answer], tuple[str, ...]]:
    folder, coco = copy_of(good_dir, where)
    name = coco["images"][3]["file_name"]
    (folder / "images" / name).chmod(0)

    return (lambda: as_unprivileged_user(lambda: read_splits(folder))), ("permission denied", name, "chmod")


def unreadable_json(good_dir: Path, where: Path) -> tuple[Callable[[], Answer], tuple[str, ...]]:
    folder, _ = copy_of(good_dir, where)
    (folder / "annotations" / "train.json").chmod(0)
    return (lambda: as_unprivileged_user(lambda: read_splits(folder))), (
        f"{folder / 'annotations' / 'train.json'} cannot be read: permission denied", "chmod")


def one_file_under_two_ids(good_dir: Path, where: Path) -> tuple[Callable[[], Answer], tuple[str, ...]]:
    folder, coco = copy_of(good_dir, where)
    first, second = coco["images"][2], coco["images"][5]
    second["file_name"] = f"./{first['file_name']}"  # the same file, spelled otherwise
    (folder / "annotations" / "train.json").write_text(json.dumps(coco))
    return (lambda: read_splits(folder)), ("listed under more than one image id", first["file_name"],
                                           f"ids {first['id']}, {second['id']}")


def link_out_of_the_dataset(good_dir: Path, where: Path) -> tuple[Callable[[], Answer], tuple[str, ...]]:
    folder, coco = copy_of(good_dir, where)
    name = coco["images"][0]["file_name"]
    outside = where / "elsewhere" / name
    outside.parent.mkdir()
    shutil.move(folder / "images" / name, outside)
    (folder / "images" / name).symlink_to(outside)
    return (lambda: read_splits(folder)), ("symbolic links to files outside it", f"{name} -> {outside}",
                                           "--allow_external_images")


def truncated_archive(good_dir: Path, where: Path) -> tuple[Callable[[], Answer], tuple[str, ...]]:
    """`make cppe5` on a copy cut short, whose own checksum is given (the published one would refuse it first)."""
    release = write_synthetic_coco(where / "release", num_train=4, num_validation=0, num_test=2, image_size=32, seed=0)
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w:gz") as tar:
        tar.add(release / "annotations", "annotations")
        tar.add(release / "images", "images")
    archive = where / "dataset.tar.gz"
    archive.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    argv = ["--output_dir", str(where / "cppe5"), "--url", str(archive),
            "--checksum", f"md5:{hashlib.md5(archive.read_bytes()).hexdigest()}"]

    def run() -> Answer:
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = cppe5_download.main(argv)
        return f"exit {code}", stderr.getvalue()

    return run, (f"{archive} is a damaged archive", "EOFError", "download it again")


FAULTS = {  # fault -> (builder, outcome, words that must not be in the answer's line)
    "image file without read permission": (unreadable_image, "DatasetError", ("truncated", "re-export")),
    "annotation json without read permission": (unreadable_json, "DatasetError", ()),
    "one image file under two image ids": (one_file_under_two_ids, "DatasetError", ()),
    "symbolic link in images/ to a file outside the dataset": (link_out_of_the_dataset, "DatasetError", ()),
    "make cppe5 on a truncated archive": (truncated_archive, "exit 2", ("Traceback",)),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_is_answered_in_one_line_of_its_own_category(good_dir, open_dir, fault):
    build, outcome, wrong_words = FAULTS[fault]
    run, words = build(good_dir, open_dir)
    got, message = run()
    assert got == outcome, message
    lines = [line for line in message.splitlines() if words[0] in line]
    assert len(lines) == 1, message
    assert all(word in lines[0] for word in words), lines[0]
    assert not any(word in lines[0] for word in wrong_words), lines[0]
    assert "Traceback" not in message


def test_a_link_out_of_images_is_read_when_external_images_are_allowed(good_dir, open_dir):
    link_out_of_the_dataset(good_dir, open_dir)
    train, _ = validated_splits(DataArguments(dataset_dir=str(open_dir / "data"), allow_external_images=True))
    assert len(train.coco["images"]) == 12


def test_an_images_folder_that_is_itself_a_link_is_the_images_folder(good_dir, open_dir):
    """Only links that leave images/ are refused: a dataset may keep its whole images/ folder elsewhere."""
    (open_dir / "annotations").mkdir()
    shutil.copy(good_dir / "annotations" / "train.json", open_dir / "annotations")
    shutil.copy(good_dir / "annotations" / "validation.json", open_dir / "annotations")
    (open_dir / "images").symlink_to(good_dir / "images")
    train, _ = validated_splits(DataArguments(dataset_dir=str(open_dir)))
    assert len(train.coco["images"]) == 12
