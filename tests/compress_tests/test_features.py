"""Feature selection and extraction (issue 4, item 3): scores, components and transforms match
scikit-learn, k is chosen as documented, the results train and export, bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.compress import export_onnx
from modelyard.compress._design import OneHotDesign, mlp_size_bytes
from modelyard.compress._reduce import FeatureTransform, reduce_features
from modelyard.compress._select_features import (
    FEATURE_SELECTION_METHODS,
    select_features,
)
from modelyard.data import Column, TabularData, TabularSplit, infer_schema
from modelyard.errors import DataError, ModelFormatError
from modelyard.models import MLPConfig, OnnxPredictor, encode_matrix
from modelyard.train import fit_mlp

INFORMATIVE = ["a", "b", "c"]
TINY_MLP = MLPConfig(max_epochs=2, hidden_sizes=(8,))


def _synth(n: int = 4000, seed: int = 0, *, task: str = "binary") -> TabularData:
    """3 informative columns (a, b numeric; c categorical) and 10 noise columns (n0..n6, k0..k2).

    n0 has missing numbers and k0 missing categories, so the fill and ``<missing>`` rules are exercised.
    """
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {"a": rng.normal(size=n), "b": rng.normal(size=n),
                                   "c": rng.choice(["p", "q", "r"], size=n)}
    for i in range(7):
        cols[f"n{i}"] = rng.normal(size=n)
    for i in range(3):
        cols[f"k{i}"] = rng.choice(["u", "v", "w", "z"], size=n).astype(object)
    frame = pd.DataFrame(cols)
    for name in frame.columns[frame.dtypes == np.float64]:  # values exact in float32, as encode_frame reads them
        frame[name] = frame[name].astype(np.float32).astype(np.float64)
    frame.loc[rng.random(n) < 0.05, "n0"] = np.nan
    frame.loc[rng.random(n) < 0.05, "k0"] = None
    signal = 1.5 * frame["a"] - 1.2 * frame["b"] + frame["c"].map({"p": 1.2, "q": 0.0, "r": -1.2})
    if task == "regression":
        frame["y"] = signal + rng.normal(scale=0.5, size=n)
    else:
        frame["y"] = np.where(signal + 0.5 * rng.logistic(size=n) > 0, "yes", "no")
    frame["sex"] = rng.choice(["f", "m"], size=n)  # sensitive, not a feature
    schema = infer_schema(frame, "y", sensitive=["sex"], drop=["sex"])
    a, b = int(0.6 * n), int(0.8 * n)
    parts = [frame.iloc[:a], frame.iloc[a:b], frame.iloc[b:]]
    train, valid, test = (TabularSplit(p.reset_index(drop=True), schema) for p in parts)
    return TabularData("synth", schema, train, valid, test)


def _onehot(frame: pd.DataFrame, data: TabularData) -> tuple[np.ndarray, list[str]]:
    """The design matrix built independently: numeric (NaN -> train mean), then one 0/1 column per category."""
    train = data.train.frame
    blocks, owners = [], []
    for col in data.schema.features:
        if col.kind == "numeric":
            blocks.append(frame[col.name].fillna(train[col.name].mean()).to_numpy(dtype=np.float64)[:, None])
            owners.append(col.name)
        else:
            values = frame[col.name].where(frame[col.name].isin(col.categories), None)
            levels = ([None] if train[col.name].isna().any() else []) + list(col.categories)
            for level in levels:
                hit = values.isna() if level is None else values == level
                blocks.append(hit.to_numpy(dtype=np.float64)[:, None])
                owners.append(col.name)
    return np.hstack(blocks), owners


def _per_column(owners: list[str], part_scores: np.ndarray, how: str) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for name, s in zip(owners, part_scores, strict=True):
        out.setdefault(name, []).append(float(s))
    return {k: (max(v) if how == "max" else sum(v)) for k, v in out.items()}


@pytest.fixture(scope="module")
def data() -> TabularData:
    return _synth()


@pytest.fixture(scope="module")
def selections(data: TabularData) -> dict:
    return {m: select_features(data, m, "auto", seed=0) for m in FEATURE_SELECTION_METHODS}


# -- the design matrix ---------------------------------------------------------------------
def test_design_matrix_is_the_documented_one_hot(data: TabularData) -> None:
    design = OneHotDesign.fit(data.train)
    expected, owners = _onehot(data.valid.frame, data)
    # Exact but for the fill value, a mean whose summation order may differ (1e-16).
    np.testing.assert_allclose(design.matrix(data.valid.X), expected, rtol=0, atol=1e-14)
    assert [data.schema.feature_names[i] for i in design.owner] == owners
    assert "k0=<missing>" in design.part_names and "c=p" in design.part_names
    assert OneHotDesign.from_dict(json.loads(json.dumps(design.to_dict()))) == design


# -- selection: filter scores are scikit-learn's --------------------------------------------
def test_filter_scores_equal_sklearn_on_the_encoded_matrix(data: TabularData, selections: dict) -> None:
    from scipy.stats import chi2_contingency
    from sklearn.feature_selection import chi2, f_classif, mutual_info_classif

    schema, train = data.schema, data.train
    # mutual_info: the encoded matrix (numeric, then codes marked discrete), NaN -> training mean.
    x = encode_matrix(train.X, schema).astype(np.float64)
    x[:, : len(schema.numeric)] = np.where(np.isnan(x[:, : len(schema.numeric)]),
                                           np.nanmean(x[:, : len(schema.numeric)], axis=0), x[:, : len(schema.numeric)])
    discrete = np.array([False] * len(schema.numeric) + [True] * len(schema.categorical))
    mi = mutual_info_classif(x, train.y, discrete_features=discrete, random_state=0)
    order = schema.numeric_names + schema.categorical_names
    got = selections["mutual_info"][1].scores
    # Same matrix, same seed, same code path: equal up to float summation order.
    assert all(got[c] == pytest.approx(mi[order.index(c)], abs=1e-12) for c in schema.feature_names)

    z, owners = _onehot(train.frame, data)
    f, _ = f_classif(z, train.y)
    want = _per_column(owners, f, "max")  # anova: a column scores its best part
    got = selections["anova"][1].scores
    assert all(got[c] == pytest.approx(want[c], rel=1e-10) for c in want)

    lo, hi = z.min(axis=0), z.max(axis=0)
    c2, _ = chi2((z - lo) / (hi - lo), train.y)
    want = _per_column(owners, c2, "sum")  # chi2: a column scores the sum of its parts
    got = selections["chi2"][1].scores
    assert all(got[c] == pytest.approx(want[c], rel=1e-10) for c in want)
    # ... which for a categorical column is Pearson's chi-squared of its category x class table.
    table = pd.crosstab(train.frame["c"], train.frame["y"]).to_numpy()
    assert got["c"] == pytest.approx(chi2_contingency(table, correction=False).statistic, rel=1e-10)


# -- selection: the informative columns, and k -----------------------------------------------
@pytest.mark.parametrize("method", list(FEATURE_SELECTION_METHODS))
def test_every_method_keeps_the_informative_columns(method: str, selections: dict) -> None:
    selected, res = selections[method]
    assert sorted(res.ranking[:3]) == INFORMATIVE, res.scores
    # On 800 validation rows the noise columns move accuracy by less than the 0.005 tolerance.
    assert res.k == 3 and res.selected == INFORMATIVE == selected.schema.feature_names, res.reason
    best = max(p.score for p in res.curve)
    assert res.chosen.score >= best - res.tolerance
    assert all(p.score < best - res.tolerance for p in res.curve if p.k < res.k)  # the smallest such k
    assert res.baseline.k == 13 and res.kind == FEATURE_SELECTION_METHODS[method]
    assert res.chosen.model_bytes < res.baseline.model_bytes and res.chosen.n_params < res.baseline.n_params
    assert json.loads(json.dumps(res.to_dict()))["selected"] == INFORMATIVE


def test_selected_data_is_a_subset_of_raw_columns_that_trains_and_exports(selections: dict, data: TabularData,
                                                                          tmp_path: Path) -> None:
    selected, _ = selections["anova"]
    assert selected.schema.feature_names == INFORMATIVE
    assert selected.schema.target == "y" and selected.schema.sensitive == ("sex",)
    for name, split in selected.splits.items():
        assert list(split.frame.columns) == [*INFORMATIVE, "y", "sex"]
        assert len(split) == len(data.splits[name])
    model = fit_mlp(selected.train, selected.valid, TINY_MLP)
    path = tmp_path / "selected.onnx"
    export_onnx(model, path, sample=selected.test.X)
    served = OnnxPredictor(path.read_bytes())
    assert [i.name for i in served.session.get_inputs()] == INFORMATIVE  # raw columns, categorical c as strings
    np.testing.assert_allclose(served.predict_proba(selected.test.X), model.predict_proba(selected.test.X), atol=1e-5)


def test_integer_k_and_a_regression_target() -> None:
    data = _synth(n=1200, seed=1, task="regression")
    selected, res = select_features(data, "anova", k=2)
    assert res.metric == "r2" and res.k == 2 and len(selected.schema.features) == 2
    assert set(res.selected) <= set(INFORMATIVE) and res.reason.startswith("k=2 given")


# -- extraction: scikit-learn's own components ----------------------------------------------
def _scaled(data: TabularData, frame: pd.DataFrame, how: str) -> np.ndarray:
    z_train, _ = _onehot(data.train.frame, data)
    z, _ = _onehot(frame, data)
    if how == "standard":
        std = z_train.std(axis=0)
        return (z - z_train.mean(axis=0)) / np.where(std > 0, std, 1)
    lo, hi = z_train.min(axis=0), z_train.max(axis=0)
    return np.maximum((z - lo) / np.where(hi > lo, hi - lo, 1), 0)


@pytest.fixture(scope="module")
def small() -> TabularData:
    return _synth(n=1200, seed=2)


def test_pca_equals_sklearn_and_auto_is_the_smallest_k_reaching_the_threshold(small: TabularData) -> None:
    from sklearn.decomposition import PCA

    z = _scaled(small, small.train.frame, "standard")
    s = np.linalg.svd(z - z.mean(axis=0), compute_uv=False)
    ratio = s**2 / (s**2).sum()
    for variance in (0.5, 0.8, 0.95):
        _, t = reduce_features(small, "pca", "auto", variance=variance, curve=False)
        k = int(np.argmax(np.cumsum(ratio) >= variance)) + 1
        assert t.n_components == k and np.cumsum(ratio)[k - 2] < variance <= np.cumsum(ratio)[k - 1]
        # numpy's SVD and sklearn's (LAPACK gesdd) agree to rounding.
        np.testing.assert_allclose(t.explained_variance_ratio, ratio[: len(t.explained_variance_ratio)], atol=1e-12)
    reduced, t = reduce_features(small, "pca", 6, curve=False)
    np.testing.assert_allclose(t.scaled(small.train.X), z, atol=1e-12)  # standardized one-hot
    ref = PCA(n_components=6, svd_solver="full").fit(z)
    # Same matrix, same LAPACK call: components agree to rounding (1e-12), signs fixed by svd_flip.
    np.testing.assert_allclose(t.components, ref.components_, atol=1e-12)
    np.testing.assert_allclose(t.transform(small.test.X), ref.transform(_scaled(small, small.test.frame, "standard")),
                               atol=1e-10)  # components of magnitude ~10: 1e-10 is relative 1e-11
    assert reduced.schema.feature_names == [f"pc_{i}" for i in range(1, 7)]
    assert t.variance_kept == pytest.approx(ref.explained_variance_ratio_.sum(), abs=1e-12)


def test_ica_and_nmf_equal_sklearn(small: TabularData) -> None:
    from sklearn.decomposition import NMF, FastICA

    _, t = reduce_features(small, "ica", 4, curve=False, seed=3)
    z = _scaled(small, small.train.frame, "standard")
    ref = FastICA(n_components=4, whiten="unit-variance", max_iter=1000, random_state=3).fit(z)
    # The same deterministic iterations on the same matrix (equal to 1e-12 up to rounding).
    np.testing.assert_allclose(t.components, ref.components_, atol=1e-10)
    np.testing.assert_allclose(t.transform(small.test.X), ref.transform(_scaled(small, small.test.frame, "standard")),
                               atol=1e-9)

    reduced, t = reduce_features(small, "nmf", 4, curve=False, seed=3)
    z = _scaled(small, small.train.frame, "minmax")
    ref = NMF(n_components=4, init="nndsvda", solver="cd", max_iter=500, random_state=3)
    ref.fit(z)
    np.testing.assert_allclose(t.components, ref.components_, atol=1e-12)
    np.testing.assert_allclose(t.transform(small.test.X), ref.transform(_scaled(small, small.test.frame, "minmax")),
                               atol=1e-12)
    assert reduced.schema.feature_names == ["nmf_1", "nmf_2", "nmf_3", "nmf_4"]
    assert (reduced.train.frame[reduced.schema.feature_names].to_numpy() >= 0).all()


@pytest.mark.parametrize("method", ["pca", "ica", "nmf"])
def test_json_round_trip_reproduces_the_transform(method: str, small: TabularData, tmp_path: Path) -> None:
    _, t = reduce_features(small, method, 3, curve=False)
    loaded = FeatureTransform.load(t.save(tmp_path / "t.json"))
    # JSON keeps every float64 exactly; only BLAS summation order may differ.
    np.testing.assert_allclose(loaded.transform(small.test.X), t.transform(small.test.X), atol=1e-12)
    assert loaded.columns == t.columns and loaded.design == t.design
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**t.to_dict(), "components": [[1.0, 2.0]]}))
    with pytest.raises(ModelFormatError, match="corrupt"):
        FeatureTransform.load(bad)
    bad.write_text("{}")
    with pytest.raises(ModelFormatError, match="Not a modelyard feature transform"):
        FeatureTransform.load(bad)


def test_reduced_data_trains_and_serves_raw_columns_through_the_onnx_front(small: TabularData,
                                                                           tmp_path: Path) -> None:
    reduced, t = reduce_features(small, "pca", "auto", variance=0.8)
    assert t.curve and t.baseline is not None and any(p.k == t.n_components for p in t.curve)
    assert [p.model_bytes for p in t.curve] == sorted(p.model_bytes for p in t.curve)
    model = fit_mlp(reduced.train, reduced.valid, TINY_MLP)
    path = tmp_path / "pca_mlp.onnx"
    export_onnx(model, path, sample=reduced.valid.X)
    served = OnnxPredictor(t.compose_onnx(path).SerializeToString())
    raw = small.test.frame.copy()
    raw.loc[:5, "a"] = np.nan  # a missing number: filled with the training mean in both paths
    raw.loc[3:8, "c"] = "never seen"  # an unseen category: no indicator set in both paths
    expected = model.predict_proba(t.apply(raw)[reduced.schema.feature_names])
    np.testing.assert_allclose(served.predict_proba(raw[small.schema.feature_names]), expected, atol=1e-5)
    _, nmf = reduce_features(small, "nmf", 2, curve=False)
    with pytest.raises(ValueError, match="no ONNX front stage"):
        nmf.front_onnx()


def test_target_size_keeps_the_largest_k_whose_served_model_fits(small: TabularData) -> None:
    def size(k: int) -> int:  # MLP float32 weights + the front stage's float64 arrays (d = 25, 9 numeric)
        schema = type(small.schema)(tuple(Column(f"c{i}", "numeric") for i in range(k)), "y", "binary", ("no", "yes"))
        return mlp_size_bytes(schema) + 8 * (k * 25 + 3 * 25 + 9)

    target = (size(3) + size(4)) // 2
    _, t = reduce_features(small, "pca", target_size=target, variance=0.99, curve=False)
    assert t.n_components == 3 and size(3) <= target < size(4) and "target_size" in t.reason
    with pytest.raises(ValueError, match="below the smallest served model"):
        reduce_features(small, "pca", target_size=100, curve=False)


# -- bad input -----------------------------------------------------------------------------
def test_bad_input_gives_clear_errors(small: TabularData) -> None:
    with pytest.raises(ValueError, match=r"Unknown feature-selection method 'lasso'; known: \['mutual_info'"):
        select_features(small, "lasso")
    with pytest.raises(ValueError, match=r"Unknown feature-extraction method 'svd'; known: \['pca', 'ica', 'nmf'\]"):
        reduce_features(small, "svd")
    with pytest.raises(ValueError, match="k=14 but the data has 13 feature columns"):
        select_features(small, "anova", k=14)
    with pytest.raises(ValueError, match="k=0 but the data has 13"):
        select_features(small, "anova", k=0)
    # 9 numeric columns + indicators: c 3, k0 4 + <missing>, k1 4, k2 4 = 25 design columns.
    with pytest.raises(ValueError, match="at most 25 components exist"):
        reduce_features(small, "pca", 26)
    with pytest.raises(DataError, match="NMF needs non-negative input.*scale='minmax'"):
        reduce_features(small, "nmf", 2, scale="standard")
    with pytest.raises(DataError, match=r"columns \['a', 'b', 'n0', .*\] have negative values"):
        reduce_features(small, "nmf", 2, scale="none")
    with pytest.raises(ValueError, match="not both"):
        reduce_features(small, "pca", 3, target_size=10_000)
    with pytest.raises(TypeError, match="takes a TabularData"):
        select_features(small.train, "anova")
    regression = _synth(n=300, seed=4, task="regression")
    with pytest.raises(DataError, match="chi2.*regression target.*use method='anova'"):
        select_features(regression, "chi2")


# -- plots ---------------------------------------------------------------------------------
def test_plots_draw_results_and_keep_names_literal(selections: dict, small: TabularData) -> None:
    from matplotlib.figure import Figure

    from modelyard.report._compress_plots import (
        explained_variance_chart,
        feature_curve_chart,
        feature_curve_figure,
        size_accuracy_chart,
    )

    _, t = reduce_features(small, "pca", "auto", curve=False)
    uri = explained_variance_chart(t.explained_variance_ratio, chosen=t.n_components, threshold=t.variance)
    assert uri.startswith("data:image/png;base64,")
    curves = {f"$x$ <script>{m}": ([p.k for p in r.curve], [p.score for p in r.curve])
              for m, (_, r) in selections.items()}
    fig = feature_curve_figure(curves, chosen={n: 3 for n in curves}, baseline=0.9)
    assert isinstance(fig, Figure)
    labels = [tx.get_text() for tx in fig.axes[0].get_legend().get_texts()]
    assert "$x$ <script>anova" in labels  # math parsing is off: the name is drawn as given
    assert feature_curve_chart(curves).startswith("data:image/png;base64,")
    sizes = {m: ([p.model_bytes for p in r.curve], [p.score for p in r.curve]) for m, (_, r) in selections.items()}
    assert size_accuracy_chart(sizes, chosen={m: (r.chosen.model_bytes, r.chosen.score)
                                              for m, (_, r) in selections.items()},
                               baseline=(1000.0, 0.9)).startswith("data:image/png;base64,")
