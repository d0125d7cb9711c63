from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelyard.errors import StoreError
from modelyard.pipeline import ArtifactStore, atomic_path, sha256_file


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "", "a\\b", "a/./../..", "~/x", "a\x00b"])
def test_names_cannot_escape_the_run_folder(tmp_path: Path, name: str) -> None:
    store = ArtifactStore(tmp_path / "run")
    with pytest.raises(StoreError):
        store.write_text(name, "x")
    assert not (tmp_path / "x").exists()


def test_symlink_out_of_the_run_folder_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "out").symlink_to(tmp_path)
    with pytest.raises(StoreError, match="resolves outside the run folder"):
        ArtifactStore(run).write_text("out/evil.txt", "x")
    assert not (tmp_path / "evil.txt").exists()


def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            assert tmp.suffix == ".onnx"  # writers that check the suffix accept the temp name
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert dest.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_write_and_link(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "run")
    p = store.write_json("a/b.json", {"x": 1})
    assert p.read_text() == '{\n  "x": 1\n}\n'
    q = store.link(p, "top.json")
    assert sha256_file(q) == sha256_file(p)
    assert os.path.samefile(p, q)  # a hard link: no copy of large artifacts


def test_json_rejects_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ArtifactStore(tmp_path).write_json("m.json", {"x": float("nan")})
    assert not (tmp_path / "m.json").exists()
