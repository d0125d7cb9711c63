"""The pipeline end to end on a small CSV: outputs, caching, lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard import pipeline
from modelyard.pipeline import MetadataStore
from modelyard.pipeline._lineage import lineage_summary, resolve_artifact

from ._synthetic import make_csv, write_spec

STEPS = ["data", "train.mlp", "train.gbm", "evaluate", "export", "report"]


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_run_cache_and_lineage(workdir: Path, store_url: str) -> None:
    csv = make_csv(workdir / "people.csv")
    spec = write_spec(workdir / "spec.yaml", csv)
    first = pipeline.run(spec, store=store_url, quiet=True)
    assert [s.name for s in first.steps] == STEPS
    assert all(s.status == "ran" for s in first.steps)
    for name in ("report.html", "metrics.json", "model.onnx", "model_card.md", "spec.yaml",
                 "data/train.parquet", "train/mlp/model.safetensors", "train/gbm/model.onnx"):
        assert (first.root / name).is_file(), name
    metrics = json.loads((first.root / "metrics.json").read_text())
    assert set(metrics["models"]) == {"mlp", "gbm"}
    assert metrics["chosen"]["model"] in {"mlp", "gbm"}
    assert metrics["models"]["gbm"]["test"]["overall"]["count"] == 375  # 25% of 1,500 rows

    # An unchanged re-run reuses every step, in a new run folder of its own.
    second = pipeline.run(spec, store=store_url, quiet=True)
    assert second.run_id != first.run_id
    assert [s.status for s in second.steps] == ["cached"] * len(STEPS)
    assert all(s.cached_from_run == first.run_id for s in second.steps)
    assert (second.root / "model.onnx").read_bytes() == (first.root / "model.onnx").read_bytes()

    # Changing one step's config re-runs it and the steps after it, and only those.
    write_spec(spec, csv, gbm={"max_iter": 25})
    third = pipeline.run(spec, store=store_url, quiet=True)
    assert {s.name: s.status for s in third.steps} == {
        "data": "cached", "train.mlp": "cached", "train.gbm": "ran",
        "evaluate": "ran", "export": "ran", "report": "ran",
    }

    with MetadataStore(store_url) as store:
        assert store.check() == []
        art = resolve_artifact(store, str(third.root / "model.onnx"))
        summary = lineage_summary(store, store.lineage(art.id))
    from modelyard.data import sha256_file

    assert summary["data"] == [{"name": "people.csv", "uri": str(csv), "sha256": sha256_file(csv),
                                "bytes": csv.stat().st_size}]
    assert summary["spec"]["pipeline"] == "synthetic"
    assert summary["run"] == third.run_id
    steps = {s["step"]: s for s in summary["steps"]}
    assert set(steps) == set(STEPS) - {"report"}  # the model does not depend on the report
    assert steps["data"]["status"] == "cached" and steps["data"]["cached_from_run"] == first.run_id


def test_no_cache_runs_everything(workdir: Path, sqlite_url: str) -> None:
    spec = write_spec(workdir / "spec.yaml", make_csv(workdir / "p.csv", n=400))
    pipeline.run(spec, store=sqlite_url, quiet=True)
    again = pipeline.run(spec, store=sqlite_url, quiet=True, use_cache=False)
    assert all(s.status == "ran" for s in again.steps)


def test_edited_artifact_is_not_reused(workdir: Path, sqlite_url: str) -> None:
    spec = write_spec(workdir / "spec.yaml", make_csv(workdir / "p.csv", n=400))
    first = pipeline.run(spec, store=sqlite_url, quiet=True)
    report = first.root / "report" / "report.html"
    report.unlink()  # a damaged cache entry must not be reused
    (first.root / "report.html").unlink()
    second = pipeline.run(spec, store=sqlite_url, quiet=True)
    assert {s.name: s.status for s in second.steps}["report"] == "ran"
    assert (second.root / "report.html").is_file()


def test_report_escapes_strings_from_data(workdir: Path, sqlite_url: str) -> None:
    evil = "<script>alert(1)</script>"
    csv = make_csv(workdir / "p.csv", n=400, columns={"group": evil})
    spec = write_spec(workdir / "spec.yaml", csv)
    result = pipeline.run(spec, store=sqlite_url, quiet=True)
    html = (result.root / "report.html").read_text()
    assert evil not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    card = (result.root / "model_card.md").read_text()
    assert evil not in card


def test_regression_csv_selects_by_rmse(workdir: Path, sqlite_url: str) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 600
    frame = pd.DataFrame({"x": rng.normal(size=n), "zone": rng.choice(["n", "s"], n)})
    frame["price"] = 3 * frame["x"] + np.where(frame["zone"] == "n", 10.0, -10.0) + rng.normal(size=n) + 1000
    frame.to_csv(workdir / "houses.csv", index=False)
    spec = write_spec(workdir / "spec.yaml", workdir / "houses.csv",
                      data={"source": "houses.csv", "target": "price", "split": {"test": 0.2}},
                      evaluate={"slices": ["zone"]})
    result = pipeline.run(spec, store=sqlite_url, quiet=True)
    metrics = json.loads((result.root / "metrics.json").read_text())
    assert metrics["data"]["task"] == "regression"
    assert metrics["chosen"]["metric"] == "rmse" and metrics["chosen"]["mode"] == "min"
    best = min(metrics["models"], key=lambda m: metrics["models"][m]["valid"]["overall"]["rmse"])
    assert metrics["chosen"]["model"] == best
    assert set(metrics["models"]["gbm"]["test"]["by_slice"]["zone"]) == {"n", "s"}
