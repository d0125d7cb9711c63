"""Streaming: chunks through mergeable accumulators give the in-memory result; Parquet in batches."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from modelyard.data import infer_schema
from modelyard.errors import DataError
from modelyard.evaluate import SliceAccumulator, SliceReport, evaluate_parquet
from modelyard.models import BasePredictor

SLICES: list[Any] = [
    "g",
    ("g", "h"),
    {"feature": "age", "buckets": [30, 60]},
    {"name": "young", "where": "age < 30"},
]


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "g": rng.choice(["a", "b", "c"], size=n),
        "h": rng.choice([1, 2], size=n),
        "age": rng.integers(17, 90, size=n).astype(float),
    })
    frame.loc[rng.random(n) < 0.05, "g"] = None
    frame.loc[rng.random(n) < 0.05, "age"] = np.nan
    frame.loc[n - 40 :, "g"] = "late"  # a value first seen in the last chunk
    return frame


def _task_data(task: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    if task == "binary":
        s = np.round(rng.random(n), 3)  # ties across chunks
        return (rng.random(n) < s).astype(np.int64), s, ["accuracy", "precision", "f1", "fpr", "auc", "auc_pr",
                                                          "log_loss", "brier", "ece", "recall@0.3"]
    if task == "multiclass":
        p = rng.dirichlet(np.ones(3), size=n)
        return np.array([rng.choice(3, p=q) for q in p]), p, ["accuracy", "precision", "recall", "f1", "auc",
                                                             "auc_pr", "log_loss", "brier", "ece"]
    y = rng.normal(1e4, 5.0, size=n)
    return y, y + rng.normal(0, 2.0, size=n), ["rmse", "mae", "r2"]


def _assert_same(a: SliceReport, b: SliceReport, rtol: float = 1e-12) -> None:
    assert a.metrics == b.metrics
    assert a.overall["count"] == b.overall["count"]
    for name in a.by_slice:
        assert list(a.by_slice[name]) == list(b.by_slice[name]), name  # same groups, same order
        for group, values in a.by_slice[name].items():
            other = b.by_slice[name][group]
            assert values["count"] == other["count"], (name, group)  # counts exactly
            for metric, v in values.items():
                assert other[metric] == pytest.approx(v, rel=rtol, abs=1e-14, nan_ok=True), (name, group, metric)
    for metric, v in a.overall.items():
        assert b.overall[metric] == pytest.approx(v, rel=rtol, nan_ok=True), metric


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_chunks_and_merges_equal_the_in_memory_result(task: str) -> None:
    n = 3000
    frame = _frame(n, 0)
    y, s, metrics = _task_data(task, n, 1)
    memory = SliceReport(y_true=y, y_score=s, frame=frame, slices=SLICES, metrics=metrics, task=task)
    # Four workers take uneven chunks out of order; their accumulators merge in yet another order.
    bounds = [0, 400, 1100, 1111, 2500, n]
    first = SliceAccumulator(task=task, slices=SLICES, metrics=metrics)
    workers = [first] + [first.create() for _ in range(3)]
    for i, (lo, hi) in reversed(list(enumerate(itertools.pairwise(bounds)))):
        workers[i % 4].add(y[lo:hi], s[lo:hi], frame.iloc[lo:hi], row_offset=lo)
    merged = workers[2].merge(workers[0]).merge(workers[3]).merge(workers[1])
    _assert_same(memory, merged.extract())
    if task != "regression":
        assert np.array_equal(merged.extract().confusion["overall"], memory.confusion["overall"])


def test_empty_chunks_and_accumulators() -> None:
    frame = _frame(500, 1)
    y, s, metrics = _task_data("binary", 500, 2)
    acc = SliceAccumulator(task="binary", slices=SLICES, metrics=metrics)
    acc.add(y[:0], s[:0], frame.iloc[:0])
    acc.add(y, s, frame)
    acc.merge(acc.create())
    _assert_same(SliceReport(y_true=y, y_score=s, frame=frame, slices=SLICES, metrics=metrics, task="binary"),
                 acc.extract())
    empty = SliceAccumulator(task="binary", slices=["g"]).extract()
    assert empty.overall["count"] == 0 and math.isnan(empty.overall["auc"]) and empty.by_slice == {"g": {}}


def test_streaming_intervals_do_not_depend_on_chunking() -> None:
    n = 4000
    frame = _frame(n, 3)
    y, s, _ = _task_data("binary", n, 4)
    metrics = ["accuracy", "auc", "log_loss"]
    results = []
    for size in (1000, 1700):
        acc = SliceAccumulator(task="binary", slices=["g"], metrics=metrics, bootstrap=60, seed=5)
        for lo in range(0, n, size):
            acc.add(y[lo : lo + size], s[lo : lo + size], frame.iloc[lo : lo + size])
        results.append(acc.extract())
    a, b = (r.intervals["by_slice"]["g"] for r in results)
    for group in a:
        for metric in metrics:
            np.testing.assert_allclose(a[group][metric], b[group][metric], rtol=1e-9, err_msg=f"{group} {metric}")
    lo, hi = results[0].interval("auc", "g", "a")
    assert lo < results[0].by_slice["g"]["a"]["auc"] < hi


def test_binned_auc_stays_within_its_stated_bound() -> None:
    n = 5000
    frame = _frame(n, 6)
    y, s, _ = _task_data("binary", n, 7)
    exact = SliceReport(y_true=y, y_score=s, frame=frame, slices=["g"], metrics=["auc"], task="binary")
    acc = SliceAccumulator(task="binary", slices=["g"], metrics=["auc"], auc_bins=64)
    for lo in range(0, n, 1500):
        acc.add(y[lo : lo + 1500], s[lo : lo + 1500], frame.iloc[lo : lo + 1500])
    binned = acc.extract()
    bound = binned.auc_error_bound
    assert abs(binned.overall["auc"] - exact.overall["auc"]) <= bound["overall"]
    for group, values in exact.by_slice["g"].items():
        assert abs(binned.by_slice["g"][group]["auc"] - values["auc"]) <= bound["by_slice"]["g"][group] + 1e-15
    assert 0 < bound["overall"] < 0.02
    assert binned.to_dict()["auc_error_bound"]["overall"] == bound["overall"]


class _Logistic(BasePredictor):
    def _forward(self, X: pd.DataFrame) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-(X["age"].to_numpy(dtype=float) - 50.0) / 10.0))
        return np.column_stack([1.0 - p, p])


def test_evaluate_parquet_file_and_directory(tmp_path: Path) -> None:
    n = 6000
    frame = _frame(n, 8).dropna(subset=["age"]).reset_index(drop=True)
    y, s, metrics = _task_data("binary", len(frame), 9)
    frame["label"] = np.where(y == 1, ">50K", "<=50K")
    frame["p"] = s
    path = tmp_path / "data.parquet"
    frame.to_parquet(path, row_group_size=700)
    slices = ["g", ("g", "h"), {"name": "young", "where": "age < 30"}, {"feature": "age", "quantiles": 3}]
    memory = SliceReport(y_true=y, y_score=s, frame=frame, slices=slices, metrics=metrics, task="binary")
    streamed = evaluate_parquet(path, target="label", classes=["<=50K", ">50K"], score="p", task="binary",
                                slices=slices, metrics=metrics, chunk_rows=1000)
    _assert_same(memory, streamed)
    assert streamed.to_dict()["slices"] == memory.to_dict()["slices"]  # same quantile edges
    folder = tmp_path / "parts"
    folder.mkdir()
    frame.iloc[:2500].to_parquet(folder / "a.parquet")
    frame.iloc[2500:].to_parquet(folder / "b.parquet")
    _assert_same(memory, evaluate_parquet(folder, target="label", classes=["<=50K", ">50K"], score="p",
                                          task="binary", slices=slices, metrics=metrics, chunk_rows=999))


def test_evaluate_parquet_with_a_predictor(tmp_path: Path) -> None:
    frame = _frame(3000, 10).dropna(subset=["age"]).reset_index(drop=True)
    rng = np.random.default_rng(0)
    frame["income"] = np.where(rng.random(len(frame)) < frame["age"] / 100, ">50K", "<=50K")
    model = _Logistic(infer_schema(frame[["age", "income"]], "income"))
    frame.to_parquet(tmp_path / "d.parquet", row_group_size=500)
    report = evaluate_parquet(tmp_path / "d.parquet", predictor=model, slices=["g"], metrics=["accuracy", "auc"],
                              chunk_rows=800)
    proba = model.predict_proba(frame[["age"]])
    y = (frame["income"] == ">50K").to_numpy().astype(int)
    assert report.overall["auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]), rel=1e-12)
    mask = (frame["g"] == "b").to_numpy()
    assert report.by_slice["g"]["b"]["accuracy"] == pytest.approx(
        skm.accuracy_score(y[mask], proba[mask].argmax(axis=1)), rel=1e-12)


def test_streaming_errors(tmp_path: Path) -> None:
    frame = _frame(200, 11)
    y, s, _ = _task_data("binary", 200, 12)

    def brier_like(yt: np.ndarray, ys: np.ndarray) -> float:
        return float(np.mean((ys - yt) ** 2))

    with pytest.raises(ValueError, match=r"Metrics \['brier_like'\] are custom callables.*SliceReport"):
        SliceAccumulator(task="binary", metrics=[brier_like])
    with pytest.raises(ValueError, match=r"buckets 'age' by quantiles, which needs the whole column"):
        SliceAccumulator(task="binary", slices=[{"feature": "age", "quantiles": 4}])
    a = SliceAccumulator(task="binary", slices=["g"], metrics=["auc"])
    with pytest.raises(ValueError, match=r"Cannot merge accumulators with different \['metrics'\]"):
        a.merge(SliceAccumulator(task="binary", slices=["g"], metrics=["accuracy"]))
    with pytest.raises(DataError, match=r"Slice column 'G' \(in slices\[0\]\) does not exist.*Did you mean 'g'"):
        SliceAccumulator(task="binary", slices=["G"]).add(y, s, frame)
    with pytest.raises(DataError, match=r"y_score has 3 columns but earlier chunks had 2"):
        SliceAccumulator(task="multiclass").add([0, 1], [[0.5, 0.5], [0.4, 0.6]]).add([0], [[0.2, 0.3, 0.5]])
    frame.assign(y=y, p=s).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(DataError, match=r"Column 'score' is not in .*Columns are: \['g', 'h', 'age', 'y', 'p'\]"):
        evaluate_parquet(tmp_path / "x.parquet", target="y", score="score", task="binary")
    with pytest.raises(FileNotFoundError, match=r"No Parquet file or directory"):
        evaluate_parquet(tmp_path / "missing.parquet", target="y", score="p", task="binary")
    with pytest.raises(ValueError, match=r"Give exactly one of score="):
        evaluate_parquet(tmp_path / "x.parquet", target="y", task="binary")
    with pytest.raises(ValueError, match=r"task must be one of"):
        evaluate_parquet(tmp_path / "x.parquet", target="y", score="p")
    with pytest.raises(DataError, match=r"Target column 'g' holds .* not among classes="):
        evaluate_parquet(tmp_path / "x.parquet", target="g", score="p", task="binary", classes=["a", "b"])
