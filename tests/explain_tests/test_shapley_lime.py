"""Shapley values (exact, Kernel SHAP, Tree SHAP) and LIME: against closed forms, independent references and peers."""

from __future__ import annotations

import io
import math
from itertools import permutations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

from modelyard.data import TabularSplit, infer_schema
from modelyard.errors import DataError, SchemaMismatchError
from modelyard.explain._lime import lime_image, lime_tabular
from modelyard.explain._masking import Background, summarize_background
from modelyard.explain._plots import (
    plot_beeswarm,
    plot_dependence,
    plot_image_heatmap,
    plot_importance,
)
from modelyard.explain._shapley import exact_shapley, kernel_shap
from modelyard.explain._tree import tree_shap
from modelyard.models import (
    GBMConfig,
    MLPConfig,
    SklearnPredictor,
    encode_matrix,
    encoded_feature_names,
    fit_gbm,
)


class Formula:
    """A regression 'model' on raw rows given by a Python function of the frame."""

    task = "regression"

    def __init__(self, features, fn) -> None:
        self.feature_names, self.fn = list(features), fn

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.fn(X[self.feature_names]), dtype=np.float64)


def _numeric(n: int, m: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(n, m)), columns=[f"x{j}" for j in range(m)])


def _interacting(m: int) -> Formula:
    cols = [f"x{j}" for j in range(m)]

    def fn(f):
        x = f.to_numpy(dtype=np.float64)
        return (x @ np.linspace(1, -1, m) + x[:, 0] * x[:, 1] + np.maximum(x[:, 2], x[:, 3]) * x[:, 4]
                + np.sin(x[:, 1] + x[:, 2] + x[:, 3]))

    return Formula(cols, fn)


# -- exact Shapley ----------------------------------------------------------------------


def test_exact_equals_the_closed_form_of_a_linear_model_with_a_categorical_player() -> None:
    rng = np.random.default_rng(0)
    X = _numeric(50, 3)
    X["color"] = rng.choice(["red", "green", "blue"], 50)
    w, effect = np.array([2.0, -1.0, 0.5]), {"red": 1.0, "green": 0.0, "blue": -3.0}
    model = Formula(X.columns, lambda f: f[["x0", "x1", "x2"]].to_numpy() @ w + f["color"].map(effect).to_numpy())
    bg = Background(X.iloc[:7].reset_index(drop=True), np.arange(1.0, 8.0))
    e = exact_shapley(model, X, rows=[10, 11, 12], background=bg)
    mean = bg.weights @ bg.frame[["x0", "x1", "x2"]].to_numpy()
    expected = (X.iloc[10:13][["x0", "x1", "x2"]].to_numpy() - mean) * w  # phi_j = w_j (x_j - E[x_j])
    np.testing.assert_allclose(e.values[:, :3], expected, rtol=0, atol=1e-12)
    colour = X["color"].iloc[10:13].map(effect).to_numpy() - bg.weights @ bg.frame["color"].map(effect).to_numpy()
    np.testing.assert_allclose(e.values[:, 3], colour, rtol=0, atol=1e-12)  # a categorical column is one player
    np.testing.assert_allclose(e.predictions(), model.predict(X.iloc[10:13]), rtol=0, atol=1e-12)  # efficiency


def test_exact_equals_the_shapley_formula_over_permutations() -> None:
    """An independent, slow reference: average marginal contributions over all 5! orderings."""
    X = _numeric(40, 5, seed=1)
    model = _interacting(5)
    bg = Background(X.iloc[:6].reset_index(drop=True), np.full(6, 1 / 6))
    e = exact_shapley(model, X, rows=[20, 21], background=bg)
    for r, i in enumerate([20, 21]):
        np.testing.assert_allclose(e.values[r], _shapley_by_orderings(model, bg, X.iloc[i]), rtol=0, atol=1e-10)


def _shapley_by_orderings(model: Formula, bg: Background, x: pd.Series) -> np.ndarray:
    """The Shapley values of row ``x``: marginal contributions averaged over every ordering of the features."""
    m = len(x)

    def v(coalition: set[int]) -> float:
        frame = bg.frame.copy()
        for j in coalition:
            frame[f"x{j}"] = x.iloc[j]
        return float(bg.weights @ model.predict(frame))

    ref = np.zeros(m)
    for order in permutations(range(m)):
        present: set[int] = set()
        for j in order:
            before = v(present)
            present.add(j)
            ref[j] += v(present) - before
    return ref / math.factorial(m)


def test_exact_on_a_torch_model_uses_the_encoded_path_and_equals_raw_frames() -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(size=300), "b": rng.integers(18, 70, 300),
                          "c": rng.choice(["x", "y", "z"], 300)})
    frame["y"] = (frame["a"] + (frame["c"] == "x") > 0.5).astype(int)
    schema = infer_schema(frame, "y")
    from modelyard.train import fit_mlp

    model = fit_mlp(TabularSplit(frame.iloc[:240], schema), TabularSplit(frame.iloc[240:], schema),
                    MLPConfig(max_epochs=2, hidden_sizes=(16,)))

    class RawOnly:  # the same model seen only through predict_proba on frames
        task, feature_names, schema_ = "binary", model.feature_names, schema

        def predict_proba(self, X):
            return model.predict_proba(X)

    fast = exact_shapley(model, frame, rows=[0, 1, 2], n_background=8)
    slow = exact_shapley(RawOnly(), frame, rows=[0, 1, 2], background=summarize_background(
        frame[model.feature_names], 8, predictor=model))
    np.testing.assert_allclose(fast.values, slow.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.predictions(), model.predict_proba(frame.iloc[:3])[:, 1], rtol=0, atol=1e-6)
    assert fast.output_names == ["1"] and fast.values.shape == (3, 3)


def test_each_distinct_composite_row_goes_to_the_model_once() -> None:
    """Where the row and a background row agree on a feature, coalitions differing only there share one model row."""
    rng = np.random.default_rng(5)
    X = pd.DataFrame(rng.integers(0, 3, size=(50, 5)).astype(np.float64), columns=[f"x{j}" for j in range(5)])
    inner = _interacting(5)
    sent: list[pd.DataFrame] = []

    class Counting(Formula):
        def predict(self, frame: pd.DataFrame) -> np.ndarray:
            sent.append(frame.copy())
            return inner.predict(frame)

    model = Counting(inner.feature_names, inner.fn)
    bg = Background(X.iloc[:6].reset_index(drop=True), np.arange(1.0, 7.0))
    rows = [20, 21, 22]
    e = exact_shapley(model, X, rows=rows, background=bg)
    # the model saw exactly what info reports, and no row twice within a call
    assert e.info["model_rows"] == sum(len(f) for f in sent)
    assert all(not f.duplicated().any() for f in sent)
    # the count is the number of distinct composite rows, plus the rows themselves and the background,
    # per group of rows with the same players (null players leave the game): brute force over every coalition
    patterns: dict[tuple[int, ...], list[int]] = {}
    for i in rows:
        players = tuple(j for j in range(5) if (bg.frame.iloc[:, j] != X.iloc[i, j]).any())
        patterns.setdefault(players, []).append(i)
    expected = 0
    for players, members in patterns.items():
        seen = set()
        for i in members:
            x = X.iloc[i].to_numpy()
            for b in bg.frame.to_numpy():
                for k in range(1, 2 ** len(players) - 1):
                    z = b.copy()
                    z[[j for bit, j in enumerate(players) if k >> bit & 1]] = x[[j for bit, j in enumerate(players)
                                                                                 if k >> bit & 1]]
                    seen.add(tuple(z))
        expected += len(seen) + len(members) + len(bg)
    assert e.info["model_rows"] == expected
    no_sharing = sum(2 ** len(p) - 2 for p in patterns for _ in patterns[p]) * len(bg) + len(rows) + len(bg) * len(patterns)
    assert e.info["model_rows"] < 0.6 * no_sharing  # 3 values per feature: most (row, b) pairs agree somewhere
    # and the values are the Shapley values: the slow reference over all orderings, no sharing
    for r, i in enumerate(rows):
        np.testing.assert_allclose(e.values[r], _shapley_by_orderings(inner, bg, X.iloc[i]), rtol=0, atol=1e-10)
    # Kernel SHAP shares rows the same way and reports what it sent
    sent.clear()
    k = kernel_shap(model, X, rows=rows, background=bg, n_samples=20, random_state=0)
    assert k.info["model_rows"] == sum(len(f) for f in sent)
    np.testing.assert_allclose(k.predictions(), inner.predict(X.iloc[rows]), rtol=0, atol=1e-9)  # efficiency


# -- Kernel SHAP ------------------------------------------------------------------------


def test_kernel_shap_converges_to_exact_and_keeps_efficiency() -> None:
    X = _numeric(60, 7, seed=2)
    model = _interacting(7)
    bg = Background(X.iloc[:8].reset_index(drop=True), np.ones(8))
    rows = [30, 31, 32, 33]
    exact = exact_shapley(model, X, rows=rows, background=bg).values
    truth = model.predict(X.iloc[rows])
    for order in (1, 2, 3):
        errors = []
        for budget in (16, 40, 126):  # 126 = 2^7 - 2: every coalition
            e = kernel_shap(model, X, rows=rows, background=bg, n_samples=budget, order=order, random_state=0)
            np.testing.assert_allclose(e.predictions(), truth, rtol=0, atol=1e-9)  # efficiency, exactly
            errors.append(np.sqrt(np.mean((e.values - exact) ** 2)))
        assert errors[2] < 1e-8, (order, errors)  # full enumeration is exact
        assert errors[1] < errors[0], (order, errors)
    # with enough coalitions per term, the third-order surrogate is closer than the additive fit
    first = kernel_shap(model, X, rows=rows, background=bg, n_samples=100, order=1)
    third = kernel_shap(model, X, rows=rows, background=bg, n_samples=100, order=3)
    assert np.abs(third.values - exact).mean() < 0.5 * np.abs(first.values - exact).mean()
    # 90 < 3 x 63 terms, but >= 1.5 x 28 first- and second-order terms: third order, its third-order
    # terms shrunk; closer to exact than the additive fit on the same coalitions
    few = kernel_shap(model, X, rows=rows, background=bg, n_samples=90)
    assert list(few.info["order"]) == [3] * 4 and few.info["shrunk"].all()
    np.testing.assert_allclose(few.predictions(), truth, rtol=0, atol=1e-9)  # efficiency still exact
    additive = kernel_shap(model, X, rows=rows, background=bg, n_samples=90, order=1)
    assert np.abs(few.values - exact).mean() < np.abs(additive.values - exact).mean()
    tiny = kernel_shap(model, X, rows=rows, background=bg, n_samples=40)
    assert list(tiny.info["order"]) == [1] * 4  # < 1.5 x 28: additive
    # 9 features: 129 third-order terms; 400 coalitions (>= 3 x 129, < 2^9 - 2) take the plain fit
    X9 = _numeric(60, 9, seed=3)
    model9, bg9 = _interacting(9), Background(X9.iloc[:8].reset_index(drop=True), np.ones(8))
    auto = kernel_shap(model9, X9, rows=rows, background=bg9, n_samples=400)
    assert list(auto.info["order"]) == [3] * 4 and not auto.info["shrunk"].any()
    np.testing.assert_array_equal(auto.values, kernel_shap(model9, X9, rows=rows, background=bg9, n_samples=400,
                                                           order=3).values)
    # a feature equal in the row and every background row is a null player: 0, and it leaves the game
    const = X.assign(x6=0.5)
    bgc = Background(const.iloc[:8].reset_index(drop=True), np.ones(8))
    e = kernel_shap(model, const, rows=rows, background=bgc, n_samples=126)
    assert list(e.info["coalitions"]) == [62] * 4 and e.info["exact"].all() and not e.values[:, 6].any()
    ref = exact_shapley(model, const, rows=rows, background=bgc)
    assert list(ref.info["coalitions"]) == [64] * 4
    np.testing.assert_allclose(e.values, ref.values, rtol=0, atol=1e-9)


def test_kernel_shap_is_reproducible_and_agrees_with_shap_kernel_explainer() -> None:
    shap = pytest.importorskip("shap")
    X = _numeric(80, 6, seed=4)
    model = _interacting(6)
    bg = Background(X.iloc[:10].reset_index(drop=True), np.ones(10))
    rows = [40, 41, 42]
    a = kernel_shap(model, X, rows=rows, background=bg, n_samples=30, random_state=5)
    b = kernel_shap(model, X, rows=rows, background=bg, n_samples=30, random_state=5)
    np.testing.assert_array_equal(a.values, b.values)
    exact = exact_shapley(model, X, rows=rows, background=bg).values
    explainer = shap.KernelExplainer(lambda A: model.predict(pd.DataFrame(A, columns=X.columns)),
                                     bg.frame.to_numpy())
    theirs = explainer.shap_values(X.iloc[rows].to_numpy(), nsamples=62, l1_reg=False, silent=True)
    ours = kernel_shap(model, X, rows=rows, background=bg, n_samples=62).values
    np.testing.assert_allclose(theirs, exact, rtol=0, atol=1e-8)  # both enumerate all 62 coalitions
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-8)
    np.random.seed(0)
    sampled = explainer.shap_values(X.iloc[rows].to_numpy(), nsamples=40, l1_reg=False, silent=True)
    mine = kernel_shap(model, X, rows=rows, background=bg, n_samples=40, order=1).values
    scale = np.abs(exact).mean()
    assert np.abs(sampled - exact).mean() < 0.1 * scale and np.abs(mine - exact).mean() < 0.1 * scale


def test_kernel_shap_explains_every_class_of_a_multiclass_model() -> None:
    rng = np.random.default_rng(6)
    X = pd.DataFrame(rng.normal(size=(400, 4)), columns=list("abcd"))
    y = np.digitize(X["a"] + X["b"] * X["c"], [-0.5, 0.5])
    est = RandomForestClassifier(20, max_depth=4, random_state=0).fit(X, y)

    class Proba:
        task, feature_names, classes = "multiclass", list("abcd"), ("lo", "mid", "hi")

        def predict_proba(self, F):
            return est.predict_proba(F[self.feature_names])

    e = kernel_shap(Proba(), X, rows=[0, 1], n_background=10, n_samples=200)
    assert e.values.shape == (2, 4, 3) and e.output_names == ["lo", "mid", "hi"]
    np.testing.assert_allclose(e.predictions(), est.predict_proba(X.iloc[:2]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(e.values.sum(axis=2), 0.0, atol=1e-9)  # probabilities sum to one
    one = kernel_shap(Proba(), X, rows=[0, 1], n_background=10, n_samples=200, output="hi")
    np.testing.assert_allclose(one.values, e.values[:, :, 2], rtol=0, atol=1e-12)


# -- Tree SHAP --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gbm():
    rng = np.random.default_rng(7)
    n = 1500
    frame = pd.DataFrame({"age": rng.integers(18, 80, n).astype(float), "hours": rng.normal(40, 10, n),
                          "job": rng.choice(["a", "b", "c", "d", "e", "f"], n), "sex": rng.choice(["F", "M"], n)})
    frame.loc[rng.random(n) < 0.05, "hours"] = np.nan
    logit = (frame["age"] - 45) / 10 + frame["job"].isin(["b", "d", "e"]) * 1.5 - (frame["sex"] == "F")
    frame["y"] = (logit.fillna(0) + rng.logistic(size=n) > 0).astype(int)
    schema = infer_schema(frame, "y")
    model = fit_gbm(TabularSplit(frame.iloc[:1200], schema), TabularSplit(frame.iloc[1200:], schema),
                    GBMConfig(max_iter=25, max_leaf_nodes=8, early_stopping=False))
    return model, frame


def test_tree_shap_on_native_categorical_splits_equals_exact_interventional_shapley(gbm) -> None:
    pytest.importorskip("numba")  # Tree SHAP's compiled kernels
    model, frame = gbm
    assert model.estimator.is_categorical_ is not None and model.estimator.is_categorical_.any()
    rows = [1300, 1301, 1302, 1303, 1304]
    bg = summarize_background(frame[model.feature_names].iloc[:1200], 12, predictor=model)
    tree = tree_shap(model, frame, rows=rows, background=bg)
    # the exact reference explains the same output, log-odds, with the same background
    exact = exact_shapley(model, frame, rows=rows, background=bg, link="logit")
    np.testing.assert_allclose(tree.values, exact.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(tree.base_values, exact.base_values, rtol=0, atol=1e-6)
    margin = model.estimator.decision_function(encode_matrix(frame.iloc[rows], model.schema))
    np.testing.assert_allclose(tree.predictions(), margin, rtol=0, atol=1e-9)  # efficiency
    path = tree_shap(model, frame, rows=range(1200, 1500))  # path-dependent: efficiency against cover-weighted E[f]
    margins = model.estimator.decision_function(encode_matrix(frame.iloc[1200:1500], model.schema))
    np.testing.assert_allclose(path.predictions(), margins, rtol=0, atol=1e-9)
    assert path.output_names == ["log-odds(1)"] and path.feature_names == model.feature_names


def test_tree_shap_equals_shap_tree_explainer_on_numeric_splits() -> None:
    pytest.importorskip("numba")  # Tree SHAP's compiled kernels
    shap = pytest.importorskip("shap")
    X = _numeric(800, 5, seed=8)
    X.loc[::17, "x2"] = np.nan
    y = ((X["x0"] + X["x1"] * X["x3"]).fillna(0) > 0).astype(int)
    for est in (HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(X, y),
                RandomForestClassifier(30, max_depth=6, random_state=0).fit(X.fillna(0), y)):
        data = X if isinstance(est, HistGradientBoostingClassifier) else X.fillna(0)
        ours = tree_shap(est, data)
        theirs = np.asarray(shap.TreeExplainer(est).shap_values(data.to_numpy(), check_additivity=False))
        theirs = theirs[..., 1] if theirs.ndim == 3 else theirs
        np.testing.assert_allclose(ours.values, theirs, rtol=0, atol=1e-9)


def test_tree_shap_maps_encoded_columns_to_raw_features_like_shap(gbm) -> None:
    pytest.importorskip("numba")  # Tree SHAP's compiled kernels
    shap = pytest.importorskip("shap")
    model, frame = gbm
    numeric = SklearnPredictor(
        HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(
            encode_matrix(frame.iloc[:1200], model.schema), frame["y"].iloc[:1200].to_numpy()), model.schema)
    ours = tree_shap(numeric, frame, rows=range(1200, 1260))
    matrix = encode_matrix(frame.iloc[1200:1260], model.schema)
    theirs = shap.TreeExplainer(numeric.estimator).shap_values(matrix, check_additivity=False)
    order = [model.feature_names.index(c) for c in encoded_feature_names(model.schema)]
    np.testing.assert_allclose(ours.values[:, order], theirs, rtol=0, atol=1e-9)


def test_tree_shap_equals_lightgbm_pred_contrib() -> None:
    pytest.importorskip("numba")  # Tree SHAP's compiled kernels
    lgb = pytest.importorskip("lightgbm")
    X = _numeric(600, 4, seed=9)
    X["cat"] = np.random.default_rng(9).integers(0, 5, 600).astype(float)
    y = ((X["x0"] + (X["cat"] == 2) * 2 - X["x1"]) > 0.3).astype(int)
    est = lgb.LGBMClassifier(n_estimators=20, num_leaves=8, verbose=-1).fit(X, y, categorical_feature=[4])
    ours = tree_shap(est, X)
    theirs = est.booster_.predict(X, pred_contrib=True)
    np.testing.assert_allclose(ours.values, theirs[:, :-1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours.base_values, theirs[:, -1], rtol=0, atol=1e-9)


# -- LIME -------------------------------------------------------------------------------


def test_lime_is_reproducible_and_recovers_a_linear_model() -> None:
    X = _numeric(2000, 4, seed=10)
    X["color"] = np.random.default_rng(10).choice(["red", "blue"], 2000)
    w = np.array([3.0, -2.0, 0.0, 0.5])
    model = Formula(X.columns, lambda f: f[["x0", "x1", "x2", "x3"]].to_numpy() @ w + (f["color"] == "red") * 1.0)
    a = lime_tabular(model, X, rows=[0, 1, 2], n_samples=3000, discretize=False, random_state=3)
    b = lime_tabular(model, X, rows=[0, 1, 2], n_samples=3000, discretize=False, random_state=3)
    c = lime_tabular(model, X, rows=[0, 1, 2], n_samples=3000, discretize=False, random_state=4)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.base_values, b.base_values)
    assert not np.array_equal(a.values, c.values)
    alone = lime_tabular(model, X, rows=[2], n_samples=3000, discretize=False, random_state=3)
    np.testing.assert_array_equal(alone.values[0], a.values[2])  # a row's result ignores the other rows
    sd = X[["x0", "x1", "x2", "x3"]].std(ddof=0).to_numpy()
    np.testing.assert_allclose(a.values[:, :4], np.broadcast_to(w * sd, (3, 4)), rtol=0.02, atol=0.01)
    assert np.all(np.sign(a.values[:, [0, 1, 3]]) == np.sign(w[[0, 1, 3]]))
    red = (X["color"].iloc[:3] == "red").to_numpy()
    np.testing.assert_allclose(a.values[:, 4], np.where(red, 1.0, -1.0), atol=0.05)  # same-colour indicator
    assert np.all(a.info["score"] > 0.99)


def test_discretized_lime_ranks_the_strong_features_first_across_seeds() -> None:
    X = _numeric(3000, 6, seed=11)
    model = Formula(X.columns, lambda f: 1 / (1 + np.exp(-(2 * f["x0"] - 1.5 * f["x3"] + 0.1 * f["x5"]))))
    tops = []
    for seed in range(3):
        e = lime_tabular(model, X, rows=[5], n_samples=5000, random_state=seed)
        tops.append(set(e.importance()["feature"].head(2)))
        assert e.info["conditions"][0][0].count("x0") == 1 and e.values.shape == (1, 6)
    assert tops == [{"x0", "x3"}] * 3


def test_image_lime_highlights_the_informative_region() -> None:
    class TopLeft:
        """p(class 1) rises with the brightness of the top-left quadrant."""

        def predict_proba(self, x):
            s = np.asarray(x, dtype=np.float64)[:, 0, :8, :8].mean(axis=(1, 2)) / 255.0
            p = 1 / (1 + np.exp(-10 * (s - 0.35)))
            return np.stack([1 - p, p], axis=1)

    rng = np.random.default_rng(12)
    images = (rng.random((2, 1, 16, 16)) * 100).astype(np.uint8)
    images[:, :, :8, :8] += 120
    e = lime_image(TopLeft(), images, n_samples=400, segments="grid", n_segments=16, hide=0.0, random_state=1)
    again = lime_image(TopLeft(), images, n_samples=400, segments="grid", n_segments=16, hide=0.0, random_state=1)
    np.testing.assert_array_equal(e.heatmaps, again.heatmaps)
    assert list(e.targets) == [1, 1]
    for i in range(2):
        top = e.top_mask(i, k=4)
        assert top[:8, :8].all() and not top[8:, :].any() and not top[:, 8:].any()
        assert e.heatmaps[i][:8, :8].min() > np.abs(e.heatmaps[i][8:, 8:]).max()


# -- bad input --------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(gbm) -> None:
    model, frame = gbm
    X = frame.iloc[:50]
    for call in (lambda: exact_shapley(model, X, rows=[50]), lambda: kernel_shap(model, X, rows=[-51]),
                 lambda: tree_shap(model, X, rows=[99]), lambda: lime_tabular(model, X, rows=[1000])):
        with pytest.raises(DataError, match=r"out of range for 50 rows; use positions 0 \.\. 49"):
            call()
    with pytest.raises(ValueError, match=r"Features \['salary'\] are not inputs of the model"):
        kernel_shap(model, X, rows=[0], features=["age", "salary"])
    with pytest.raises(SchemaMismatchError, match=r"background set lacks the model's features \['job'\]"):
        exact_shapley(model, X, rows=[0], background=X.drop(columns=["job"]))
    with pytest.raises(SchemaMismatchError, match=r"columns the model does not take \['zip'\]"):
        kernel_shap(model, X, rows=[0], background=X.assign(zip="02139"))
    with pytest.raises(SchemaMismatchError, match=r"columns the model does not take \['zip'\]"):
        lime_tabular(model, X, rows=[0], training=X.assign(zip="02139"))
    with pytest.raises(SchemaMismatchError, match=r"X lacks the model's features \['sex'\]"):
        tree_shap(model, X.drop(columns=["sex"]))
    wide = _numeric(30, 16)
    with pytest.raises(ValueError, match=r"65,536 coalitions.*Use kernel_shap\(\.\.\.\).*tree_shap\(\.\.\.\)"):
        exact_shapley(_interacting(16), wide, rows=[0])
    assert exact_shapley(_interacting(16), wide, rows=[0], features=[f"x{j}" for j in range(4)],
                         n_background=5).values.shape == (1, 4)
    with pytest.raises(TypeError, match=r"does not know LogisticRegression.*kernel_shap"):
        from sklearn.linear_model import LogisticRegression

        tree_shap(LogisticRegression().fit(wide[["x0"]], wide["x1"] > 0), wide[["x0"]])
    with pytest.raises(ValueError, match=r"n_samples must be a positive integer"):
        kernel_shap(model, X, rows=[0], n_samples=0)


# -- the result and its plots -----------------------------------------------------------


def test_explanation_tables_background_summary_and_plots(gbm) -> None:
    pytest.importorskip("numba")  # Tree SHAP's compiled kernels
    model, frame = gbm
    bg = summarize_background(frame[model.feature_names], 10, predictor=model)
    assert len(bg) == 10 and abs(bg.weights.sum() - 1) < 1e-12
    assert set(bg.frame["job"]) <= set(frame["job"])  # categories stay real categories
    e = tree_shap(model, frame, rows=range(100))
    table = e.to_frame()
    assert list(table.columns) == ["row", "feature", "value", "attribution", "base_value"] and len(table) == 400
    assert e.importance()["feature"].iloc[0] in {"age", "job"}
    images = np.zeros((1, 1, 8, 8), dtype=np.uint8)
    for fig in (plot_beeswarm(e), plot_dependence(e, "job", color_by="age"), plot_importance(e),
                plot_image_heatmap(images[0], np.linspace(-1, 1, 64).reshape(8, 8))):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        assert buffer.getbuffer().nbytes > 1000


def test_shrunk_surrogate_equals_an_independent_constrained_ridge_solve() -> None:
    from scipy.linalg import null_space

    from modelyard.explain._shapley import _design, _terms, surrogate_shapley

    rng = np.random.default_rng(4)
    m, k = 6, 40
    z = rng.random((k, m)) < 0.5
    w, y, delta = rng.random(k) + 0.1, rng.normal(size=(k, 2)), rng.normal(size=2)
    shrink = 0.05
    got = surrogate_shapley(z, w, y, delta, 3, shrink=shrink)
    # independent: theta = theta0 + N beta on the constraint sum(theta) = delta, ridge as extra rows
    terms = _terms(m, 3)
    a = _design(z, terms)
    wn = w / w.sum()
    c = shrink * np.trace((a * wn[:, None]).T @ a) / len(terms)
    d = np.diag([float(len(t) >= 3) for t in terms])
    n = null_space(np.ones((1, len(terms))))
    share = np.zeros((len(terms), m))
    for i, t in enumerate(terms):
        share[i, list(t)] = 1.0 / len(t)
    for r in range(2):
        theta0 = np.full(len(terms), delta[r] / len(terms))
        lhs = np.vstack([np.sqrt(wn)[:, None] * (a @ n), np.sqrt(c) * (d @ n)])
        rhs = np.concatenate([np.sqrt(wn) * (y[:, r] - a @ theta0), -np.sqrt(c) * (d @ theta0)])
        beta = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
        np.testing.assert_allclose(got[:, r], share.T @ (theta0 + n @ beta), rtol=0, atol=1e-9)  # two solvers
    np.testing.assert_allclose(got.sum(axis=0), delta, rtol=0, atol=1e-12)  # efficiency: the constraint
