"""The metadata store, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.errors import StoreError
from modelyard.pipeline import MetadataStore


def _file(tmp_path: Path, name: str, data: bytes) -> dict:
    import hashlib

    p = tmp_path / name
    p.write_bytes(data)
    return dict(name=name, uri=str(p), type="file", digest=hashlib.sha256(data).hexdigest(), size=len(data))


def test_run_execution_artifacts_and_lineage(store_url: str, tmp_path: Path) -> None:
    with MetadataStore(store_url) as store:
        store.start_run("r1", pipeline="p", spec={"a": 1}, spec_digest="s" * 64, root=str(tmp_path))
        src = store.add_artifact(name="d/raw.csv", uri="/data/raw.csv", type="source", digest="a" * 64, size=3)
        assert store.add_artifact(name="d/raw.csv", uri="/data/raw.csv", type="source", digest="a" * 64,
                                  size=3) == src  # registered once
        e1 = store.start_execution("r1", "data", cache_key="k1", code_version="v", config={"x": 1})
        (clean,) = store.finish_execution(e1, inputs=[("source", src.id)],
                                          outputs=[("clean", _file(tmp_path, "clean.parquet", b"clean"))])
        e2 = store.start_execution("r1", "train", cache_key="k2", code_version="v", config={})
        (model,) = store.finish_execution(e2, inputs=[("train", clean.id)],
                                          outputs=[("model", _file(tmp_path, "model.onnx", b"model"))],
                                          figures={"acc": 0.9})
        store.finish_run("r1", "succeeded")

        tree = store.lineage(model.id)
        assert tree.execution.step == "train" and tree.run.id == "r1"
        assert [p.artifact.name for p in tree.parents] == ["clean.parquet"]
        assert tree.parents[0].execution.step == "data"
        assert tree.parents[0].parents[0].artifact.digest == "a" * 64
        assert [c.id for c in store.cache_candidates("train", "k2")] == [e2]
        assert store.cache_candidates("train", "other") == []
        assert store.executions("r1")[1].figures == {"acc": 0.9}
        assert store.get_run("r").id == "r1"  # unique prefix
        assert store.check() == []


def test_failed_transaction_records_nothing(store_url: str, tmp_path: Path) -> None:
    """Outputs and events of an execution are one transaction: a failure midway leaves none."""
    with MetadataStore(store_url) as store:
        store.start_run("r1", pipeline="p", spec={}, spec_digest="s", root=str(tmp_path))
        e = store.start_execution("r1", "data", cache_key="k", code_version="v", config={})

        def outputs():
            yield ("a", _file(tmp_path, "a.bin", b"a"))
            raise RuntimeError("killed")

        with pytest.raises(RuntimeError):
            store.finish_execution(e, outputs=outputs())
        assert store.find_artifacts(uri=str(tmp_path / "a.bin")) == []
        assert store.execution(e).status == "running"
        assert store.cache_candidates("data", "k") == []


def test_reconcile_marks_runs_of_dead_processes(store_url: str, tmp_path: Path) -> None:
    # A real process that starts a run and an execution, then dies without finishing.
    code = (
        "import sys; from modelyard.pipeline import MetadataStore; s = MetadataStore(sys.argv[1]);"
        "s.start_run('dead', pipeline='p', spec={}, spec_digest='s', root='.');"
        "s.start_execution('dead', 'train', cache_key='k', code_version='v', config={})"
    )
    subprocess.run([sys.executable, "-c", code, store_url], check=True)
    with MetadataStore(store_url) as store:
        store.start_run("alive", pipeline="p", spec={}, spec_digest="s", root=str(tmp_path))
        assert store.get_run("dead").status == "running"
        assert store.check() == []  # running under a running run is not (yet) a problem
        assert store.reconcile() == ["dead"]
        assert store.get_run("dead").status == "aborted"
        assert store.get_run("alive").status == "running"  # this process is alive
        assert [e.status for e in store.executions("dead")] == ["aborted"]
        assert store.check() == []


def test_check_finds_missing_files(store_url: str, tmp_path: Path) -> None:
    with MetadataStore(store_url) as store:
        store.start_run("r1", pipeline="p", spec={}, spec_digest="s", root=str(tmp_path))
        e = store.start_execution("r1", "data", cache_key="k", code_version="v", config={})
        (a,) = store.finish_execution(e, outputs=[("a", _file(tmp_path, "a.bin", b"abc"))])
        Path(a.uri).unlink()
        assert store.check() == [f"artifact {a.id} (a.bin) is recorded but {a.uri} is missing"]


def test_unknown_run_and_bad_url(sqlite_url: str) -> None:
    with MetadataStore(sqlite_url) as store:
        with pytest.raises(StoreError, match="No run 'nope'.*modelyard runs list"):
            store.get_run("nope")
    with pytest.raises(StoreError, match="Invalid metadata store URL 'not a url'"):
        MetadataStore("not a url")
    with pytest.raises(StoreError, match="Cannot open the metadata store at postgresql\\+psycopg://u:\\*\\*\\*@127.0.0.1:1/x"):
        MetadataStore("postgresql://u:secret@127.0.0.1:1/x")
