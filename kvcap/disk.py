"""A full disk, said with the file that could not be written and the space left, instead of a bare errno.

pyarrow ("Error writing bytes to file"), torch ("PytorchStreamWriter failed writing file data/0") and safetensors
name no file when the disk fills; a run that dies hours in must say which folder needs room.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded", "file write failed", "File too large")


class DiskFullError(OSError):
    """Writing ``path`` failed because its file system has no room; the message says how much is left."""


# torch's writer reports a full disk as "basic_ios::clear: iostream error" or "unexpected pos"; where an error says
# nothing recognisable, this little room left on the file system tells it apart from other failures.
NEARLY_FULL_BYTES = 16 << 20


def is_disk_full(error: BaseException, path: str | os.PathLike | None = None) -> bool:
    """Whether ``error`` (or what caused it) is a write that failed for want of space: by its errno or message,
    or, given the ``path`` written, by the file system having less than 16 MiB left."""
    if path is not None:
        free = free_bytes(path)
        if free is not None and free < NEARLY_FULL_BYTES:
            return True
    while error is not None:
        if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
            return True
        if any(text in str(error) for text in _FULL_MESSAGES):
            return True
        error = error.__cause__ or error.__context__
    return False


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full_error(path: str | os.PathLike, what: str, error: BaseException) -> DiskFullError:
    """A :class:`DiskFullError` naming ``what`` was being written at ``path`` and the space left there."""
    free = free_bytes(path)
    left = "unknown" if free is None else f"{free / 1e6:,.1f} MB"
    full = DiskFullError(
        errno.ENOSPC,
        f"the disk is full: writing {what} at {path} failed ({type(error).__name__}: {error}); {left} left there. "
        "Free space or point the output elsewhere, then run the same command again",
    )
    full.filename = str(path)
    return full


@contextmanager
def naming_a_full_disk(
    path: str | os.PathLike, what: str, catch: type[BaseException] | tuple[type[BaseException], ...] = Exception
) -> Iterator[None]:
    """Turn a ``catch`` error raised inside the block for want of space at ``path`` into a :class:`DiskFullError`
    that names ``what`` and ``path``; any other error passes unchanged."""
    try:
        yield
    except catch as error:
        if is_disk_full(error, path):
            raise disk_full_error(path, what, error) from error
        raise
