"""The vectorized engine, metric by metric and group by group, against scikit-learn on masked rows.

Every value SliceReport gives for a built-in metric is compared with scikit-learn called
on that group's rows, picked with masks built independently of the code under test.
Both sides sum the same float64 values in different orders, hence the 1e-12 tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from modelyard.evaluate import (
    METRICS,
    MISSING,
    SliceReport,
    auc_pr,
    brier,
    bucket_labels,
    confusion_matrix,
    expected_calibration_error,
    f1,
    fnr,
    fpr,
    precision,
    recall,
    selection_rate,
    tnr,
    tpr,
)

RTOL = 1e-12
BINARY = ["accuracy", "precision", "recall", "f1", "tpr", "fpr", "tnr", "fnr", "selection_rate", "auc", "auc_pr",
          "log_loss", "brier", "ece"]
MULTICLASS = ["accuracy", "precision", "recall", "f1", "auc", "auc_pr", "log_loss", "brier", "ece"]


def _frame(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "g": rng.choice(["a", "b", "c", "d"], size=n, p=[0.5, 0.3, 0.15, 0.05]),
        "h": rng.choice([1, 2, 3], size=n),
        "age": rng.integers(17, 90, size=n).astype(float),
    })
    frame.loc[rng.random(n) < 0.04, "g"] = None
    return frame


def _binary(seed: int, n: int, *, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 10)
    s = rng.random(n)
    if ties:
        # Many tied scores, some exactly at the 0.5 and 0.3 thresholds; none exactly 0 or 1, which the
        # two log-losses clip differently (1e-15 here, machine epsilon in scikit-learn).
        s = np.clip(np.round(s, 1), 0.05, 0.95)
    y = (rng.random(n) < 0.25 + 0.5 * s).astype(np.int64)
    return y, s


def _masks(frame: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    g = frame["g"]
    out = {"g": {str(v): (g == v).to_numpy() for v in g.dropna().unique()}}
    out["g"][MISSING] = g.isna().to_numpy()
    out["g × h"] = {f"{a} × {b}": (out["g"][a] & (frame["h"] == b).to_numpy())
                    for a in out["g"] for b in frame["h"].unique()}
    out["g × h"] = {k: v for k, v in out["g × h"].items() if v.any()}
    return out


def _ece(y: np.ndarray, proba: np.ndarray, bins: int) -> float:
    """Top-label ECE written out row by row (no scikit-learn equivalent)."""
    total = np.zeros(bins)
    for yi, p in zip(y, proba):
        k = int(np.argmax(p))
        b = min(int(p[k] * bins), bins - 1)
        total[b] += float(k == yi) - p[k]
    return float(np.abs(total).sum() / len(y)) if len(y) else math.nan


def _sk_binary(metric: str, y: np.ndarray, s: np.ndarray, threshold: float | None = None) -> float:
    pred = (s > 0.5) if threshold is None else (s > threshold)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()

    def ratio(a: float, b: float) -> float:
        return a / b if b else math.nan

    if metric == "accuracy":
        return skm.accuracy_score(y, pred)
    if metric == "precision":
        return skm.precision_score(y, pred, zero_division=np.nan)
    if metric in ("recall", "tpr"):
        return skm.recall_score(y, pred, zero_division=np.nan)
    if metric == "f1":
        return skm.f1_score(y, pred, zero_division=np.nan)
    if metric == "fpr":
        return ratio(fp, fp + tn)
    if metric == "tnr":
        return ratio(tn, fp + tn)
    if metric == "fnr":
        return ratio(fn, fn + tp)
    if metric == "selection_rate":
        return float(np.mean(pred))
    if metric == "auc":
        return skm.roc_auc_score(y, s) if np.unique(y).size == 2 else math.nan
    if metric == "auc_pr":
        return skm.average_precision_score(y, s) if y.any() else math.nan
    if metric == "log_loss":
        return skm.log_loss(y, np.column_stack([1 - s, s]), labels=[0, 1])
    if metric == "brier":
        return skm.brier_score_loss(y, s, pos_label=1)
    if metric == "ece":
        return _ece(y, np.column_stack([1 - s, s]), 10)
    raise AssertionError(metric)


def _sk_multiclass(metric: str, y: np.ndarray, p: np.ndarray) -> float:
    k = p.shape[1]
    pred = p.argmax(axis=1)
    if metric == "accuracy":
        return skm.accuracy_score(y, pred)
    if metric in ("precision", "recall", "f1"):
        fn = {"precision": skm.precision_score, "recall": skm.recall_score, "f1": skm.f1_score}[metric]
        return fn(y, pred, average="macro", zero_division=np.nan)
    if metric == "auc":
        present = [c for c in range(k) if 0 < (y == c).sum() < len(y)]
        return float(np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in present])) if present else math.nan
    if metric == "auc_pr":
        present = [c for c in range(k) if (y == c).any()]
        return float(np.mean([skm.average_precision_score(y == c, p[:, c]) for c in present]))
    if metric == "log_loss":
        return skm.log_loss(y, p, labels=list(range(k)))
    if metric == "brier":
        return skm.brier_score_loss(y, p, labels=list(range(k)))
    if metric == "ece":
        return _ece(y, p, 10)
    raise AssertionError(metric)


@pytest.mark.parametrize("ties", [False, True])
def test_binary_metrics_per_group_match_sklearn(ties: bool) -> None:
    frame = _frame(0, 1500)
    y, s = _binary(0, 1500, ties=ties)
    report = SliceReport(y_true=y, y_score=s, frame=frame, slices=["g", ("g", "h")], metrics=BINARY,
                         task="binary", thresholds=[0.3, 0.5])
    masks = _masks(frame)
    for name, groups in masks.items():
        assert set(report.by_slice[name]) == set(groups), name
        for group, mask in groups.items():
            got = report.by_slice[name][group]
            for metric in BINARY:
                assert got[metric] == pytest.approx(_sk_binary(metric, y[mask], s[mask]), rel=RTOL, nan_ok=True), \
                    f"{name=} {group=} {metric=}"
            for t in (0.3, 0.5):
                for metric in ("accuracy", "precision", "recall", "f1", "tpr", "fpr", "selection_rate"):
                    expected = _sk_binary(metric, y[mask], s[mask], threshold=t)
                    assert got[f"{metric}@{t:g}"] == pytest.approx(expected, rel=RTOL, nan_ok=True), \
                        f"{name=} {group=} {metric}@{t}"
    for metric in BINARY:
        assert report.overall[metric] == pytest.approx(_sk_binary(metric, y, s), rel=RTOL), metric


def test_binary_metric_functions_match_the_engine() -> None:
    y, s = _binary(1, 700, ties=True)
    report = SliceReport(y_true=y, y_score=s, frame=None, slices=[], metrics=BINARY, task="binary")
    fns = {m: METRICS.get(m) for m in BINARY}
    for metric, fn in fns.items():
        assert report.overall[metric] == pytest.approx(fn(y, s), rel=RTOL), metric
        assert fn(y, np.column_stack([1 - s, s])) == pytest.approx(fn(y, s), rel=RTOL), metric  # both shapes
    assert (precision, recall, f1, tpr, fpr, tnr, fnr, selection_rate, auc_pr, brier) == tuple(
        METRICS.get(m) for m in ("precision", "recall", "f1", "tpr", "fpr", "tnr", "fnr", "selection_rate",
                                 "auc_pr", "brier"))
    assert METRICS.get("ece") is expected_calibration_error
    assert expected_calibration_error(y, s, bins=15) == pytest.approx(_ece(y, np.column_stack([1 - s, s]), 15))


def test_undefined_values_are_nan() -> None:
    y = np.array([0, 0, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4])  # nothing predicted positive
    report = SliceReport(y_true=y, y_score=s, frame=pd.DataFrame({"g": ["a", "a", "a", "b"]}), slices=["g"],
                         metrics=["precision", "recall", "fpr", "auc", "auc_pr", "f1"], task="binary")
    assert math.isnan(report.overall["precision"])  # no positive predictions
    assert report.overall["recall"] == 0.0
    a = report.by_slice["g"]["a"]
    assert math.isnan(a["recall"]) and math.isnan(a["auc"]) and math.isnan(a["auc_pr"]) and math.isnan(a["f1"])
    assert a["fpr"] == 0.0
    assert math.isnan(report.by_slice["g"]["b"]["fpr"])  # no negatives


@pytest.mark.parametrize("k", [3, 5])
def test_multiclass_metrics_per_group_match_sklearn(k: int) -> None:
    frame = _frame(2, 1200)
    rng = np.random.default_rng(k)
    p = rng.dirichlet(np.ones(k), size=1200)
    y = np.array([rng.choice(k, p=0.5 * q + 0.5 / k) for q in p])
    report = SliceReport(y_true=y, y_score=p, frame=frame, slices=["g", ("g", "h")], metrics=MULTICLASS,
                         task="multiclass")
    for name, groups in _masks(frame).items():
        for group, mask in groups.items():
            for metric in MULTICLASS:
                expected = _sk_multiclass(metric, y[mask], p[mask])
                got = report.by_slice[name][group][metric]
                assert got == pytest.approx(expected, rel=RTOL, nan_ok=True), f"{name=} {group=} {metric=}"
    for metric in MULTICLASS:
        assert report.overall[metric] == pytest.approx(_sk_multiclass(metric, y, p), rel=RTOL), metric
        assert METRICS.get(metric)(y, p) == pytest.approx(report.overall[metric], rel=RTOL), metric


def test_regression_metrics_per_group_match_sklearn() -> None:
    frame = _frame(3, 1000)
    rng = np.random.default_rng(3)
    y = rng.normal(1e5, 40.0, size=1000)  # a large mean: sums of squares must not cancel
    pred = y + rng.normal(0, 15.0, size=1000)
    report = SliceReport(y_true=y, y_score=pred, frame=frame, slices=["g", ("g", "h")],
                         metrics=["rmse", "mae", "r2"], task="regression")
    for name, groups in _masks(frame).items():
        for group, mask in groups.items():
            got = report.by_slice[name][group]
            assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y[mask], pred[mask])), rel=RTOL)
            assert got["mae"] == pytest.approx(skm.mean_absolute_error(y[mask], pred[mask]), rel=RTOL)
            expected = skm.r2_score(y[mask], pred[mask]) if mask.sum() > 1 else math.nan
            assert got["r2"] == pytest.approx(expected, rel=1e-9, nan_ok=True), f"{name=} {group=}"


def test_confusion_matrices_per_group() -> None:
    frame = _frame(4, 800)
    y, s = _binary(4, 800)
    report = SliceReport(y_true=y, y_score=s, frame=frame, slices=["g"], metrics=["accuracy"], task="binary")
    assert np.array_equal(report.confusion["overall"], skm.confusion_matrix(y, s > 0.5))
    for group, mask in _masks(frame)["g"].items():
        expected = skm.confusion_matrix(y[mask], s[mask] > 0.5, labels=[0, 1])
        assert np.array_equal(report.confusion["by_slice"]["g"][group], expected), group
    assert np.array_equal(confusion_matrix(y, s), skm.confusion_matrix(y, s > 0.5))
    assert np.array_equal(confusion_matrix(y, s, threshold=0.3), skm.confusion_matrix(y, s > 0.3))
    assert report.to_dict()["confusion"]["overall"] == skm.confusion_matrix(y, s > 0.5).tolist()
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=300)
    yk = rng.integers(0, 4, size=300)
    multi = SliceReport(y_true=yk, y_score=p, frame=None, slices=[], metrics=["accuracy"], task="multiclass")
    assert np.array_equal(multi.confusion["overall"], skm.confusion_matrix(yk, p.argmax(axis=1), labels=range(4)))


def test_quantile_buckets_and_predicates() -> None:
    frame = _frame(5, 900)
    y, s = _binary(5, 900)
    report = SliceReport(
        y_true=y, y_score=s, frame=frame, task="binary", metrics=["accuracy", "auc"],
        slices=[{"feature": "age", "quantiles": 4}, {"name": "young", "where": "age < 30"},
                {"name": "b_or_c", "where": lambda f: f["g"].isin(["b", "c"])},
                ("g", {"name": "old", "where": "age >= 60"})],
    )
    edges = np.quantile(frame["age"], [0.25, 0.5, 0.75])
    assert report.to_dict()["slices"][0]["buckets"] == {"age": list(np.unique(edges))}
    age = frame["age"].to_numpy()
    first = age < edges[0]
    assert list(report.by_slice["age"]) == bucket_labels(edges)
    q1 = report.by_slice["age"][bucket_labels(edges)[0]]
    assert q1["count"] == first.sum()
    assert q1["auc"] == pytest.approx(skm.roc_auc_score(y[first], s[first]), rel=RTOL)
    young = age < 30
    assert report.by_slice["young"]["True"]["count"] == young.sum()
    assert report.by_slice["young"]["False"]["accuracy"] == pytest.approx(
        skm.accuracy_score(y[~young], s[~young] > 0.5), rel=RTOL)
    bc = frame["g"].isin(["b", "c"]).to_numpy()
    assert report.by_slice["b_or_c"]["True"]["count"] == bc.sum()
    old_a = (frame["g"] == "a").to_numpy() & (age >= 60)
    assert report.by_slice["g × old"]["a × True"]["auc"] == pytest.approx(
        skm.roc_auc_score(y[old_a], s[old_a]), rel=RTOL)
    assert report.to_dict()["slices"][1]["where"] == {"young": "age < 30"}


def test_min_count_flags_small_groups() -> None:
    frame = _frame(6, 600)
    y, s = _binary(6, 600)
    report = SliceReport(y_true=y, y_score=s, frame=frame, slices=["g", ("g", "h")], metrics=["accuracy"],
                         task="binary", min_count=40)
    for name, table in report.by_slice.items():
        assert set(report.small[name]) == {g for g, v in table.items() if v["count"] < 40}, name
    assert MISSING in report.small["g"] and "a" not in report.small["g"]  # 4% and 50% of 600 rows
    long = report.to_frame()
    assert set(long.loc[long["small"], "value"]) == {g for t in report.small.values() for g in t}
    assert report.to_dict()["small"] == report.small
    none = SliceReport(y_true=y, y_score=s, frame=frame, slices=["g"], task="binary", min_count=None)
    assert none.small == {"g": []}


def test_custom_callables_run_per_group_beside_the_engine() -> None:
    frame = _frame(7, 500)
    y, s = _binary(7, 500)

    def balanced_accuracy(yt: np.ndarray, ys: np.ndarray) -> float:
        return skm.balanced_accuracy_score(yt, ys > 0.5)

    report = SliceReport(y_true=y, y_score=s, frame=frame, slices=["g"], metrics=["auc", balanced_accuracy],
                         task="binary")
    assert report.metrics == ["count", "auc", "balanced_accuracy"]
    for group, mask in _masks(frame)["g"].items():
        assert report.by_slice["g"][group]["balanced_accuracy"] == pytest.approx(
            skm.balanced_accuracy_score(y[mask], s[mask] > 0.5), rel=RTOL)
