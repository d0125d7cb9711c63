"""The features step: selection or extraction between the data step and the models, end to end."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard import pipeline
from modelyard.compress import FeatureTransform
from modelyard.errors import SpecError
from modelyard.models import OnnxPredictor, load_predictor
from modelyard.pipeline import parse_spec

from ._synthetic import make_csv, write_spec

TINY_MLP = {"max_epochs": 2, "hidden_sizes": [8]}
RAW = ["age", "income", "group", "sex"]  # the synthetic CSV's feature columns (sex is pure noise)


@pytest.fixture(autouse=True)
def one_openmp_thread() -> Iterator[None]:
    """Gradient boosting on a few hundred rows: OpenMP threads only contend on a busy machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _features_section(html: str) -> str:
    return html[html.index('<section id="features">'):html.index('<section id="models">')]


def test_selection_feeds_the_models_and_is_cached(workdir: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    evil = "<script>alert(1)</script>"
    csv = make_csv(workdir / "p.csv", n=800, columns={"group": evil})
    spec = write_spec(workdir / "spec.yaml", csv, mlp=TINY_MLP, gbm={"max_iter": 10},
                      features={"method": "mutual_info", "k": "auto"})
    first = pipeline.run(spec, store=sqlite_url, quiet=True)
    assert [s.name for s in first.steps] == ["data", "features", "train.mlp", "train.gbm", "evaluate", "export",
                                             "report"]
    root = first.root
    found = json.loads((root / "features" / "features.json").read_text())
    raw = [evil if c == "group" else c for c in RAW]
    k, selected = found["k"], found["selected"]
    assert found["method"] == "mutual_info" and found["family"] == "selection"
    assert found["input_columns"] == raw and len(selected) == k and set(selected) <= set(raw)
    assert "sex" not in selected  # noise: validation accuracy does not need it
    assert found["chosen"]["score"] >= max(p["score"] for p in found["curve"]) - found["tolerance"]
    schema = json.loads((root / "features" / "schema.json").read_text())["schema"]
    assert [f["name"] for f in schema["features"]] == selected
    # The models see only the kept columns; the frames still hold every column (slices may name any).
    assert load_predictor(root / "train" / "mlp" / "model.safetensors").feature_names == selected
    assert load_predictor(root / "train" / "gbm" / "model.onnx").feature_names == selected
    assert OnnxPredictor(root / "model.onnx").feature_names == selected
    assert set(raw) <= set(pd.read_parquet(root / "features" / "test.parquet").columns)

    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["features"]["k"] == k and metrics["features"]["selected"] == selected
    assert metrics["features"]["serving"] == {"inputs": "raw", "transform": None}
    assert metrics["models"]["gbm"]["test"]["by_slice"]["sex"]  # a dropped column still slices
    html = (root / "report.html").read_text()
    section = _features_section(html)
    assert "mutual_info" in section and f"<strong>{k}</strong> column" in section
    assert len(re.findall(r'<img src="data:image/png;base64,', section)) == 2  # accuracy curve, size trade-off
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in section
    assert "Feature step (mutual\\_info)" in (root / "model_card.md").read_text()

    monkeypatch.setenv("COLUMNS", "200")  # one step per line
    second = pipeline.run(spec, store=sqlite_url, quiet=False)
    assert second.all_cached
    line = next(ln for ln in capsys.readouterr().err.splitlines() if re.search(r"↺ features\s+cached", ln))
    assert f"mutual_info: kept {k} of 4 columns" in line


def test_pca_model_onnx_takes_raw_columns(workdir: Path, sqlite_url: str) -> None:
    csv = make_csv(workdir / "p.csv", n=600)
    spec = write_spec(workdir / "spec.yaml", csv, features={"method": "pca", "variance": 0.9},
                      train={"models": {"mlp": {"family": "mlp", **TINY_MLP}}})
    result = pipeline.run(spec, store=sqlite_url, quiet=True)
    root = result.root
    transform = FeatureTransform.load(root / "features" / "transform.json")
    components = pd.read_parquet(root / "features" / "test.parquet")
    raw = pd.read_parquet(root / "data" / "test.parquet")[RAW]
    assert raw["income"].isna().any()  # missing numbers go through the front stage's fill
    np.testing.assert_allclose(components[list(transform.columns)].to_numpy(), transform.transform(raw), atol=1e-12)

    served = OnnxPredictor(root / "model.onnx")
    assert served.feature_names == RAW
    trained = load_predictor(root / "train" / "mlp" / "model.safetensors")
    assert trained.feature_names == list(transform.columns)
    np.testing.assert_allclose(served.predict_proba(raw), trained.predict_proba(components[trained.feature_names]),
                               atol=1e-5)
    export = json.loads((root / "export" / "export.json").read_text())
    assert export["inputs"] == "raw" and export["transform"] == {"method": "pca", "composed": True, "path": None}
    assert export["max_abs_diff"] < 1e-5 and export["input_columns"] == RAW
    section = _features_section((root / "report.html").read_text())
    assert len(re.findall(r'<img src="data:image/png;base64,', section)) == 3  # + explained variance
    assert "which takes the raw columns" in section


def test_nmf_writes_the_transform_beside_the_model(workdir: Path, sqlite_url: str) -> None:
    csv = make_csv(workdir / "p.csv", n=500)
    spec = write_spec(workdir / "spec.yaml", csv, features={"method": "nmf", "k": 3},
                      train={"models": {"gbm": {"family": "gbm", "max_iter": 10}}})
    root = pipeline.run(spec, store=sqlite_url, quiet=True).root
    transform = FeatureTransform.load(root / "transform.json")  # published beside model.onnx
    served = OnnxPredictor(root / "model.onnx")
    assert served.feature_names == ["nmf_1", "nmf_2", "nmf_3"] == list(transform.columns)
    raw = pd.read_parquet(root / "data" / "test.parquet")
    trained = load_predictor(root / "train" / "gbm" / "model.onnx")
    components = pd.read_parquet(root / "features" / "test.parquet")[trained.feature_names]
    np.testing.assert_allclose(served.predict_proba(transform.apply(raw)), trained.predict_proba(components),
                               atol=1e-6)
    html = (root / "report.html").read_text()
    assert "NMF has no ONNX form" in _features_section(html) and "apply <code>transform.json</code> first" in html


def test_a_k_the_data_cannot_have_is_a_clear_error(workdir: Path, sqlite_url: str) -> None:
    spec = write_spec(workdir / "spec.yaml", make_csv(workdir / "p.csv", n=300), features={"method": "anova", "k": 9})
    with pytest.raises(SpecError, match=r"features \(anova\): k=9 but the data has 4 feature columns"):
        pipeline.run(spec, store=sqlite_url, quiet=True)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"method": "lasso"}, "Invalid spec: features.method: unknown feature method 'lasso'; known: selection "
         "mutual_info, anova, chi2, rfe, l1, tree; extraction pca, ica, nmf (got \"lasso\")."),
        ({"method": "anova", "k": 0}, "Invalid spec: features.k: must be 'auto' or a positive number of columns or "
         "components (got 0)."),
        ({"method": "pca", "variance": 1.5}, "Invalid spec: features.variance: Input should be less than or equal "
         "to 1 (got 1.5)."),
        ({"method": "pca", "variance": 0}, "Invalid spec: features.variance: Input should be greater than 0 (got 0)."),
        ({"method": "pca", "k": "all"}, "Invalid spec: features.k: Input should be a valid integer, unable to parse "
         "string as an integer or Input should be 'auto' (got \"all\")."),
        ({"method": "pca", "target_size": 0}, "Invalid spec: features.target_size: Input should be greater than 0 "
         "(got 0)."),
        ({"method": "tree", "target_size": 50000}, "Invalid spec: features.target_size: only the extraction methods "
         "(pca, ica, nmf) choose k by model size; method 'tree' keeps raw columns. Remove target_size or use an "
         "extraction method."),
        ({"method": "pca", "k": 3, "target_size": 50000}, "Invalid spec: features.target_size: give k=3 or "
         "target_size=50000, not both: target_size chooses k. Set k: auto."),
        ({"method": "rfe", "model": "svm"}, "Invalid spec: features.model: Input should be 'linear' or 'gbm' "
         "(got \"svm\")."),
        ({"k": 3}, "Invalid spec: features.method: required field is missing."),
        ({"method": "pca", "n_components": 3}, "Invalid spec: features: unknown key 'n_components'; allowed keys: "
         "k, method, model, seed, target_size, tolerance, variance."),
    ],
)
def test_features_section_errors(section: dict, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "t", "data": {"source": "adult"}, "features": section})
    assert str(info.value) == message


def test_features_defaults_resolve() -> None:
    resolved = parse_spec({"name": "t", "data": {"source": "adult"}, "features": {"method": "ica"}}).resolved()
    assert resolved["features"] == {"method": "ica", "k": "auto", "variance": 0.95, "target_size": None,
                                    "tolerance": 0.005, "model": "linear", "seed": 0}
    assert parse_spec({"name": "t", "data": {"source": "adult"}}).resolved()["features"] is None
