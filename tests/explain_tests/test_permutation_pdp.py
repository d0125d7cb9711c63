"""Permutation importance, model class reliance, PDP and ICE against scikit-learn, with invariants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)
from sklearn.inspection import partial_dependence as sk_partial_dependence
from sklearn.inspection import permutation_importance as sk_permutation_importance
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

from modelyard.explain import (
    model_class_reliance,
    partial_dependence,
    permutation_importance,
)


class Wrapped:
    """A scikit-learn estimator seen as a Predictor on raw rows (only the columns it was fitted on)."""

    def __init__(self, estimator, columns, task="binary") -> None:
        self.estimator, self.feature_names, self.task = estimator, list(columns), task

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.estimator.predict_proba(X[self.feature_names])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.estimator.predict(X[self.feature_names])


def _frame(n: int = 600, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n), "noise": rng.normal(size=n)})
    y = (X["x1"] + 0.5 * X["x2"] + rng.normal(scale=0.5, size=n) > 0).astype(int).to_numpy()
    return X, y


@pytest.fixture(scope="module")
def fitted():
    X, y = _frame()
    est = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(X, y)
    return est, X, y


@pytest.mark.parametrize(("ours", "theirs"), [("accuracy", "accuracy"), ("auc", "roc_auc")])
def test_permutation_importance_equals_scikit_learn(fitted, ours: str, theirs: str) -> None:
    est, X, y = fitted
    mine = permutation_importance(Wrapped(est, X.columns), X, y, metric=ours, n_repeats=4, random_state=3)
    ref = sk_permutation_importance(est, X, y, scoring=theirs, n_repeats=4, random_state=3)
    # Same shuffles, same model, same metric: equal up to float summation order.
    np.testing.assert_allclose(mine.importances, ref.importances, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mine.std, ref.importances_std, rtol=0, atol=1e-12)


def test_a_feature_the_model_ignores_has_zero_importance(fitted) -> None:
    _, X, y = fitted
    model = Wrapped(LogisticRegression().fit(X[["x1", "x2"]], y), ["x1", "x2"])
    model.feature_names = ["x1", "x2", "noise"]  # takes noise, never reads it
    model.predict_proba = lambda frame: model.estimator.predict_proba(frame[["x1", "x2"]])
    imp = permutation_importance(model, X, y, n_repeats=5)
    table = imp.to_frame().set_index("feature")
    assert table.loc["noise", "importance"] == 0.0 and table.loc["noise", "std"] == 0.0  # exactly: same outputs
    assert table.index[0] == "x1"  # the strongest signal ranks first
    low, high = imp.interval()
    assert np.all(low <= imp.mean) and np.all(imp.mean <= high)
    many = permutation_importance(model, X, y, n_repeats=20)
    width = lambda r: (r.interval()[1] - r.interval()[0])[0]
    assert width(many) < width(imp)  # more repeats, a narrower interval on x1


def test_model_class_reliance_spans_the_good_models() -> None:
    X, y = _frame(2000, 1)
    both = Wrapped(LogisticRegression().fit(X[["x1", "x2"]], y), ["x1", "x2", "noise"])
    both.predict_proba = lambda f: both.estimator.predict_proba(f[["x1", "x2"]])
    only = Wrapped(LogisticRegression().fit(X[["x1"]], y), ["x1", "x2", "noise"])
    only.predict_proba = lambda f: only.estimator.predict_proba(f[["x1"]])
    wide = model_class_reliance({"both": both, "x1 only": only}, X, y, epsilon=1.0)
    row = wide.table.set_index("feature")
    assert row.loc["x2", "mcr_minus"] == pytest.approx(1.0) and row.loc["x2", "mcr_plus"] > 1.05
    assert row.loc["x1", "mcr_minus"] > 1.2  # every good model needs x1
    assert row.loc["noise", "mcr_plus"] == pytest.approx(1.0)
    narrow = model_class_reliance({"both": both, "x1 only": only}, X, y, epsilon=0.0)
    assert list(narrow.reliance.index) == ["both"]  # only the best model is in an epsilon-0 set


def test_pdp_and_ice_equal_scikit_learn_brute(fitted) -> None:
    est, X, _ = fitted
    mine = partial_dependence(Wrapped(est, X.columns), X, "x1", kind="both", grid_resolution=20)
    ref = sk_partial_dependence(est, X, ["x1"], kind="both", grid_resolution=20, method="brute")
    np.testing.assert_allclose(mine.grid[0], ref["grid_values"][0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(mine.average, ref["average"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(mine.individual, ref["individual"], rtol=0, atol=1e-12)
    pair = partial_dependence(Wrapped(est, X.columns), X, ["x1", "x2"], grid_resolution=8)
    ref2 = sk_partial_dependence(est, X, ["x1", "x2"], grid_resolution=8, method="brute")
    np.testing.assert_allclose(pair.average, ref2["average"], rtol=0, atol=1e-12)


def test_categorical_pdp_equals_scikit_learn() -> None:
    rng = np.random.default_rng(2)
    X = pd.DataFrame({"x": rng.normal(size=400), "color": rng.choice(["red", "green", "blue"], 400)})
    y = X["x"] + X["color"].map({"red": 1.0, "green": 0.0, "blue": -1.0}) + rng.normal(scale=0.1, size=400)
    est = make_pipeline(make_column_transformer((OneHotEncoder(), ["color"]), remainder="passthrough"),
                        HistGradientBoostingRegressor(max_iter=20)).fit(X, y)
    mine = partial_dependence(Wrapped(est, X.columns, "regression"), X, "color")
    ref = sk_partial_dependence(est, X, ["color"], categorical_features=["color"], method="brute")
    assert list(mine.grid[0]) == list(ref["grid_values"][0])
    np.testing.assert_allclose(mine.average, ref["average"], rtol=0, atol=1e-12)


def test_additive_model_has_parallel_ice_curves() -> None:
    """f = g(x1) + h(x2): every centered ICE curve of x1 is the same, and PDP = g + mean(h)."""

    class Additive:
        task, feature_names = "regression", ["x1", "x2"]

        def predict(self, f: pd.DataFrame) -> np.ndarray:
            return np.sin(f["x1"].to_numpy()) + f["x2"].to_numpy() ** 2

    X, _ = _frame(300, 4)
    pdp = partial_dependence(Additive(), X, "x1", kind="both", grid_resolution=15)
    centered = pdp.centered()[0]  # (n_rows, G)
    np.testing.assert_allclose(centered, np.broadcast_to(centered[0], centered.shape), atol=1e-12)
    expected = np.sin(pdp.grid[0]) + (X["x2"] ** 2).mean()
    np.testing.assert_allclose(pdp.average[0], expected, atol=1e-12)


def test_bad_input_is_refused(fitted) -> None:
    est, X, y = fitted
    model = Wrapped(est, X.columns)
    with pytest.raises(ValueError, match=r"\['age'\] are not inputs of the model"):
        permutation_importance(model, X, y, features=["age"])
    with pytest.raises(ValueError, match="n_repeats"):
        permutation_importance(model, X, y, n_repeats=0)
    with pytest.raises(ValueError, match="does not apply to a binary model"):
        permutation_importance(model, X, y, metric="rmse")
    with pytest.raises(ValueError, match="not inputs of the model"):
        partial_dependence(model, X, "age")
    with pytest.raises(ValueError, match="one feature"):
        partial_dependence(model, X, ["x1", "x2"], kind="both")
    with pytest.raises(ValueError, match="percentiles"):
        partial_dependence(model, X, "x1", percentiles=(0.9, 0.1))


def test_torch_models_take_the_encoded_path_with_the_same_values() -> None:
    """The encoded fast path (TorchPredictor) gives exactly what editing raw frames gives."""
    from modelyard.data import TabularSplit, infer_schema
    from modelyard.models import MLPConfig, TorchPredictor
    from modelyard.train import fit_mlp

    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"age": rng.integers(18, 80, 500), "x": rng.normal(size=500),
                          "color": rng.choice(["red", "blue", "green"], 500)})
    frame["y"] = np.where(frame["x"] + (frame["color"] == "red") > 0.5, "yes", "no")
    schema = infer_schema(frame, "y")
    split = TabularSplit(frame, schema)
    model = fit_mlp(split, split, MLPConfig(max_epochs=2, hidden_sizes=(8,)))

    class Slow(TorchPredictor):  # same outputs, but not recognized as encodable: the raw-frame path
        def _forward(self, X):
            return super()._forward(X)

    slow = Slow(model.module, schema, config=model.config)
    fast_imp = permutation_importance(model, frame, n_repeats=3)
    slow_imp = permutation_importance(slow, frame, n_repeats=3)
    # Batch composition differs (one big batch vs per-frame), so float32 sums may round differently.
    np.testing.assert_allclose(fast_imp.importances, slow_imp.importances, atol=1e-6)
    assert fast_imp.metric == slow_imp.metric == "accuracy"  # the encoded path keeps the metric's name
    for feature in ("age", "color"):
        fast = partial_dependence(model, frame, feature, kind="both", grid_resolution=7)
        slow_pd = partial_dependence(slow, frame, feature, kind="both", grid_resolution=7)
        np.testing.assert_allclose(fast.individual, slow_pd.individual, atol=1e-6)  # float32 rounding
    pair = partial_dependence(model, frame, ["age", "color"], grid_resolution=5)
    np.testing.assert_allclose(pair.average, partial_dependence(slow, frame, ["age", "color"], grid_resolution=5).average, atol=1e-6)
