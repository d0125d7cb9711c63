"""Per-group values against fairlearn's MetricFrame on the same rows, to 1e-9 (the benchmark's bar)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from modelyard.evaluate import SliceReport

fairlearn_metrics = pytest.importorskip(
    "fairlearn.metrics", reason="fairlearn is the reference here; install the dev extra (pip install fairlearn)"
)


def _data(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.choice([f"a{i}" for i in range(6)], size=n),
                          "b": rng.choice(["x", "y", "z"], size=n, p=[0.6, 0.3, 0.1])})
    s = rng.random(n)
    y = (rng.random(n) < s).astype(np.int64)
    return frame, y, np.round(s, 3)  # some ties


def _thresholded(fn: Callable[..., float]) -> Callable[[Any, Any], float]:
    return lambda yt, ys: fn(yt, np.asarray(ys) > 0.5)


def test_metricframe_parity() -> None:
    frame, y, s = _data(2000, 0)
    fm = fairlearn_metrics
    fns = {
        "accuracy": _thresholded(skm.accuracy_score),
        "tpr": _thresholded(fm.true_positive_rate),
        "fpr": _thresholded(fm.false_positive_rate),
        "fnr": _thresholded(fm.false_negative_rate),
        "tnr": _thresholded(fm.true_negative_rate),
        "selection_rate": _thresholded(fm.selection_rate),
        "auc": skm.roc_auc_score,
    }
    report = SliceReport(y_true=y, y_score=s, frame=frame, slices=["a", "b", ("a", "b")], metrics=list(fns),
                         task="binary")
    for name, cols in [("a", ["a"]), ("b", ["b"]), ("a × b", ["a", "b"])]:
        mf = fm.MetricFrame(metrics=fns, y_true=y, y_pred=s, sensitive_features=frame[cols])
        by_group = mf.by_group
        assert len(by_group) == len(report.by_slice[name])
        for key, row in by_group.iterrows():
            label = " × ".join(map(str, key if isinstance(key, tuple) else (key,)))
            for metric in fns:
                assert report.by_slice[name][label][metric] == pytest.approx(row[metric], abs=1e-9), \
                    f"{name=} {label=} {metric=}"
        for metric in fns:
            assert report.overall[metric] == pytest.approx(mf.overall[metric], abs=1e-9), metric
        # fairlearn's summaries follow from the same numbers.
        diff = report.difference("tpr")[name]
        assert diff == pytest.approx(mf.difference()["tpr"], abs=1e-9)
