"""Poisson-bootstrap intervals: coverage of known true values, shrinkage with n, the weights themselves,
and the binned AUC replicates' exactness at unit weights."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from modelyard.evaluate import SliceReport
from modelyard.evaluate import _engine as E
from modelyard.evaluate._groups import CellCoder, parse_slices


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _binormal(n_groups: int, size: int, mu: float, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Balanced labels; the score's logit is N(mu, 1) for positives and N(0, 1) for negatives.

    True values: AUC = Phi(mu / sqrt 2); accuracy at 0.5 = (Phi(mu) + 1/2) / 2;
    TPR = Phi(mu); FPR = 1/2.
    """
    rng = np.random.default_rng(seed)
    n = n_groups * size
    y = rng.integers(0, 2, size=n)
    z = rng.normal(size=n) + mu * y
    frame = pd.DataFrame({"rep": np.repeat(np.arange(n_groups), size)})
    return frame, y, 1.0 / (1.0 + np.exp(-z))


def _coverage(report: SliceReport, metric: str, truth: float) -> float:
    ci = report.intervals["by_slice"]["rep"]
    return float(np.mean([lo <= truth <= hi for lo, hi in (v[metric] for v in ci.values())]))


def test_coverage_of_known_true_values() -> None:
    # 300 independent samples of 300 rows, each its own group: one call, 300 intervals per metric.
    frame, y, s = _binormal(300, 300, mu=1.0, seed=0)
    report = SliceReport(y_true=y, y_score=s, frame=frame, slices=["rep"], task="binary", bootstrap=200,
                         metrics=["accuracy", "tpr", "fpr", "auc"], seed=1)
    truths = {"accuracy": (_phi(1.0) + 0.5) / 2, "tpr": _phi(1.0), "fpr": 0.5, "auc": _phi(1.0 / math.sqrt(2))}
    for metric, truth in truths.items():
        cov = _coverage(report, metric, truth)
        # Nominal 0.95. With 300 intervals the coverage estimate has a standard error of 0.0126, and
        # percentile intervals of 300 rows run a little narrow, so accept 0.89..0.99 (about 4.5 SE
        # below, 3 SE above): a broken interval (too narrow by a third, or centred wrong) lands far out.
        assert 0.89 <= cov <= 0.99, f"{metric}: coverage {cov:.3f}"


def test_regression_coverage() -> None:
    rng = np.random.default_rng(2)
    groups, size, sigma = 300, 300, 2.0
    y = rng.normal(50.0, 5.0, size=groups * size)
    pred = y + rng.normal(0.0, sigma, size=y.size)
    frame = pd.DataFrame({"rep": np.repeat(np.arange(groups), size)})
    report = SliceReport(y_true=y, y_score=pred, frame=frame, slices=["rep"], task="regression", bootstrap=200,
                         metrics=["mae", "rmse"], seed=3)
    for metric, truth in {"mae": sigma * math.sqrt(2 / math.pi), "rmse": sigma}.items():
        cov = _coverage(report, metric, truth)
        assert 0.89 <= cov <= 0.99, f"{metric}: coverage {cov:.3f}"  # same reasoning as above


def test_intervals_shrink_like_one_over_root_n() -> None:
    frame_a, y_a, s_a = _binormal(20, 200, mu=1.0, seed=4)
    frame_b, y_b, s_b = _binormal(20, 800, mu=1.0, seed=5)
    frame = pd.concat([frame_a.assign(size="small"), frame_b.assign(size="large")], ignore_index=True)
    frame["rep"] = frame["size"] + frame["rep"].astype(str)
    report = SliceReport(y_true=np.r_[y_a, y_b], y_score=np.r_[s_a, s_b], frame=frame, slices=["rep"],
                         task="binary", bootstrap=200, metrics=["accuracy", "auc"])
    ci = report.intervals["by_slice"]["rep"]
    for metric in ("accuracy", "auc"):
        width = {k: np.mean([ci[g][metric][1] - ci[g][metric][0] for g in ci if g.startswith(k)])
                 for k in ("small", "large")}
        ratio = width["large"] / width["small"]
        assert 0.4 <= ratio <= 0.6, f"{metric}: 4x the rows gave width ratio {ratio:.3f}, expected about 0.5"


def test_intervals_in_every_output() -> None:
    frame, y, s = _binormal(3, 400, mu=1.0, seed=6)
    report = SliceReport(y_true=y, y_score=s, frame=frame, slices=["rep"], task="binary", bootstrap=50,
                         metrics=["accuracy", "auc", "auc_pr", "log_loss", "brier", "ece"], thresholds=[0.3])
    lo, hi = report.interval("auc")
    assert lo < report.overall["auc"] < hi
    assert report.interval("accuracy@0.3", "rep", "1") == report.intervals["by_slice"]["rep"]["1"]["accuracy@0.3"]
    for metric in report.metrics:
        lo, hi = report.interval(metric, "rep", "0")
        assert lo <= hi, metric
    d = report.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["intervals"]["replicates"] == 50 and d["intervals"]["confidence"] == 0.95
    long = report.to_frame()
    assert list(long.columns) == ["slice", "value", "metric", "score", "small", "lower", "upper"]
    assert (long["lower"] <= long["upper"]).all()
    with pytest.raises(ValueError, match=r"Slice 'rep' has no group 'nope'"):
        report.interval("auc", "rep", "nope")
    plain = SliceReport(y_true=y, y_score=s, frame=None, slices=[], task="binary")
    with pytest.raises(ValueError, match=r"no intervals; build it with bootstrap=200"):
        plain.interval("auc")


def test_custom_callables_get_intervals_too() -> None:
    frame, y, s = _binormal(2, 500, mu=1.0, seed=7)

    def mean_score(yt: np.ndarray, ys: np.ndarray) -> float:
        return float(np.mean(ys))

    report = SliceReport(y_true=y, y_score=s, frame=frame, slices=["rep"], metrics=[mean_score, "accuracy"],
                         task="binary", bootstrap=100)
    for group in ("0", "1"):
        lo, hi = report.interval("mean_score", "rep", group)
        assert lo < report.by_slice["rep"][group]["mean_score"] < hi
        assert 0.0 < hi - lo < 0.1


def test_poisson_weights() -> None:
    whole = E.poisson_weights(7, 0, 200_000, 0, 6)
    assert whole.shape == (6, 200_000) and whole.dtype == np.uint8
    # Any chunk, and any range of replicates, reads the same weights.
    assert np.array_equal(E.poisson_weights(7, 70_001, 131_000, 0, 6), whole[:, 70_001:131_000])
    assert np.array_equal(E.poisson_weights(7, 5, 65_540, 2, 5), whole[2:5, 5:65_540])
    assert not np.array_equal(E.poisson_weights(8, 0, 1000, 0, 1), whole[:1, :1000])
    # Poisson(1): mean 1, variance 1, P(0) = e^-1 (2.4 million draws: standard errors about 0.001).
    assert whole.mean() == pytest.approx(1.0, abs=0.003)
    assert whole.var() == pytest.approx(1.0, abs=0.005)
    assert np.mean(whole == 0) == pytest.approx(math.exp(-1), abs=0.002)


@pytest.mark.parametrize("ties", [False, True])
def test_binned_replicates_are_exact_at_unit_weights(ties: bool) -> None:
    rng = np.random.default_rng(8)
    n = 3000
    frame = pd.DataFrame({"g": rng.choice(list("abc"), size=n)})
    s = rng.random(n)
    if ties:
        s = np.round(s, 2)
    y = (rng.random(n) < s).astype(np.int64)
    plan = E.Plan("binary", 2, (("count", "count", None), ("auc", "auc", None)))
    rows = E.Rows(plan, y, s)
    coder = CellCoder(parse_slices(["g"]))
    cell = coder.encode(frame, n)
    (run,) = E.rank_runs(rows, cell, coder.n_cells)
    cell_group, labels = coder.groups(0)
    bins = E.Bins.quantiles(run, 16)  # few bins: many pairs within a bin
    exact = E.run_groups(run, cell_group, len(labels), bins=bins)
    from modelyard.evaluate._accumulate import run_bin_counts

    counts = E.aggregate({"c": run_bin_counts(run, bins, coder.n_cells)}, cell_group, len(labels))["c"]
    binned = E.binned_point(counts, exact["rho"])
    np.testing.assert_allclose(binned["U"], exact["U"], rtol=1e-12)
    without = E.binned_point(counts)  # ties within a bin at one half: off, but within the stated bound
    auc_exact = exact["U"] / (exact["P"] * exact["N"])
    auc_binned = without["U"] / (without["P"] * without["N"])
    assert np.all(np.abs(auc_binned - auc_exact) <= without["bound"] + 1e-15)
    assert np.any(np.abs(auc_binned - auc_exact) > 1e-6)


def test_no_rows_gives_nan_intervals() -> None:
    empty = SliceReport(y_true=np.array([], dtype=int), y_score=np.zeros(0), frame=pd.DataFrame({"g": []}),
                        slices=["g"], task="binary", bootstrap=10)
    assert empty.overall["count"] == 0 and empty.by_slice == {"g": {}}
    assert all(math.isnan(lo) and math.isnan(hi) for lo, hi in empty.intervals["overall"].values())
