"""Sliced metrics: modelyard's engine against fairlearn's MetricFrame, a pandas groupby and a numpy floor.

    python bench/evaluate/slicing.py [--rows 1000000] [--replicates 200] [--repeats 3] [--out results.json]

Setup (issue 5): 1,000,000 rows, two sensitive features with 20 and 5 values, sliced by
each and by their cross (20 + 5 + 100 groups, plus overall); accuracy, TPR, FPR,
selection rate and AUC per group. Class 1 is predicted where the score exceeds 0.5.

Contenders, all in this one process, each starting from the same raw frame (string
columns), labels and scores:

* numpy floor: ``pd.factorize`` the columns, ``np.bincount`` the confusion counts per
  group, AUC from one sort of the scores, a stable (radix) sort by group per slicing
  and rank sums. About the least plain-numpy work that gives these numbers.
* pandas groupby calling scikit-learn per group.
* fairlearn ``MetricFrame`` (one per slicing, the cross with two sensitive columns).
* modelyard ``SliceReport`` without intervals, and with ``--replicates`` Poisson
  bootstrap replicates.

Prints times (best of ``--repeats`` for the fast ones; MetricFrame and the bootstrap
once), the largest difference to MetricFrame over every metric and group, the ratios
and the goals: ours <= 2x the floor (so faster than the groupby), and with replicates
<= 0.25x MetricFrame's time without intervals.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from modelyard.evaluate import SliceReport

METRICS = ["accuracy", "tpr", "fpr", "selection_rate", "auc"]
SLICES: list[Any] = ["a", "b", ("a", "b")]


def make_data(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Two categorical features (20 and 5 values, uneven frequencies), labels and scores that depend on them."""
    rng = np.random.default_rng(seed)
    pa = rng.dirichlet(np.full(20, 2.0))
    pb = rng.dirichlet(np.full(5, 2.0))
    a = rng.choice(20, size=n, p=pa)
    b = rng.choice(5, size=n, p=pb)
    frame = pd.DataFrame({"a": np.array([f"a{i:02d}" for i in range(20)])[a],
                          "b": np.array([f"b{i}" for i in range(5)])[b]})
    logit = rng.normal(size=n) + 0.1 * (a - 10) - 0.2 * (b - 2)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-1.5 * logit))).astype(np.int64)
    score = 1.0 / (1.0 + np.exp(-(logit + rng.normal(scale=0.8, size=n))))
    return frame, y, score


# -- contenders: each returns {slicing: {group: {metric: value}}} with slicing "overall", "a", "b", "a × b"
def numpy_floor(frame: pd.DataFrame, y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    ca, ua = pd.factorize(frame["a"], sort=True)
    cb, ub = pd.factorize(frame["b"], sort=True)
    pred = (s > 0.5).astype(np.int64)
    order = np.argsort(s)
    s_sorted, y_sorted = s[order], y[order]
    out: dict[str, Any] = {}
    for name, code, labels in [
        ("overall", np.zeros(len(y), dtype=np.int64), ["(all)"]),
        ("a", ca, [str(u) for u in ua]),
        ("b", cb, [str(u) for u in ub]),
        ("a × b", ca * len(ub) + cb, [f"{x} × {z}" for x in ua for z in ub]),
    ]:
        G = len(labels)
        cm = np.bincount(code * 4 + y * 2 + pred, minlength=G * 4).reshape(G, 2, 2).astype(np.float64)
        tn, fp, fn, tp = cm[:, 0, 0], cm[:, 0, 1], cm[:, 1, 0], cm[:, 1, 1]
        # AUC: rows by (group, score); average ranks of ties within a group; rank-sum of the positives.
        g = code[order]
        o2 = np.argsort(g.astype(np.uint8), kind="stable")  # small codes: a radix sort
        gs, ss, ys = g[o2], s_sorted[o2], y_sorted[o2]
        n = len(gs)
        new = np.r_[True, (gs[1:] != gs[:-1]) | (ss[1:] != ss[:-1])]
        starts = np.flatnonzero(new)
        ends = np.r_[starts[1:], n]
        gstart = np.searchsorted(gs, np.arange(G))
        rank = np.repeat((starts + ends + 1) / 2.0, ends - starts) - gstart[gs]
        pos = np.bincount(gs, ys, minlength=G)
        neg = np.bincount(gs, minlength=G) - pos
        rsum = np.bincount(gs, rank * ys, minlength=G)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (rsum - pos * (pos + 1) / 2) / (pos * neg)
            table = {
                "accuracy": (tp + tn) / (tp + tn + fp + fn), "tpr": tp / (tp + fn), "fpr": fp / (fp + tn),
                "selection_rate": (tp + fp) / (tp + tn + fp + fn), "auc": auc,
            }
        seen = cm.sum(axis=(1, 2)) > 0
        out[name] = {labels[i]: {m: float(table[m][i]) for m in METRICS} for i in range(G) if seen[i]}
    return out


def _sk_group(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    pred = s > 0.5
    tn, fp, _, _ = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "accuracy": skm.accuracy_score(y, pred), "tpr": skm.recall_score(y, pred, zero_division=np.nan),
        "fpr": fp / (fp + tn), "selection_rate": float(pred.mean()), "auc": skm.roc_auc_score(y, s),
    }


def pandas_groupby(frame: pd.DataFrame, y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    df = frame.assign(y=y, s=s)
    out: dict[str, Any] = {"overall": {"(all)": _sk_group(y, s)}}
    for name, keys in [("a", ["a"]), ("b", ["b"]), ("a × b", ["a", "b"])]:
        table = {}
        for key, g in df.groupby(keys, sort=True):
            label = " × ".join(map(str, key))
            table[label] = _sk_group(g["y"].to_numpy(), g["s"].to_numpy())
        out[name] = table
    return out


def metricframe(frame: pd.DataFrame, y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    from fairlearn.metrics import (
        MetricFrame,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    def thresholded(fn: Callable[..., float]) -> Callable[[Any, Any], float]:
        return lambda yt, ys: fn(yt, np.asarray(ys) > 0.5)

    fns = {
        "accuracy": thresholded(skm.accuracy_score), "tpr": thresholded(true_positive_rate),
        "fpr": thresholded(false_positive_rate), "selection_rate": thresholded(selection_rate),
        "auc": skm.roc_auc_score,
    }
    out: dict[str, Any] = {}
    for name, cols in [("a", ["a"]), ("b", ["b"]), ("a × b", ["a", "b"])]:
        mf = MetricFrame(metrics=fns, y_true=y, y_pred=s, sensitive_features=frame[cols])
        if name == "a":
            out["overall"] = {"(all)": {m: float(v) for m, v in mf.overall.items()}}
        by = mf.by_group
        out[name] = {" × ".join(map(str, k if isinstance(k, tuple) else (k,))): {m: float(r[m]) for m in METRICS}
                     for k, r in by.iterrows()}
    return out


def ours(frame: pd.DataFrame, y: np.ndarray, s: np.ndarray, replicates: int = 0) -> dict[str, Any]:
    r = SliceReport(y_true=y, y_score=s, frame=frame, slices=SLICES, metrics=METRICS, task="binary",
                    bootstrap=replicates)
    out = {"overall": {"(all)": r.overall}, **r.by_slice}
    if replicates:
        out["_intervals"] = r.intervals
    return out


def max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    worst = 0.0
    for name in ("overall", "a", "b", "a × b"):
        assert set(a[name]) == set(b[name]), f"groups of {name} differ"
        for g in a[name]:
            for m in METRICS:
                x, z = a[name][g][m], b[name][g][m]
                if np.isnan(x) and np.isnan(z):
                    continue
                worst = max(worst, abs(x - z))
    return worst


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--replicates", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs for the fast contenders")
    ap.add_argument("--skip-metricframe", action="store_true", help="skip fairlearn (no ratio to it)")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()

    frame, y, s = make_data(args.rows)
    print(f"{args.rows:,} rows, slices a (20), b (5), a × b (100); metrics {METRICS}; "
          f"python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    results: dict[str, Any] = {"rows": args.rows, "replicates": args.replicates}
    t_floor, floor = timed(lambda: numpy_floor(frame, y, s), args.repeats)
    t_ours, mine = timed(lambda: ours(frame, y, s), args.repeats)
    t_gb, gb = timed(lambda: pandas_groupby(frame, y, s), args.repeats)
    results.update(floor_s=t_floor, ours_s=t_ours, groupby_s=t_gb)
    print(f"  numpy bincount floor      {t_floor:8.3f} s")
    print(f"  pandas groupby + sklearn  {t_gb:8.3f} s   max |diff| to ours {max_diff(gb, mine):.2e}")
    print(f"  modelyard, no intervals   {t_ours:8.3f} s   max |diff| to floor {max_diff(floor, mine):.2e}")
    t_boot, boot = timed(lambda: ours(frame, y, s, args.replicates), 1)
    results["ours_bootstrap_s"] = t_boot
    print(f"  modelyard, {args.replicates} replicates {t_boot:8.3f} s")
    if not args.skip_metricframe:
        t_mf, mf = timed(lambda: metricframe(frame, y, s), 1)
        diff = max_diff(mf, mine)
        results.update(metricframe_s=t_mf, max_abs_diff_metricframe=diff)
        print(f"  fairlearn MetricFrame     {t_mf:8.3f} s   max |diff| to ours {diff:.2e}")
    print("ratios")
    r_floor = t_ours / t_floor
    print(f"  ours / floor              {r_floor:6.2f}   goal <= 2     {'PASS' if r_floor <= 2 else 'FAIL'}")
    print(f"  ours / groupby            {t_ours / t_gb:6.2f}   goal < 1      {'PASS' if t_ours < t_gb else 'FAIL'}")
    results.update(ratio_floor=r_floor, ratio_groupby=t_ours / t_gb)
    if not args.skip_metricframe:
        speedup = t_mf / t_ours
        r_boot = t_boot / t_mf
        print(f"  MetricFrame / ours        {speedup:6.1f}   goal ~50")
        print(f"  ours+{args.replicates} / MetricFrame  {r_boot:6.3f}   goal <= 0.25  {'PASS' if r_boot <= 0.25 else 'FAIL'}")
        print(f"  max |diff| MetricFrame    {diff:.1e}   goal <= 1e-9  {'PASS' if diff <= 1e-9 else 'FAIL'}")
        results.update(ratio_metricframe=speedup, ratio_bootstrap_metricframe=r_boot)
    ci = boot["_intervals"]["overall"]
    print("overall with 95% intervals: " + ", ".join(f"{m} {mine['overall']['(all)'][m]:.4f} "
                                                    f"[{ci[m][0]:.4f}, {ci[m][1]:.4f}]" for m in METRICS))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
