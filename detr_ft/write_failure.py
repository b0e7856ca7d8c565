"""A write that failed, told in one line: where, why (a full disk, a folder that is not writable), the free space
there and what to do; None for any other error, which is a bug to show in full rather than a disk to free.

Libraries report a full disk their own way: the OS error (ENOSPC, EDQUOT), torch.save's C++ writer without it
("basic_ios::clear: iostream error", "file write failed"), safetensors' Rust writer as text ("No space left on device
(os error 28)"). A folder that is not writable (a read-only mount, no permission) counts only for a path under the
folder being written, so that a file read elsewhere that cannot be opened is not taken for a write.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
DISK_FULL_MESSAGES = ("iostream error", "file write failed", "No space left on device")


def one_line(error: BaseException) -> str:
    """`error` as `Type: message` on one line (library messages span several)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def causes(error: BaseException) -> list[BaseException]:
    """`error` and the errors it was raised from or during: torch.save's "unexpected pos" error comes from the
    stream's "iostream error"."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def is_disk_full(error: BaseException) -> bool:
    return any((isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS)
               or any(text in str(cause) for text in DISK_FULL_MESSAGES) for cause in causes(error))


def is_not_writable(error: BaseException, folder: str | Path) -> bool:
    """A refused write (read-only file system, no permission) of a file under `folder`."""
    if not (isinstance(error, OSError) and error.errno in NOT_WRITABLE_ERRNOS and error.filename):
        return False
    return Path(error.filename).resolve().is_relative_to(Path(folder).resolve())


def free_mib(path: str | Path) -> float:
    """Free space of the file system holding `path` (its nearest existing folder), in MiB."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 2**20


def describe_write_failure(error: BaseException, where: str, folder: str | Path, fix: str) -> str | None:
    """One line for `error` raised while writing into `folder` (named as `where`, e.g. "--output_dir out"), ending with
    the remedy for its cause and `fix` (what else to do, what a rerun keeps); None when it is not a failed write."""
    if is_disk_full(error):
        cause, remedy = "most likely the disk is full", "free space"
    elif is_not_writable(error, folder):
        cause, remedy = "it is not writable", "make it writable"
    else:
        return None
    return (f"writing to {where} failed, {cause} ({free_mib(folder):.0f} MiB free there): {one_line(error)}. "
            f"{remedy.capitalize()} or {fix}")
