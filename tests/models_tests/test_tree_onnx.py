"""Our gradient-boosting -> ONNX converter, checked against scikit-learn in a real ONNX Runtime session.

Tolerance. The converted ensemble compares and sums in float64 like scikit-learn (see
``modelyard.compress._tree_onnx``), so every split decision is identical and the raw
scores differ only by the order of a float64 sum (~1e-15). The outputs are float32:
a probability in [0, 1] is off by at most half a float32 ulp, 2**-25 ~ 3e-8. ``PROBA_ATOL
= 1e-6`` leaves a 30x margin for that rounding, yet stays far below what one wrong split
costs (a leaf value times the sigmoid's slope, ~1e-3 here). For regression the float32
rounding is relative (2**-24 ~ 6e-8 of the value), hence ``PRED_RTOL = 1e-6``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import helper, numpy_helper
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression

from modelyard.compress import ONNX_EXPORTERS, export_onnx, hgb_to_onnx, sklearn_to_onnx, with_raw_inputs
from modelyard.data import Schema, category_strings
from modelyard.models import GBMConfig, OnnxPredictor, SklearnPredictor, encode_matrix, fit_gbm

try:  # tests/models_tests may or may not be a package
    from ._adult_gbm import adult, adult_gbm, one_openmp_thread, synthetic_splits  # noqa: F401 - autouse fixture
except ImportError:
    from _adult_gbm import adult, adult_gbm, one_openmp_thread, synthetic_splits  # noqa: F401

PROBA_ATOL = 1e-6  # float32 rounding of a probability is <= 3e-8; see the module docstring
PRED_RTOL = 1e-6  # float32 rounding of a regression value is <= 6e-8 relative


# -- helpers --------------------------------------------------------------------------------------------


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_core(core: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The core graph on the encoded matrix ``x`` (float32 [N, F])."""
    return _session(core).run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]


def run_raw(model: onnx.ModelProto, frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """The wrapped graph on raw columns: numbers as float32 [N, 1] (NaN missing), categories as strings."""
    feeds = {}
    for col in schema.features:
        values = frame[col.name]
        if col.kind == "numeric":
            feeds[col.name] = values.to_numpy(dtype=np.float32, na_value=np.nan).reshape(-1, 1)
        else:
            feeds[col.name] = category_strings(values).reshape(-1, 1)  # missing -> ""
    return _session(model).run(None, feeds)[0]


def ensemble_attributes(model: onnx.ModelProto) -> dict[str, object]:
    (node,) = [n for n in model.graph.node if n.op_type == "TreeEnsemble"]
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def assert_parity(predictor: SklearnPredictor, frame: pd.DataFrame, label: str) -> None:
    """Core and raw-input graphs against the scikit-learn predictor on ``frame``."""
    schema = predictor.schema
    core = sklearn_to_onnx(predictor)
    wrapped = with_raw_inputs(core, schema)
    x = encode_matrix(frame, schema)
    if schema.task == "regression":
        expected = predictor.predict(frame)
        for name, got in (("core", run_core(core, x)), ("raw", run_raw(wrapped, frame, schema))):
            assert got.dtype == np.float32 and got.shape == (len(frame),), f"{label} {name}"
            np.testing.assert_allclose(got, expected, rtol=PRED_RTOL, atol=1e-9, err_msg=f"{label} {name}")
        return
    expected = predictor.predict_proba(frame)
    for name, got in (("core", run_core(core, x)), ("raw", run_raw(wrapped, frame, schema))):
        assert got.dtype == np.float32 and got.shape == (len(frame), schema.n_classes), f"{label} {name}"
        np.testing.assert_allclose(got, expected, rtol=0, atol=PROBA_ATOL, err_msg=f"{label} {name}")
        # Sums are 1 up to float32 rounding of each of <= 3 terms.
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=0, atol=PROBA_ATOL, err_msg=f"{label} {name}")


# -- parity against scikit-learn --------------------------------------------------------------------------


def _adult_rows_with_holes(frame: pd.DataFrame) -> pd.DataFrame:
    """Adult test rows plus missing numbers (Adult has none) and categories never seen in training."""
    out = frame.copy()
    out["age"] = out["age"].astype(float)
    out["capital-gain"] = out["capital-gain"].astype(float)
    out.loc[out.index[::7], "age"] = np.nan
    out.loc[out.index[3::11], "capital-gain"] = np.nan
    out.loc[out.index[5::13], "native-country"] = "Atlantis"
    out.loc[out.index[2::17], "sex"] = "unknown"  # sex has no missing value in training: code 0 is unseen
    out.loc[out.index[1::19], "workclass"] = np.nan
    return out


@pytest.mark.slow
@pytest.mark.parametrize("categorical", ["native", "ordinal"])
def test_adult_parity(categorical: str) -> None:
    data = adult()
    model, _ = adult_gbm(categorical)
    test = data.test.X
    assert test.isna().any().any()  # real missing values ("?") in workclass, occupation, native-country
    assert_parity(model, test, f"adult {categorical}")
    assert_parity(model, _adult_rows_with_holes(test), f"adult {categorical} with holes")


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("categorical", ["native", "ordinal"])
@pytest.mark.parametrize("max_leaf_nodes", [2, 7, 31])
@pytest.mark.parametrize("max_iter", [1, 15])
def test_synthetic_parity_grid(task: str, categorical: str, max_leaf_nodes: int, max_iter: int) -> None:
    train, test = synthetic_splits(task)
    config = GBMConfig(
        categorical=categorical, max_leaf_nodes=max_leaf_nodes, max_iter=max_iter, early_stopping=False,
        min_samples_leaf=5, learning_rate=0.3,
    )
    model = fit_gbm(train, None, config)
    assert model.estimator.n_iter_ == max_iter
    label = f"{task=} {categorical=} {max_leaf_nodes=} {max_iter=}"
    assert_parity(model, train.X, label + " train rows")
    assert_parity(model, test.X, label + " test rows (NaN, unseen categories, infinities)")


@pytest.mark.parametrize("categorical", ["native", "ordinal"])
def test_inputs_at_float32_neighbours_of_every_threshold(categorical: str) -> None:
    """Inputs equal to a threshold rounded to float32, and one float32 step either side.

    Thresholds are float64 midpoints between training values; a graph comparing against
    thresholds rounded to the nearest float32 would send some of these rows the wrong way.
    """
    train, _ = synthetic_splits("binary")
    # 200 distinct values (fewer than max_bins): thresholds are float64 midpoints of float32
    # neighbours, which need one bit more than float32 has about half of the time.
    # A monotone map keeps num_a's signal, so the trees split on it.
    pool = np.sort((np.random.default_rng(1).normal(size=200) * 1000).astype(np.float32)).astype(np.float64)
    rank = np.clip(((train.frame["num_a"] + 3) / 6 * 200).fillna(-1).astype(int), 0, 199)
    train.frame["num_a"] = np.where(train.frame["num_a"].isna(), np.nan, pool[rank])
    model = fit_gbm(train, None, GBMConfig(categorical=categorical, max_iter=15, early_stopping=False))
    # Tree feature indices follow scikit-learn's internal layout: categorical columns first when native.
    numeric_index = {2: 0, 3: 1} if categorical == "native" else {0: 0, 1: 1}
    thresholds = [
        (numeric_index[int(f)], float(t))
        for (predictor,) in model.estimator._predictors
        for f, t, leaf, cat in predictor.nodes[["feature_idx", "num_threshold", "is_leaf", "is_categorical"]]
        if not leaf and not cat and int(f) in numeric_index  # ordinal: codes get numeric splits too
    ]
    rows, flips = [], 0
    for column, t in thresholds:
        t32 = np.float32(t)
        for v in (np.nextafter(t32, np.float32(-np.inf)), t32, np.nextafter(t32, np.float32(np.inf))):
            row = train.X.iloc[len(rows) % len(train)].copy()
            row[train.schema.numeric_names[column]] = float(v)
            rows.append(row)
            flips += bool(v <= t32) != bool(float(v) <= t)  # where float32-rounded thresholds would go wrong
    frame = pd.DataFrame(rows).reset_index(drop=True)
    assert flips > 10, "the rows must include inputs that rounded thresholds would send the wrong way"
    assert_parity(model, frame, f"threshold neighbours {categorical}")


def test_estimator_class_order_differing_from_the_schema() -> None:
    """Fitted on labels whose sorted order is not the schema's: the graph reorders its columns."""
    train, test = synthetic_splits("multiclass")
    relabel = {"high": "c", "low": "a", "mid": "b"}
    est = HistGradientBoostingClassifier(max_iter=10, categorical_features=[False, False, True, True])
    est.fit(encode_matrix(train.X, train.schema), train.frame["y"].map(relabel))
    schema = replace(train.schema, classes=("c", "a", "b"))
    model = SklearnPredictor(est, schema)
    assert model.proba_columns.tolist() == [2, 0, 1]
    assert_parity(model, test.X, "reordered classes")


@pytest.mark.parametrize("loss", ["poisson", "gamma", "quantile", "absolute_error"])
def test_regression_losses_and_links(loss: str) -> None:
    train, test = synthetic_splits("regression")
    x_train, x_test = encode_matrix(train.X, train.schema), encode_matrix(test.X, test.schema)
    y = train.y - train.y.min() + 1.0  # positive for poisson and gamma
    extra = {"quantile": 0.8} if loss == "quantile" else {}
    est = HistGradientBoostingRegressor(
        loss=loss, max_iter=20, categorical_features=[False, False, True, True], **extra
    )
    est.fit(x_train, y)
    got = run_core(hgb_to_onnx(est), x_test)
    np.testing.assert_allclose(got, est.predict(x_test), rtol=PRED_RTOL, atol=1e-9, err_msg=loss)


# -- invariants ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("categorical", ["native", "ordinal"])
def test_every_leaf_is_reached_and_is_the_same_leaf(categorical: str) -> None:
    """Give each leaf of one tree a distinct value: ONNX and scikit-learn must reach the same leaf on every row.

    Every leaf holds at least min_samples_leaf training rows, so the training rows reach them all.
    """
    train, test = synthetic_splits("regression")
    config = GBMConfig(categorical=categorical, max_iter=1, early_stopping=False, max_leaf_nodes=31)
    model = fit_gbm(train, None, config)
    est = copy.deepcopy(model.estimator)
    (predictor,) = est._predictors[0]
    is_leaf = predictor.nodes["is_leaf"].astype(bool)
    assert is_leaf.sum() > 20  # a full tree: the growth stops at 31 leaves or when no split gains
    predictor.nodes["value"] = np.where(is_leaf, np.arange(len(is_leaf)), 0.0)  # leaf value = its node index
    est._baseline_prediction = np.zeros_like(est._baseline_prediction)
    core = hgb_to_onnx(est)
    for split in (train, test):
        x = encode_matrix(split.X, split.schema)
        sk_leaf = est.predict(x)
        onnx_leaf = run_core(core, x)
        np.testing.assert_array_equal(onnx_leaf, sk_leaf)  # small integers: exact in float32
        if split is train:
            assert set(sk_leaf.astype(int)) == set(np.flatnonzero(is_leaf)), "every leaf is reached"


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_graph_holds_every_tree_and_leaf(task: str) -> None:
    train, test = synthetic_splits(task)
    model = fit_gbm(train, None, GBMConfig(max_iter=12, early_stopping=False))
    est = model.estimator
    attrs = ensemble_attributes(sklearn_to_onnx(model))
    n_trees = sum(len(r) for r in est._predictors)
    assert n_trees == 12 * (3 if task == "multiclass" else 1)
    assert len(attrs["tree_roots"]) == n_trees
    leaves = sum(p.get_n_leaf_nodes() for r in est._predictors for p in r)
    assert len(attrs["leaf_targetids"]) == leaves
    assert len(numpy_helper.to_array(attrs["leaf_weights"])) == leaves
    interior = sum(int((~p.nodes["is_leaf"].astype(bool)).sum()) for r in est._predictors for p in r)
    assert len(attrs["nodes_featureids"]) == interior  # no tree here is a lone leaf
    modes = numpy_helper.to_array(attrs["nodes_modes"])
    n_members = int((modes == 6).sum())
    assert n_members > 0  # native categorical splits became BRANCH_MEMBER nodes
    assert np.isnan(numpy_helper.to_array(attrs["membership_values"])).sum() == n_members  # one set per node
    # Leaf values sum per class to the scikit-learn totals: nothing lost or duplicated.
    weights = numpy_helper.to_array(attrs["leaf_weights"])
    targets = np.array(attrs["leaf_targetids"])
    for k in range(est.n_trees_per_iteration_):
        trees = [r[k] for r in est._predictors]
        expected = sum(float(p.nodes["value"][p.nodes["is_leaf"].astype(bool)].sum()) for p in trees)
        assert weights[targets == k].sum() == pytest.approx(expected, rel=1e-12)


def test_trees_that_are_single_leaves() -> None:
    """A tree that cannot split is one leaf; it becomes a node whose both branches reach that leaf."""
    train, test = synthetic_splits("regression")
    model = fit_gbm(train, None, GBMConfig(max_iter=5, early_stopping=False, min_samples_leaf=len(train)))
    assert all(p.get_n_leaf_nodes() == 1 for r in model.estimator._predictors for p in r)
    attrs = ensemble_attributes(sklearn_to_onnx(model))
    assert attrs["nodes_truenodeids"] == attrs["nodes_falsenodeids"]
    assert_parity(model, test.X, "single-leaf trees")


@pytest.mark.parametrize("missing_go_to_left", [0, 1])
def test_categorical_split_sending_every_known_category_left(missing_go_to_left: int) -> None:
    """Degenerate set splits (every known category left) still match scikit-learn on every input."""
    train, test = synthetic_splits("binary")
    model = fit_gbm(train, None, GBMConfig(max_iter=3, early_stopping=False))
    est = copy.deepcopy(model.estimator)
    (predictor,) = est._predictors[0]
    nodes = predictor.nodes
    cat = np.flatnonzero(nodes["is_categorical"].astype(bool) & ~nodes["is_leaf"].astype(bool))
    assert len(cat) > 0
    i = cat[0]
    n_known = len(est._preprocessor.named_transformers_["encoder"].categories_[int(nodes["feature_idx"][i])])
    bitset = predictor.raw_left_cat_bitsets[nodes["bitset_idx"][i]]
    bitset[:] = 0
    for code in range(n_known):  # every known category goes left
        bitset[code // 32] |= np.uint32(1 << (code % 32))
    nodes["missing_go_to_left"][i] = missing_go_to_left
    wrapped = SklearnPredictor(est, train.schema)
    assert_parity(wrapped, test.X, f"every known category left, {missing_go_to_left=}")
    modes = numpy_helper.to_array(ensemble_attributes(sklearn_to_onnx(wrapped))["nodes_modes"])
    if missing_go_to_left:
        assert 1 in modes.tolist()  # nothing goes right but unseen/missing: written as "x < -inf", never true


# -- export_onnx: the registered exporter end to end --------------------------------------------------------------


def test_registered_as_the_sklearn_predictor_exporter() -> None:
    train, _ = synthetic_splits("binary")
    model = fit_gbm(train, None, GBMConfig(max_iter=3, early_stopping=False))
    assert ONNX_EXPORTERS.get(model) is sklearn_to_onnx


@pytest.mark.slow
def test_export_onnx_adult(tmp_path: Path) -> None:
    data = adult()
    model, _ = adult_gbm("native")
    sample = _adult_rows_with_holes(data.test.X.iloc[:3000])
    result = export_onnx(model, tmp_path / "gbm.onnx", sample=sample)
    # export_onnx checks parity itself with its own atol (1e-5); ours is tighter (module docstring).
    assert result.max_abs_diff <= PROBA_ATOL and result.n_rows == 3000
    served = OnnxPredictor(result.path)
    assert served.schema == model.schema
    rows = _adult_rows_with_holes(data.test.X)
    np.testing.assert_allclose(served.predict_proba(rows), model.predict_proba(rows), rtol=0, atol=PROBA_ATOL)
    np.testing.assert_array_equal(served.predict(rows), model.predict(rows))


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_export_onnx_synthetic(task: str, tmp_path: Path) -> None:
    train, test = synthetic_splits(task)
    model = fit_gbm(train, None, GBMConfig(max_iter=25, early_stopping=False))
    result = export_onnx(model, tmp_path / f"{task}.onnx", sample=test.X)
    served = OnnxPredictor(result.path)
    if task == "regression":
        np.testing.assert_allclose(served.predict(test.X), model.predict(test.X), rtol=PRED_RTOL, atol=1e-9)
    else:
        np.testing.assert_allclose(served.predict_proba(test.X), model.predict_proba(test.X), rtol=0, atol=PROBA_ATOL)


def test_export_onnx_refuses_estimators_without_a_converter(tmp_path: Path) -> None:
    train, test = synthetic_splits("binary")
    x = np.nan_to_num(encode_matrix(train.X, train.schema))
    logistic = SklearnPredictor(LogisticRegression().fit(x, train.y), train.schema)
    with pytest.raises(TypeError, match="Cannot convert LogisticRegression to ONNX"):
        export_onnx(logistic, tmp_path / "logistic.onnx", sample=test.X)
    assert not (tmp_path / "logistic.onnx").exists()


# -- refusals ---------------------------------------------------------------------------------------------------


def test_unsupported_estimators_are_refused_by_name() -> None:
    train, _ = synthetic_splits("binary")
    x = np.nan_to_num(encode_matrix(train.X, train.schema))
    logistic = SklearnPredictor(LogisticRegression().fit(x, train.y), train.schema)
    message = (
        "Cannot convert LogisticRegression to ONNX: the tree-ensemble converter supports "
        "HistGradientBoostingClassifier, HistGradientBoostingRegressor (binary, multiclass and regression)."
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        sklearn_to_onnx(logistic)
    with pytest.raises(TypeError, match=re.escape(message)):
        hgb_to_onnx(logistic.estimator)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sklearn_to_onnx converts a SklearnPredictor; got str"):
        sklearn_to_onnx("model.pkl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="HistGradientBoostingClassifier is not fitted"):
        hgb_to_onnx(HistGradientBoostingClassifier())
    est = HistGradientBoostingClassifier(max_iter=3).fit(x, train.y)
    with pytest.raises(ValueError, match=re.escape("class_order must be a permutation of 0..1, but got [0, 0].")):
        hgb_to_onnx(est, class_order=[0, 0])
    regressor = HistGradientBoostingRegressor(max_iter=3).fit(x, train.y.astype(float))
    with pytest.raises(ValueError, match="class_order applies to classifiers only"):
        hgb_to_onnx(regressor, class_order=[0])
    halves = HistGradientBoostingClassifier(max_iter=3, categorical_features=[False, True])
    halves.fit(np.c_[x[:, 0], x[:, 2] / 2], train.y)  # category values 0, 0.5, 1, ...
    with pytest.raises(ValueError, match="non-integer values in categorical column 1"):
        hgb_to_onnx(halves)
    strings = HistGradientBoostingClassifier(max_iter=3, categorical_features="from_dtype")
    strings.fit(pd.DataFrame({"n": x[:, 0], "c": pd.Categorical(train.X["cat_a"].fillna("none"))}), train.y)
    with pytest.raises(ValueError, match="non-integer values in categorical column 1"):
        hgb_to_onnx(strings)
    raw = SklearnPredictor(est, train.schema, inputs="raw")
    with pytest.raises(TypeError, match="inputs='raw'.*preprocessing is opaque to the converter"):
        sklearn_to_onnx(raw)
