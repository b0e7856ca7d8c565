"""`make cppe5`: the original CPPE-5 release (COCO json + images) unpacked into the --dataset_dir layout.

    python -m detr_ft.data.cppe5_download --output_dir data/cppe5 [--url URL_OR_PATH] [--checksum md5:HEX]

The hub's `cppe-5` was a loading script, which datasets >= 4 no longer runs; that script only downloaded the
authors' archive below, which holds `annotations/train.json`, `annotations/test.json` and `images/`. The archive is
checked against the MD5 the authors publish in the CPPE-5 README (github.com/Rishit-dagli/CPPE-Dataset) before
anything is unpacked; `--checksum sha256:HEX` (any hashlib algorithm) checks another copy. Writes
`output_dir/images/` and `output_dir/annotations/{train,test}.json`; then train with `--dataset_dir output_dir`
(the eval split is carved from train, as the HF guide does, or `--eval_split test`).

CPPE-5's json gives some images a width x height unlike their file: once unpacked, each split goes through the
validation training runs (`validation.validate_split`, which repairs them by what their boxes say), and what it
did is printed per split: the first thing a user reads about the real data is what training will change.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from detr_ft.data.size_repair import KIND_NAMES
from detr_ft.data.sources import DatasetError, load_coco_folder
from detr_ft.data.validation import validate_split

CPPE5_URL = "https://storage.googleapis.com/cppe-5/dataset.tar.gz"
CPPE5_CHECKSUM = "md5:f4e043f983cff94ef82ef7d57a879212"  # published beside the URL in the CPPE-5 README
SPLITS = ("train", "test")


@dataclass
class Cppe5Arguments:
    output_dir: str = field(default="data/cppe5", metadata={"help": "Folder to write images/ and annotations/ into."})
    url: str = field(default=CPPE5_URL, metadata={"help": "The release archive: a URL (https, file) or a local path."})
    checksum: str = field(default=CPPE5_CHECKSUM, metadata={"help": "<hashlib algorithm>:<hex digest> of the archive."})


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, destination: Path) -> Path:
    """The archive at `url` (a URL or a local path), copied to `destination`."""
    if Path(url).is_file():
        return Path(shutil.copyfile(url, destination))
    urllib.request.urlretrieve(url, destination)  # noqa: S310 - the user's URL; file:// on purpose (offline copies)
    return destination


def unpack_release(archive: Path, output_dir: Path, name: str) -> None:
    """Move the archive's images/ and annotations/{train,test}.json (at its top or one folder down) to output_dir;
    `name`: the archive as the user gave it, for messages."""
    with tempfile.TemporaryDirectory(dir=output_dir.parent) as scratch, tarfile.open(archive) as tar:
        tar.extractall(scratch, filter="data")  # the data filter refuses absolute paths, ../ and device files
        found = sorted(Path(scratch).glob("**/annotations/train.json"), key=lambda p: len(p.parts))
        root = found[0].parent.parent if found else Path(scratch)
        expected = [root / "images", *(root / "annotations" / f"{split}.json" for split in SPLITS)]
        missing = [str(path.relative_to(scratch)) for path in expected if not path.exists()]
        if missing:
            raise ValueError(f"{name} is not a CPPE-5 release: no {', '.join(missing)} in it")
        (output_dir / "annotations").mkdir(parents=True, exist_ok=True)
        shutil.move(root / "images", output_dir / "images")
        for split in SPLITS:
            shutil.move(root / "annotations" / f"{split}.json", output_dir / "annotations" / f"{split}.json")


def download_cppe5(output_dir: str | Path, url: str = CPPE5_URL, checksum: str = CPPE5_CHECKSUM) -> Path:
    """output_dir holding CPPE-5 in the COCO folder layout; ValueError when the archive's checksum differs."""
    output_dir = Path(output_dir)
    if all((output_dir / "annotations" / f"{split}.json").exists() for split in SPLITS):
        return output_dir
    if (output_dir / "images").exists():
        raise ValueError(f"{output_dir}/images exists without annotations/train.json and test.json: remove it")
    algorithm, _, expected = checksum.partition(":")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir.parent) as scratch:
        archive = fetch(url, Path(scratch) / "cppe-5.tar.gz")
        digest = file_digest(archive, algorithm)
        if digest != expected.lower():
            raise ValueError(f"{url}: {algorithm} {digest}, expected {expected}: a damaged or different archive "
                             "(download it again, or pass --checksum for a copy you trust)")
        try:
            unpack_release(archive, output_dir, url)
        except (EOFError, zlib.error, gzip.BadGzipFile, tarfile.TarError) as error:  # what truncation or damage raise
            raise ValueError(f"{url} is a damaged archive, it cannot be unpacked ({type(error).__name__}: {error}): "
                             "download it again (the CPPE-5 README publishes its MD5)") from error
    return output_dir


def size_repair_summary(output_dir: Path) -> list[str]:
    """Per split: how many images validation repaired or left out, by kind (DatasetError if it refuses a split)."""
    lines = []
    for split in SPLITS:
        validated = validate_split(load_coco_folder(output_dir, split))
        counts = Counter(record.repair for record in validated.size_repairs)
        done = ", ".join(f"{count} {KIND_NAMES[kind]}" for kind, count in counts.items())
        lines.append(f"  {split}: {len(validated.coco['images'])} images kept; json width x height unlike the "
                     f"image's: {done or 'none'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    (args,) = HfArgumentParser(Cppe5Arguments).parse_args_into_dataclasses(argv)
    try:
        output_dir = download_cppe5(args.output_dir, args.url, args.checksum)
    except OSError as error:  # urllib's URLError included: no network, no such file
        print(f"cannot fetch {args.url}: {error} (offline? copy the archive to this machine and pass --url PATH)",
              file=sys.stderr)
        return 1
    except (ValueError, tarfile.TarError) as error:
        print(error, file=sys.stderr)
        return 2
    try:
        summary = size_repair_summary(output_dir)
    except DatasetError as error:
        print(f"CPPE-5 is in {output_dir}, but training would refuse it: {error}", file=sys.stderr)
        return 2
    print(f"CPPE-5 in {output_dir}: train with --dataset_dir {output_dir}. Each image whose json size is not its "
          "own is repaired by what its boxes say, or left out (--on_size_mismatch refuse refuses instead; a run "
          "lists them in size_repairs.json):", *summary, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
