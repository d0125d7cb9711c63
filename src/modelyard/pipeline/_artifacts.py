"""The artifact store: one folder per run, atomic writes, names that cannot escape it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from modelyard._atomic import atomic_path
from modelyard.data._download import sha256_file
from modelyard.errors import StoreError

__all__ = ["ArtifactStore", "sha256_file", "atomic_path", "safe_relpath"]

def safe_relpath(name: str) -> PurePosixPath:
    """Check that an artifact name is a plain relative path and return it.

    Rejects absolute paths, ``..`` parts, backslashes, NUL bytes and empty names, so
    no artifact can be written outside its run folder.
    """
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise StoreError(f"Invalid artifact name {name!r}: use a relative path such as 'train/model.onnx'.")
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or name.startswith("~"):
        raise StoreError(f"Artifact name {name!r} escapes the run folder; use a relative path without '..'.")
    return p


class ArtifactStore:
    """Files of one run under ``root`` (``runs/<run-id>``).

    Every write goes through :func:`atomic_path`; every name through
    :func:`safe_relpath` plus a resolved-path check, so symlinks cannot lead out either.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        rel = safe_relpath(name)
        root = self.root.resolve()
        full = (root / rel).resolve()
        if not full.is_relative_to(root):
            raise StoreError(f"Artifact name {name!r} resolves outside the run folder {self.root}.")
        return full

    @contextlib.contextmanager
    def open_atomic(self, name: str) -> Iterator[Path]:
        with atomic_path(self.path(name)) as tmp:
            yield tmp

    def write_bytes(self, name: str, data: bytes) -> Path:
        with self.open_atomic(name) as tmp:
            tmp.write_bytes(data)
        return self.path(name)

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")

    def link(self, src: str | os.PathLike[str], name: str) -> Path:
        """Place an existing file at ``name``: a hard link where possible, else an atomic copy."""
        dest = self.path(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            tmp.unlink()
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
        return dest
