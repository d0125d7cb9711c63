"""Atomic file writes, shared by every stage that writes a file.

Write to a temporary file beside the destination, then ``os.replace`` it onto the
destination: a reader sees the old file or the whole new one, never a part, and a
crash or an error leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes"]


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``.

    The temporary file lives in the destination's folder, so the final ``os.replace``
    is atomic: readers see the old file or the whole new one, never a part. On an
    exception the temporary file is removed and ``dest`` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the suffix, so writers that check it (".onnx") accept it.
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=f".tmp{dest.suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # the bytes reach the disk before the rename makes them visible
            os.fsync(f.fileno())
        os.chmod(tmp_path, mode)  # mkstemp makes 0600; artifacts and reports are meant to be shared
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically and return ``dest`` as a Path."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def directory_writer(folder: str | os.PathLike[str]) -> Any:
    """``writer(name)``: a context manager yielding a temporary path that becomes ``folder/name`` atomically.

    The same shape as a pipeline step's ``ctx.output``, so one function writes a step's
    files and a command's files.
    """
    root = Path(folder)

    @contextlib.contextmanager
    def put(name: str) -> Iterator[Path]:
        with atomic_path(root / name) as tmp:
            yield tmp

    return put

