"""Built-in metrics against scikit-learn (an independent reference), plus analytic cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from modelyard.evaluate import (
    METRICS,
    accuracy,
    auc,
    count,
    default_metrics,
    log_loss,
    mae,
    r2,
    resolve_metrics,
    rmse,
    roc_curve_points,
)

# Both sides sum the same float64 values in a different order; 1e-12 relative leaves room
# for that reordering and nothing else.
RTOL = 1e-12


def _classification(seed: int, n: int, k: int, *, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.ones(k), size=n)
    if ties:  # coarse scores: many tied values, where AUC implementations often differ
        proba = np.round(proba, 1)
        proba[:, -1] = 1.0 - proba[:, :-1].sum(axis=1)
    # Labels correlated with the scores, so AUC is away from 0.5 and accuracy is not trivial.
    y = np.array([rng.choice(k, p=0.5 * p / p.sum() + 0.5 / k) for p in np.clip(proba, 0, None)])
    return y, proba


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("ties", [False, True])
def test_classification_metrics_match_sklearn(seed: int, k: int, ties: bool) -> None:
    y, proba = _classification(seed, 400, k, ties=ties)
    assert accuracy(y, proba) == pytest.approx(skm.accuracy_score(y, proba.argmax(axis=1)), rel=RTOL), f"{seed=} {k=}"
    if k == 2:
        ref_auc = skm.roc_auc_score(y, proba[:, 1])
    else:
        ref_auc = skm.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(range(k)))
    assert auc(y, proba) == pytest.approx(ref_auc, rel=RTOL), f"auc {seed=} {k=} {ties=}"
    if not ties:  # rounded scores can hold exact zeros, which the two clip differently (1e-15 vs machine eps)
        ref_ll = skm.log_loss(y, proba, labels=list(range(k)))
        assert log_loss(y, proba) == pytest.approx(ref_ll, rel=RTOL), f"log_loss {seed=} {k=}"
    assert count(y, proba) == 400.0


def test_binary_metrics_accept_positive_class_scores() -> None:
    y, proba = _classification(3, 300, 2)
    assert auc(y, proba[:, 1]) == auc(y, proba)
    assert log_loss(y, proba[:, 1]) == pytest.approx(log_loss(y, proba), rel=RTOL)
    assert accuracy(y, proba[:, 1]) == accuracy(y, proba)
    assert accuracy(y, proba.argmax(axis=1)) == accuracy(y, proba)  # 1-D integers are predicted indices


def test_auc_single_class_is_nan() -> None:
    proba = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    assert np.isnan(auc(np.zeros(3, dtype=int), proba))
    assert np.isnan(auc(np.ones(3, dtype=int), proba))
    assert np.isnan(auc(np.array([], dtype=int), np.empty((0, 3))))


def test_multiclass_auc_averages_the_classes_present() -> None:
    y, proba = _classification(4, 300, 4)
    keep = y != 2  # class 2 absent from this "slice"
    y, proba = y[keep], proba[keep]
    expected = np.mean([skm.roc_auc_score(y == c, proba[:, c]) for c in (0, 1, 3)])
    assert auc(y, proba) == pytest.approx(expected, rel=RTOL)


def test_log_loss_with_a_class_missing_from_the_slice() -> None:
    y, proba = _classification(5, 200, 3)
    only_zero = y == 0
    expected = skm.log_loss(y[only_zero], proba[only_zero], labels=[0, 1, 2])
    assert log_loss(y[only_zero], proba[only_zero]) == pytest.approx(expected, rel=RTOL)


def test_log_loss_clips_probabilities() -> None:
    # A certain, wrong prediction costs -ln(1e-15) instead of infinity; a certain right one costs ~1e-15.
    proba = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert log_loss(np.array([1, 0]), proba) == pytest.approx((-np.log(1e-15) - np.log1p(-1e-15)) / 2, rel=RTOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.normal(10, 3, size=500)
    pred = y + rng.normal(0, 1.5, size=500)
    assert rmse(y, pred) == pytest.approx(np.sqrt(skm.mean_squared_error(y, pred)), rel=RTOL)
    assert mae(y, pred) == pytest.approx(skm.mean_absolute_error(y, pred), rel=RTOL)
    assert r2(y, pred) == pytest.approx(skm.r2_score(y, pred), rel=RTOL)
    assert r2(y, pred.reshape(-1, 1)) == r2(y, pred)


def test_r2_of_constant_target_is_nan() -> None:
    assert np.isnan(r2(np.ones(4), np.array([1.0, 2.0, 0.0, 1.0])))


def test_empty_input() -> None:
    empty, proba = np.array([], dtype=int), np.empty((0, 2))
    assert count(empty, proba) == 0.0
    for fn in (accuracy, auc, log_loss):
        assert np.isnan(fn(empty, proba)), fn.__name__
    for fn in (rmse, mae, r2):
        assert np.isnan(fn(np.array([]), np.array([]))), fn.__name__


def test_registry_and_defaults() -> None:
    for name in ("accuracy", "auc", "log_loss", "count", "rmse", "mae", "r2"):
        assert name in METRICS
    assert METRICS.get("auc") is auc
    with pytest.raises(ValueError, match=r"Unknown metric 'hinge'\. Known: \['accuracy'"):
        METRICS.get("hinge")
    assert default_metrics("binary") == ("count", "accuracy", "auc", "log_loss")
    assert default_metrics("regression") == ("count", "rmse", "mae", "r2")


def test_resolve_metrics() -> None:
    def brier(y_true: np.ndarray, y_score: np.ndarray) -> float:
        return float(np.mean((y_score[:, 1] - y_true) ** 2))

    assert list(resolve_metrics(["auc", brier], "binary")) == ["count", "auc", "brier"]
    assert list(resolve_metrics({"b": brier}, "binary")) == ["count", "b"]
    assert list(resolve_metrics(["count", "accuracy"], "multiclass")) == ["count", "accuracy"]
    with pytest.raises(ValueError, match=r"Metric 'rmse' does not apply to a binary task"):
        resolve_metrics(["rmse"], "binary")
    with pytest.raises(ValueError, match=r"Metric 'auc' is given twice"):
        resolve_metrics(["auc", "auc"], "binary")
    with pytest.raises(TypeError, match=r"Wrap a single metric in a list"):
        resolve_metrics("auc", "binary")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"task must be one of"):
        resolve_metrics(None, "ranking")


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"class indices"):
        accuracy(np.array(["a", "b"]), np.array([[0.5, 0.5], [0.1, 0.9]]))
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        log_loss(np.array([0, 2]), np.array([[0.5, 0.5], [0.1, 0.9]]))
    with pytest.raises(ValueError, match=r"shape \(n_rows, n_classes\) = \(3, k\)"):
        auc(np.array([0, 1, 1]), np.array([[0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"one prediction per row"):
        rmse(np.zeros(3), np.zeros(2))


# -- ROC curve -------------------------------------------------------------------------------
def _sk_points(y: np.ndarray, score: np.ndarray) -> set[tuple[float, float]]:
    fpr, tpr, _ = skm.roc_curve(y, score, drop_intermediate=False)
    return set(zip(fpr.tolist(), tpr.tolist()))


@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_points_match_sklearn_when_not_downsampled(ties: bool) -> None:
    y, proba = _classification(6, 150, 2, ties=ties)
    roc = roc_curve_points(y, proba, max_points=10_000)
    fpr, tpr, _ = skm.roc_curve(y, proba[:, 1], drop_intermediate=False)
    np.testing.assert_allclose(roc["fpr"], fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(roc["tpr"], tpr, rtol=0, atol=1e-15)
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(skm.roc_auc_score(y, proba[:, 1]), rel=1e-12)


def test_roc_curve_points_downsampled() -> None:
    y, proba = _classification(7, 5000, 2)
    roc = roc_curve_points(y, proba[:, 1], max_points=200)
    fpr, tpr = np.array(roc["fpr"]), np.array(roc["tpr"])
    assert 100 <= fpr.size <= 200
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert set(zip(fpr.tolist(), tpr.tolist())) <= _sk_points(y, proba[:, 1])
    # 200 points evenly spread along the curve lose little area: the trapezoids between kept
    # points differ from the full curve by far less than 0.005 (measured 1.3e-5 here).
    assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(y, proba[:, 1]), abs=5e-3)


def test_roc_curve_points_errors() -> None:
    y, proba = _classification(8, 50, 3)
    with pytest.raises(ValueError, match=r"binary classifiers; proba has 3 columns"):
        roc_curve_points(y, proba)
    with pytest.raises(ValueError, match=r"both classes"):
        roc_curve_points(np.zeros(5, dtype=int), np.full(5, 0.3))
    with pytest.raises(ValueError, match=r"max_points must be an integer >= 2"):
        roc_curve_points(np.array([0, 1]), np.array([0.2, 0.7]), max_points=1)
