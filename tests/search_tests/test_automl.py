"""Tabular AutoML: the linear family, ensemble selection, ONNX ensembles, the time budget, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.compress import export_onnx
from modelyard.data import from_frame
from modelyard.errors import SpecError
from modelyard.models import GBMConfig, MLPConfig, OnnxPredictor, fit_gbm
from modelyard.search._automl import (
    EnsemblePredictor,
    LinearConfig,
    _stack_features,
    automl,
    ensemble_selection,
    fit_linear,
)

from .conftest import make_frame

#: Parity bound of an exported model with its in-memory self: ONNX Runtime runs the same
#: arithmetic in float32 (the members' own exports differ by about 1e-7), so 1e-5 leaves a
#: 100x margin while any wiring mistake (a wrong weight, a swapped member) moves outputs by far more.
ATOL = 1e-5
FAST_MLP = {"max_epochs": 4, "patience": 2}


def _rows_with_gaps(split, n: int = 200) -> pd.DataFrame:
    """Raw rows with a missing number, a missing category and an unseen one, to exercise every input path."""
    rows = split.X.head(n).copy()
    rows.iloc[0, rows.columns.get_loc("w")] = np.nan
    rows["cat"] = rows["cat"].astype(object)
    rows.iloc[1, rows.columns.get_loc("cat")] = None
    rows.iloc[2, rows.columns.get_loc("cat")] = "never-seen"
    return rows


def _multiclass() -> pd.DataFrame:
    frame = make_frame(n=500, seed=3, regression=True)
    frame["label"] = pd.cut(frame["label"], [-np.inf, -0.3, 0.8, np.inf], labels=["lo", "mid", "hi"]).astype(str)
    return frame


# -- the linear family ------------------------------------------------------------------
@pytest.mark.parametrize("task", ["binary", "regression"])
def test_linear_family_matches_scikit_learn(task: str) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    data = from_frame(make_frame(n=800, regression=task == "regression"), target="label",
                      task="regression" if task == "regression" else None)
    config = LinearConfig(C=0.5, alpha=2.0, log_transform=False)
    ours = fit_linear(data.train, None, config)
    numeric, categorical = data.schema.numeric_names, data.schema.categorical_names
    prep = ColumnTransformer([("num", StandardScaler(), numeric),
                              ("cat", OneHotEncoder(handle_unknown="ignore"), categorical)])
    estimator = LogisticRegression(C=0.5, max_iter=1000) if task == "binary" else Ridge(alpha=2.0)
    reference = make_pipeline(prep, estimator).fit(data.train.X, data.train.y)
    if task == "binary":
        theirs = reference.predict_proba(data.test.X)
        mine = ours.predict_proba(data.test.X)
        assert np.mean(mine.argmax(1) == data.test.y) == np.mean(reference.predict(data.test.X) == data.test.y)
        # Same model: only lbfgs' stopping point differs.
        np.testing.assert_allclose(mine, theirs, atol=1e-3)
    else:
        np.testing.assert_allclose(ours.predict(data.test.X), reference.predict(data.test.X), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("frame", ["binary", "multiclass", "regression"])
def test_linear_onnx_parity(frame: str, tmp_path: Path) -> None:
    if frame == "multiclass":
        data = from_frame(_multiclass(), target="label")
    else:
        data = from_frame(make_frame(n=400, regression=frame == "regression"), target="label",
                          task="regression" if frame == "regression" else None)
    # A heavy-tailed non-negative column, so the log transform is in the graph too.
    model = fit_linear(data.train, None, LinearConfig(C=2.0, log_transform=True))
    rows = _rows_with_gaps(data.test)
    result = export_onnx(model, tmp_path / "linear.onnx", sample=rows)
    served = OnnxPredictor(tmp_path / "linear.onnx")
    if frame == "regression":
        assert np.max(np.abs(served.predict(rows) - model.predict(rows))) < ATOL * max(1, np.abs(model.predict(rows)).max())
    else:
        assert np.max(np.abs(served.predict_proba(rows) - model.predict_proba(rows))) < ATOL
    assert result.max_abs_diff < ATOL


def test_linear_log_transform_is_exported() -> None:
    frame = make_frame(n=400)
    frame["money"] = np.random.default_rng(0).lognormal(8, 2, len(frame))  # skewness far above 2
    data = from_frame(frame, target="label")
    model = fit_linear(data.train, None, LinearConfig(log_transform=True))
    assert model.log_mask.tolist() == [name == "money" for name in data.schema.numeric_names]


# -- ensemble selection -----------------------------------------------------------------
def test_caruana_weights_on_a_hand_checked_example() -> None:
    y = np.array([0.0, 0.0])
    a, b, c = np.array([1.0, 1.0]), np.array([-2.0, -2.0]), np.array([3.0, -3.0])
    # step 1: the best single model, A (rmse 1)
    # step 2: A+A -> rmse 1, A+B -> mean [-0.5, -0.5], rmse 0.5, A+C -> rmse 1.58: add B
    # step 3: 2A+B -> mean [0, 0], rmse 0: add A
    # step 4: 3A+B -> rmse 0.25 (best of the three): add A, but step 3 stays the best ensemble
    weights, path = ensemble_selection([a, b, c], y, metric="rmse", n_iter=4)
    np.testing.assert_allclose(weights, [2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(path, [1.0, 0.5, 0.0, 0.25])


def test_caruana_takes_a_callable_metric_and_breaks_ties_by_the_lowest_index() -> None:
    y = np.array([1.0])
    same = [np.array([2.0]), np.array([2.0])]
    weights, _ = ensemble_selection(same, y, metric=lambda t, p: -abs(float(t[0] - p[0])), greater_is_better=True,
                                    n_iter=3)
    np.testing.assert_allclose(weights, [1.0, 0.0])
    with pytest.raises(ValueError, match="greater_is_better"):
        ensemble_selection(same, y, metric=lambda t, p: 0.0)


@pytest.mark.parametrize("seed", range(5))
def test_caruana_is_never_worse_than_the_best_single_model(seed: int) -> None:
    from modelyard.evaluate import METRICS

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    preds = []
    for _ in range(6):
        p1 = np.clip(0.5 + rng.normal(0.15, 0.3, 300) * (2 * y - 1), 0.01, 0.99)
        preds.append(np.stack([1 - p1, p1], axis=1))
    weights, _ = ensemble_selection(preds, y, metric="accuracy", n_iter=25, tie_break="log_loss")
    ensemble = sum(w * p for w, p in zip(weights, preds, strict=True))
    best_single = max(METRICS.get("accuracy")(y, p) for p in preds)
    assert METRICS.get("accuracy")(y, ensemble) >= best_single
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()


# -- ensembles as ONNX -----------------------------------------------------------------
@pytest.fixture(scope="module")
def members() -> dict[str, tuple]:
    """Small fitted linear, gbm and mlp members on a binary, a multiclass and a regression frame."""
    from modelyard.train import fit_mlp

    out = {}
    for task in ("binary", "multiclass", "regression"):
        if task == "multiclass":
            data = from_frame(_multiclass(), target="label")
        else:
            data = from_frame(make_frame(n=500, regression=task == "regression"), target="label",
                              task="regression" if task == "regression" else None)
        fitted = [
            fit_linear(data.train, None, LinearConfig(C=0.3)),
            fit_gbm(data.train, data.valid, GBMConfig(max_iter=30), n_threads=1),
            fit_mlp(data.train, data.valid, MLPConfig(hidden_sizes=(16,), **FAST_MLP)),
        ]
        out[task] = (data, fitted)
    return out


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("method", ["weighted", "stacked"])
def test_onnx_ensemble_matches_the_in_memory_ensemble(members: dict, task: str, method: str, tmp_path: Path) -> None:
    from modelyard.search._automl import _fit_meta

    data, fitted = members[task]
    if method == "weighted":
        ensemble = EnsemblePredictor(fitted, [0.5, 0.3, 0.2])
    else:
        outputs = [m.predict(data.valid.X) if task == "regression" else m.predict_proba(data.valid.X) for m in fitted]
        coef, intercept = _fit_meta(_stack_features(outputs, task), data.valid.y, task, 0)
        ensemble = EnsemblePredictor(fitted, method="stacked", meta_coef=coef, meta_intercept=intercept)
    rows = _rows_with_gaps(data.test)
    export_onnx(ensemble, tmp_path / "ensemble.onnx", sample=rows)
    served = OnnxPredictor(tmp_path / "ensemble.onnx")
    if task == "regression":
        scale = max(1.0, float(np.abs(ensemble.predict(rows)).max()))
        assert np.max(np.abs(served.predict(rows) - ensemble.predict(rows))) < ATOL * scale
    else:
        got, want = served.predict_proba(rows), ensemble.predict_proba(rows)
        assert np.max(np.abs(got - want)) < ATOL
        np.testing.assert_allclose(want.sum(axis=1), 1.0, atol=1e-12)
    if method == "weighted" and task != "regression":  # the weighted mean of the members, exactly
        want = sum(w * m.predict_proba(rows) for w, m in zip([0.5, 0.3, 0.2], fitted, strict=True))
        np.testing.assert_allclose(ensemble.predict_proba(rows), want, atol=1e-12)


def test_ensemble_refuses_members_of_another_schema(members: dict) -> None:
    (_, binary), (_, regression) = members["binary"], members["regression"]
    with pytest.raises(ValueError, match="another schema"):
        EnsemblePredictor([binary[0], regression[0]])
    with pytest.raises(ValueError, match="non-negative"):
        EnsemblePredictor(binary[:2], [1.0, -1.0])


# -- automl end to end -------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy() -> object:
    return from_frame(make_frame(n=800, seed=1), target="label")


@pytest.fixture(scope="module")
def run10(toy) -> tuple:
    """One automl run with a 10 s budget over every family, timed."""
    start = time.monotonic()
    result = automl(toy, time_budget=10, ensemble="weighted", seed=0, base_configs={"mlp": FAST_MLP})
    return result, time.monotonic() - start


def test_time_budget_is_respected(run10: tuple) -> None:
    result, seconds = run10
    # The searches share the 10 s; a gradient-boosting or linear fit in flight finishes (well
    # under a second here) and an MLP trial stops at its next epoch. Ensembling and scoring the
    # test split add about a second; 25 s leaves room for a machine busy with other work.
    assert seconds < 25
    families = result.summary["families"]
    assert set(families) == {"linear", "gbm", "mlp"}
    # Every family's deadline lies within the budget (the last one's is the budget's end), so the
    # searches overrun it only by the MLP epoch in flight: milliseconds on these 560 rows, 2 s of slack.
    assert result.summary["search_seconds"] < 12
    assert all(f["completed"] >= 1 for f in families.values())


def test_weighted_ensemble_is_not_worse_than_its_best_member_on_valid(run10: tuple) -> None:
    result, _ = run10
    board = result.leaderboard
    metric = "valid_log_loss"  # the default ranking metric of classifiers; lower is better
    members = board[board["family"] != "ensemble"]
    ensemble = board[board["family"] == "ensemble"].iloc[0]
    assert ensemble[metric] <= members[metric].min()  # selection starts from the best and keeps the best step
    assert result.model is result.ensemble
    weights = [m["weight"] for m in result.summary["ensemble"]["members"]]
    assert sum(weights) == pytest.approx(1.0)
    # The leaderboard: every finished trial plus the ensemble, best first, ranks 1..n.
    assert board["rank"].tolist() == list(range(1, len(board) + 1))
    assert board[metric].is_monotonic_increasing
    assert set(board.columns) == {"rank", "model", "family", "trial", metric, "test_log_loss", "fit_seconds", "params"}
    assert len(members) == sum(f["completed"] for f in result.summary["families"].values())
    assert np.isfinite(ensemble["test_log_loss"])


def test_save_writes_onnx_models_with_parity(run10: tuple, toy, tmp_path: Path) -> None:
    result, _ = run10
    files = result.save(tmp_path / "out")
    assert sorted(files) == ["automl.json", "best_model.onnx", "ensemble.onnx", "leaderboard.csv"]
    summary = json.loads((tmp_path / "out" / "automl.json").read_text())
    assert summary["files"]["model"] == "ensemble.onnx"
    assert max(summary["files"]["onnx_max_abs_diff"].values()) < ATOL
    served = OnnxPredictor(files["ensemble.onnx"])
    rows = _rows_with_gaps(toy.test)
    assert np.max(np.abs(served.predict_proba(rows) - result.ensemble.predict_proba(rows))) < ATOL
    assert summary["test"]["ensemble"] == pytest.approx(result.summary["test"]["ensemble"])
    assert len(pd.read_csv(files["leaderboard.csv"])) == len(result.leaderboard)
    assert not list((tmp_path).glob(".out.*"))  # the staging folder is gone


def test_stacked_regression_with_linear_and_gbm(tmp_path: Path) -> None:
    data = from_frame(make_frame(n=600, regression=True), target="label", task="regression")
    result = automl(data, families=["gbm", "linear"], time_budget=2, ensemble="stacked", max_trials=3)
    assert result.metric == "rmse" and not result.maximize
    assert result.summary["ensemble"]["valid_note"].startswith("out-of-fold")
    assert list(result.summary["families"]) == ["linear", "gbm"]  # cheapest first
    files = result.save(tmp_path)
    assert json.loads(files["automl.json"].read_text())["files"]["onnx_max_abs_diff"]["ensemble.onnx"] < ATOL * 10


def test_no_ensemble_gives_the_best_model(toy, tmp_path: Path) -> None:
    result = automl(toy, families=["linear"], time_budget=2, ensemble="none", max_trials=3)
    assert result.ensemble is None and result.model is result.best_model
    assert "ensemble" not in set(result.leaderboard["family"])
    (tmp_path / "ensemble.onnx").write_bytes(b"stale")
    assert "ensemble.onnx" not in result.save(tmp_path) and not (tmp_path / "ensemble.onnx").exists()


def test_nothing_finished_in_the_budget_is_a_clear_error(toy) -> None:
    with pytest.raises(RuntimeError, match="No trial finished within the time budget"):
        automl(toy, families=["mlp"], time_budget=1e-3, base_configs={"mlp": FAST_MLP})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"families": ["linear", "xgboost"]},
         "Unknown model family 'xgboost' for automl; use one of ['linear', 'gbm', 'mlp']."),
        ({"families": []}, "automl needs at least one model family"),
        ({"families": ["gbm", "gbm"]}, "Model family 'gbm' is given twice"),
        ({"time_budget": 0}, "must be a positive number of seconds; got 0."),
        ({"time_budget": -5.0}, "must be a positive number of seconds; got -5.0."),
        ({"ensemble": "voting"}, "Unknown ensemble method 'voting'; use one of ['weighted', 'stacked', 'none']."),
        ({"strategy": "bayes"}, "Unknown search strategy 'bayes'; known: ["),
        ({"metric": "rmse"}, "Objective 'rmse' cannot be computed for a binary task"),
        ({"metric": "n_params"}, "'n_params' is a cost"),
        ({"base_configs": {"mlp": {"max_epoch": 3}}}, "base config of family 'mlp': max_epoch"),
        ({"base_configs": {"gbm": {}}, "families": ["linear"]}, "names families ['gbm'] that are not tuned"),
    ],
)
def test_bad_input_is_refused_before_any_trial(toy, kwargs: dict, message: str) -> None:
    with pytest.raises(SpecError) as info:
        automl(toy, **{"time_budget": 1, **kwargs})
    assert message in str(info.value)


@pytest.mark.parametrize("keep", ["numeric", "categorical"])
def test_onnx_ensemble_of_a_schema_with_one_kind_of_feature(keep: str, tmp_path: Path) -> None:
    frame = make_frame(n=300)
    frame = frame[["w", "x", "label"]] if keep == "numeric" else frame[["cat", "label"]]
    data = from_frame(frame, target="label")
    fitted = [fit_linear(data.train), fit_gbm(data.train, data.valid, GBMConfig(max_iter=10), n_threads=1)]
    ensemble = EnsemblePredictor(fitted, [0.4, 0.6])
    result = export_onnx(ensemble, tmp_path / "e.onnx", sample=data.test.X)
    assert result.max_abs_diff < ATOL
