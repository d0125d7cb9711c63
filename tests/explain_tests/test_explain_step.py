"""The explain step in a real tiny pipeline: its numbers against independent library calls, and its invariants."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pipeline_tests._synthetic import make_csv, write_spec

from modelyard import explain as ex
from modelyard import pipeline
from modelyard.errors import DataError, SpecError
from modelyard.explain._step import ExplainOptions, explain_model, onnx_tree_model
from modelyard.models import load_predictor
from modelyard.pipeline import parse_spec

ROWS = [0, 5, 9]
TINY_MLP = {"max_epochs": 2, "hidden_sizes": [8]}


@pytest.fixture(autouse=True)
def one_openmp_thread() -> Iterator[None]:
    """Gradient boosting on a few hundred rows: OpenMP threads only contend on a busy machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three runs of one tiny pipeline: explain the GBM, then the MLP (upstream cached), then the MLP again."""
    tmp = tmp_path_factory.mktemp("explain_step")
    store = f"sqlite:///{tmp / 'metadata.db'}"
    csv = make_csv(tmp / "p.csv", n=500)
    common = {"rows": ROWS, "max_rows": 120, "shap_rows": 40, "top_k": 2}
    gbm_spec = write_spec(tmp / "gbm.yaml", csv, mlp=TINY_MLP, gbm={"max_iter": 10},
                          explain={**common, "model": "gbm", "methods": ["permutation", "shap", "pdp", "lime"]})
    mlp_spec = write_spec(tmp / "mlp.yaml", csv, mlp=TINY_MLP, gbm={"max_iter": 10},
                          explain={**common, "model": "mlp", "methods": ["shap", "ig"]})
    kw = {"store": store, "runs_dir": tmp / "runs", "quiet": True}
    gbm = pipeline.run(gbm_spec, **kw)
    mlp = pipeline.run(mlp_spec, **kw)
    again = pipeline.run(mlp_spec, **kw)
    return {"tmp": tmp, "csv": csv, "kw": kw, "gbm": gbm, "mlp": mlp, "again": again}


def _result(run: Any) -> dict[str, Any]:
    return json.loads((run.root / "explain" / "explain.json").read_text())


def _split(run: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(run.root / "data" / "test.parquet"), pd.read_parquet(run.root / "data" / "train.parquet")


def test_the_step_runs_after_evaluate_and_writes_json_and_plots(runs: dict[str, Any]) -> None:
    run = runs["gbm"]
    names = [s.name for s in run.steps]
    assert names.index("explain") == names.index("evaluate") + 1 and names[-1] == "report"
    result = _result(run)
    assert result["model"] == "gbm" and result["methods"] == ["permutation", "shap", "pdp", "lime"]
    assert [r["row"] for r in result["rows"]] == ROWS
    files = {p["file"] for p in result["plots"]}
    expected = {"importance.png", "shap_summary.png", "shap_importance.png", "dependence_1.png", "pdp_1.png",
                "row_0_shap.png", "row_9_lime.png"}
    assert expected <= files
    for name in files:
        assert (run.root / "explain" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    metrics = json.loads((run.root / "metrics.json").read_text())
    assert metrics["explain"]["shap"]["method"] == "tree_interventional"
    html = (run.root / "report.html").read_text()
    assert '<section id="explain">' in html and 'id="explain-rows"' in html


def test_permutation_and_pdp_equal_the_library_with_the_same_seed(runs: dict[str, Any]) -> None:
    run = runs["gbm"]
    result = _result(run)
    test, _ = _split(run)
    model = load_predictor(run.root / "train" / "gbm" / "model.onnx")
    rows = test.iloc[result["sample_rows"]].reset_index(drop=True)
    assert len(rows) == 120
    ref = ex.permutation_importance(model, rows, n_repeats=5, random_state=0)
    # Same shuffles, same model calls: identical up to float formatting in JSON (exact round trip).
    np.testing.assert_array_equal(np.array(result["permutation"]["importances"]), ref.importances)
    assert result["permutation"]["features"] == ref.features
    low, high = ref.interval()
    table = {r["feature"]: r for r in result["permutation"]["table"]}
    for j, f in enumerate(ref.features):
        assert table[f]["low"] == pytest.approx(low[j], abs=1e-15) and table[f]["high"] == pytest.approx(high[j], abs=1e-15)
    top = [r["feature"] for r in result["permutation"]["table"]][:2]
    assert [c["feature"] for c in result["pdp"]["features"]] == top
    for curve in result["pdp"]["features"]:
        pd_ref = ex.partial_dependence(model, rows[model.feature_names], curve["feature"], kind="both",
                                       grid_resolution=20)
        np.testing.assert_allclose(curve["average"], pd_ref.average, rtol=0, atol=1e-12)  # same calls, same means
        np.testing.assert_allclose(curve["ice"], pd_ref.individual[:, :30], rtol=0, atol=1e-12)


def test_gbm_tree_shap_is_efficient_and_equals_exact_shapley_of_the_log_odds(runs: dict[str, Any]) -> None:
    run = runs["gbm"]
    shap = _result(run)["shap"]
    test, train = _split(run)
    model = load_predictor(run.root / "train" / "gbm" / "model.onnx")
    values, base, pred = (np.array(shap[k], dtype=np.float64) for k in ("values", "base_values", "predictions"))
    assert shap["output_names"] == ["log-odds(yes)"] and set(ROWS) <= set(shap["rows"])
    # Efficiency: float64 sums of the same leaf values (1e-9 leaves room for summation order only).
    np.testing.assert_allclose(base + values.sum(axis=1), pred, rtol=0, atol=1e-9)
    # The trees read back from ONNX reproduce what ONNX Runtime serves (float32 probabilities: ~6e-8).
    served = model.predict_proba(test.iloc[shap["rows"]])[:, 1]
    np.testing.assert_allclose(1 / (1 + np.exp(-pred)), served, rtol=0, atol=1e-6)
    # Independent reference: exact interventional Shapley values of logit(predict_proba) by enumeration,
    # with the same background rows. logit of float32 probabilities moves by ~6e-8 / (p (1 - p)): 2e-5.
    pool = train.iloc[_result(run)["background_rows"]][model.feature_names]
    ref = ex.exact_shapley(model, test[model.feature_names], rows=shap["rows"], background=pool, n_background=20,
                           random_state=0, link="logit")
    np.testing.assert_allclose(values, ref.values, rtol=0, atol=2e-5)
    np.testing.assert_allclose(base, ref.base_values, rtol=0, atol=2e-5)


def test_per_row_tables_add_up_and_follow_the_chosen_rows(runs: dict[str, Any]) -> None:
    result = _result(runs["gbm"])
    test, _ = _split(runs["gbm"])
    for entry in result["rows"]:
        part = entry["explanations"]["shap"]
        total = sum(c["contribution"] for c in part["contributions"])
        assert part["base_value"] + total == pytest.approx(part["prediction"], abs=1e-9)  # float64 sum of 4 values
        got = {c["feature"]: c["value"] for c in part["contributions"]}
        assert got["age"] == test.loc[entry["row"], "age"] and got["sex"] == test.loc[entry["row"], "sex"]
        contributions = [abs(c["contribution"]) for c in part["contributions"]]
        assert contributions == sorted(contributions, reverse=True)
        assert "lime" in entry["explanations"]


def test_lime_equals_the_library(runs: dict[str, Any]) -> None:
    run = runs["gbm"]
    result = _result(run)
    test, train = _split(run)
    model = load_predictor(run.root / "train" / "gbm" / "model.onnx")
    pool = train.iloc[result["background_rows"]][model.feature_names]
    ref = ex.lime_tabular(model, test[model.feature_names], rows=ROWS, training=pool, n_samples=1000, random_state=0)
    np.testing.assert_allclose(result["lime"]["values"], ref.values, rtol=0, atol=1e-12)  # same draws, same fit


def test_mlp_exact_shapley_and_integrated_gradients(runs: dict[str, Any]) -> None:
    run = runs["mlp"]
    result = _result(run)
    assert result["model"] == "mlp" and "ig" in result["methods"]
    test, train = _split(run)
    model = load_predictor(run.root / "train" / "mlp" / "model.safetensors")
    shap = result["shap"]
    assert shap["method"] == "exact"  # 4 features <= exact_max_features
    pool = train.iloc[result["background_rows"]][model.feature_names]
    ref = ex.exact_shapley(model, test[model.feature_names], rows=shap["rows"], background=pool, n_background=20,
                           random_state=0)
    np.testing.assert_allclose(shap["values"], ref.values, rtol=0, atol=1e-12)  # the same computation
    values, base, pred = (np.array(shap[k], dtype=np.float64) for k in ("values", "base_values", "predictions"))
    # Efficiency: v(all) and predict_proba are the same float32 model outputs; 1e-6 covers float32 rounding.
    np.testing.assert_allclose(base + values.sum(axis=1), pred, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pred, model.predict_proba(test.iloc[shap["rows"]])[:, 1], rtol=0, atol=1e-7)
    ig = result["ig"]
    ref_ig = ex.integrated_gradients(model, test.iloc[ROWS][model.feature_names].reset_index(drop=True), steps=32,
                                     target=1)
    np.testing.assert_allclose(ig["values"], ref_ig.values, rtol=0, atol=1e-7)  # float32 gradients, same batch
    # Completeness: attributions sum to F(x) - F(x') up to the recorded quadrature gap.
    gap = np.array(ig["values"]).sum(axis=1) - (np.array(ig["predictions"]) - np.array(ig["base_values"]))
    np.testing.assert_allclose(gap, ig["delta"], rtol=0, atol=1e-6)
    assert np.abs(ig["delta"]).max() < 5e-3  # 32 Gauss-Legendre points on a small MLP
    assert {p["file"] for p in result["plots"]} >= {"row_0_ig.png", "row_5_shap.png"}


def test_unchanged_spec_reuses_the_explain_step(runs: dict[str, Any]) -> None:
    mlp = {s.name: s.status for s in runs["mlp"].steps}
    assert mlp["explain"] == "ran" and mlp["train.mlp"] == "cached" and mlp["evaluate"] == "cached"
    again = {s.name: s.status for s in runs["again"].steps}
    assert again["explain"] == "cached"
    assert _result(runs["again"]) == _result(runs["mlp"])


def test_a_row_out_of_range_fails_the_step_with_the_valid_range(runs: dict[str, Any]) -> None:
    spec = write_spec(runs["tmp"] / "bad.yaml", runs["csv"], mlp=TINY_MLP, gbm={"max_iter": 10},
                      explain={"rows": [0, 10_000], "methods": ["shap"]})
    n = len(pd.read_parquet(runs["gbm"].root / "data" / "test.parquet"))
    with pytest.raises(DataError, match=rf"Row 10000 is out of range: the test split has {n} rows "
                                        rf"\(valid rows: 0\.\.{n - 1}\)"):
        pipeline.run(spec, **runs["kw"])


def test_kernel_shap_path_equals_the_library(runs: dict[str, Any]) -> None:
    run = runs["mlp"]
    test, train = _split(run)
    model = load_predictor(run.root / "train" / "mlp" / "model.safetensors")
    options = ExplainOptions(methods=("shap",), rows=(1, 2), shap_rows=10, exact_max_features=2, kernel_samples=8)
    result = explain_model(model, test, train=train, options=options)
    shap = result["shap"]
    assert shap["method"] == "kernel"
    pool = train.iloc[result["background_rows"]][model.feature_names]
    ref = ex.kernel_shap(model, test[model.feature_names], rows=shap["rows"], background=pool, n_background=20,
                         n_samples=8, random_state=0)
    np.testing.assert_allclose(shap["values"], ref.values, rtol=0, atol=1e-12)  # same coalitions, same solve
    values, base, pred = (np.array(shap[k], dtype=np.float64) for k in ("values", "base_values", "predictions"))
    np.testing.assert_allclose(base + values.sum(axis=1), pred, rtol=0, atol=1e-6)  # efficiency is a constraint


def test_onnx_reader_declines_graphs_it_does_not_know(runs: dict[str, Any], tmp_path: Path) -> None:
    from modelyard.compress import export_onnx

    run = runs["mlp"]
    test, _ = _split(run)
    schema = load_predictor(run.root / "train" / "gbm" / "model.onnx").schema
    assert onnx_tree_model(run.root / "train" / "gbm" / "model.onnx", schema) is not None
    mlp = load_predictor(run.root / "train" / "mlp" / "model.safetensors")
    export_onnx(mlp, tmp_path / "mlp.onnx", sample=test[mlp.feature_names].head(50))
    assert onnx_tree_model(tmp_path / "mlp.onnx", schema) is None  # no TreeEnsemble: the step uses exact/Kernel SHAP


def test_ig_on_a_model_without_gradients_is_skipped_with_the_reason(runs: dict[str, Any]) -> None:
    result = _result(runs["gbm"])
    assert "ig" not in result["methods"]
    test, train = _split(runs["gbm"])
    model = load_predictor(runs["gbm"].root / "train" / "gbm" / "model.onnx")
    out = explain_model(model, test, train=train, options=ExplainOptions(methods=("ig",), rows=(0,)))
    assert out["methods"] == [] and out["skipped"][0]["method"] == "ig"
    assert "differentiable" in out["skipped"][0]["reason"] and "shap or lime" in out["skipped"][0]["reason"]


@pytest.mark.parametrize(("explain", "message"), [
    ({"methods": ["shap", "magic"]}, ("explain.methods: unknown explain method(s) ['magic']; known: permutation, "
                                      "shap, pdp, lime, ig, saliency")),
    ({"methods": ["saliency"]}, "explain.methods: saliency draws heatmaps of image models, but data.source 'x.csv' "
                                "is tabular; use ig"),
    ({"methods": "shap"}, "explain.methods: must be a list of methods, e.g. [shap]"),
    ({"rows": [0, -3]}, "explain.rows: row positions must be integers >= 0; got [-3]"),
    ({"rows": 4}, "explain.rows: must be a list of row positions, e.g. [4]"),
    ({"model": "xgb"}, "explain.model: no model 'xgb' in this pipeline; models are ['mlp', 'gbm']"),
    ({"background": 0}, "explain.background: Input should be greater than or equal to 1"),
    ({"metric": "magic_score"}, "explain.metric: unknown metric 'magic_score'"),
    ({"rowz": [1]}, "explain: unknown key 'rowz'; allowed keys:"),
])
def test_spec_errors_name_the_field(tmp_path: Path, explain: dict[str, Any], message: str) -> None:
    spec = {"name": "t", "data": {"source": "x.csv", "target": "y"}, "explain": explain}
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert message in str(err.value)


def test_spec_defaults(tmp_path: Path) -> None:
    spec = parse_spec({"name": "t", "data": {"source": "x.csv", "target": "y"}, "explain": {}})
    resolved = spec.resolved()["explain"]
    assert resolved["rows"] == [0] and resolved["methods"] is None and resolved["split"] == "test"
    assert resolved["max_rows"] == 500 and resolved["background"] == 20
    assert parse_spec({"name": "t", "data": {"source": "x.csv", "target": "y"}}).explain is None
