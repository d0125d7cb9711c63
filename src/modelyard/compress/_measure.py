"""Measuring a model variant where it is served: size, ONNX Runtime latency, accuracy per slice.

Compression is judged by what it measures, not by what it promises (a "pruned" model
stored dense is not smaller; an int8 model can be slower than float when the runtime
falls back to slow kernels). :func:`measure` reports, for one ONNX file:

* **size**: bytes on disk and after ``gzip -9`` (sparse weights only shrink compressed);
* **latency**: p50 and p99 of ``InferenceSession.run`` at each batch size, with ONNX
  Runtime's threads pinned (``intra_op_num_threads``, one inter-op thread, sequential
  execution), warm-up runs excluded, inputs prepared before the clock starts;
* **quality**: the task's metrics overall and per slice (:func:`modelyard.evaluate.evaluate_predictor`).

:func:`compare` measures several variants and adds each one's change against a
reference (the uncompressed model): size and latency ratios, metric differences.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Latency", "Measurement", "compare", "file_sizes", "measure", "session_latency"]


@dataclass(frozen=True)
class Latency:
    """Latency of one batch size, in milliseconds.

    Attributes
    ----------
    batch_size : int
    p50_ms, p99_ms, mean_ms : float
    repeats : int
        Timed runs (after the warm-up).
    """

    batch_size: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    repeats: int


@dataclass
class Measurement:
    """What :func:`measure` found for one model file.

    Attributes
    ----------
    name : str
    path : str
    size_bytes, gzip_bytes : int
    latency : dict of int to Latency
        By batch size.
    overall : dict of str to float
        Metrics on all rows.
    by_slice : dict
        ``{slice: {group: {metric: value}}}``.
    threads : int
        ONNX Runtime intra-op threads used for the latency runs.
    """

    name: str
    path: str
    size_bytes: int
    gzip_bytes: int
    latency: dict[int, Latency]
    overall: dict[str, float]
    by_slice: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    threads: int = 1

    def row(self) -> dict[str, Any]:
        """One flat table row: sizes, p50/p99 per batch size, overall metrics."""
        out: dict[str, Any] = {"variant": self.name, "size_bytes": self.size_bytes, "gzip_bytes": self.gzip_bytes}
        for b, lat in sorted(self.latency.items()):
            out[f"p50_ms_b{b}"] = lat.p50_ms
            out[f"p99_ms_b{b}"] = lat.p99_ms
        out.update(self.overall)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "name": self.name,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "gzip_bytes": self.gzip_bytes,
            "threads": self.threads,
            "latency": {str(b): vars(lat) for b, lat in sorted(self.latency.items())},
            "overall": self.overall,
            "by_slice": self.by_slice,
        }


def file_sizes(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(bytes on disk, bytes after gzip level 9)`` of a file."""
    data = Path(path).read_bytes()
    return len(data), len(gzip.compress(data, compresslevel=9, mtime=0))


def _session(path: str | os.PathLike[str], threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def session_latency(
    session: Any,
    feeds: Mapping[str, np.ndarray],
    *,
    warmup: int = 10,
    repeats: int = 100,
    min_seconds: float = 0.0,
) -> Latency:
    """Time ``session.run(None, feeds)``: ``warmup`` untimed runs, then at least ``repeats`` timed ones.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    feeds : dict of str to numpy.ndarray
        Prepared inputs; their first dimension is the batch size.
    warmup : int, default=10
    repeats : int, default=100
    min_seconds : float, default=0.0
        Keep timing past ``repeats`` until this much time has been measured (steadier
        percentiles for fast models).

    Returns
    -------
    Latency
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}.")
    for _ in range(warmup):
        session.run(None, feeds)
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats or spent < min_seconds:
        t0 = time.perf_counter_ns()
        session.run(None, feeds)
        dt = (time.perf_counter_ns() - t0) / 1e6
        times.append(dt)
        spent += dt / 1e3
    arr = np.asarray(times)
    batch = int(next(iter(feeds.values())).shape[0])
    return Latency(batch, float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), float(arr.mean()), arr.size)


def _batch_feeds(predictor: Any, X: pd.DataFrame, batch_size: int) -> dict[str, np.ndarray]:
    """Raw-column feeds of ``batch_size`` rows of ``X`` (rows repeated when ``X`` is shorter)."""
    rows = X.iloc[np.arange(batch_size) % len(X)]
    return predictor.feeds(rows)


def measure(
    model: str | os.PathLike[str],
    split: Any,
    *,
    name: str | None = None,
    slices: Sequence[Any] = (),
    metrics: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 100,
) -> Measurement:
    """Measure one exported model: size, latency on ONNX Runtime, metrics overall and per slice.

    Parameters
    ----------
    model : path
        An ONNX file written by :func:`modelyard.compress.export_onnx` (raw-column inputs,
        schema in its metadata) or by a compression step.
    split : TabularSplit, pandas.DataFrame or ImageSplit
        Rows with the features, the target and the slice columns; or labelled images
        (then the metrics are accuracy and log-loss by default, sliced by true class).
    name : str or None, default=None
        The variant's name; the file name without suffix if None.
    slices : list, default=()
        Slice specs as in :class:`modelyard.evaluate.SliceReport` (the overall slice is always measured).
    metrics : list of str or None, default=None
        The task's default metrics if None.
    batch_sizes : sequence of int, default=(1, 64)
    threads : int, default=1
        ONNX Runtime intra-op threads for the latency runs (pinned, so variants compare fairly).
    warmup, repeats : int, default=10, 100
        Untimed and timed runs per batch size.

    Returns
    -------
    Measurement

    Raises
    ------
    FileNotFoundError
        The model file does not exist.
    ModelFormatError
        The file is not an ONNX model with a modelyard schema.
    ValueError
        A batch size or the thread count is not a positive integer, or the split has no rows.
    """
    from modelyard.data import ImageSplit, TabularSplit
    from modelyard.evaluate import evaluate_predictor
    from modelyard.models import OnnxPredictor

    path = Path(model)
    bad = [b for b in batch_sizes if isinstance(b, bool) or not isinstance(b, int) or b < 1]
    if not batch_sizes or bad:
        raise ValueError(f"batch_sizes must be positive integers; got {list(batch_sizes)}.")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer; got {threads!r}.")
    if isinstance(split, ImageSplit):
        overall, by_slice, feeds = _score_images(path, split, metrics, batch_sizes)
    else:
        predictor = OnnxPredictor(path)  # checks the file and its schema
        frame = split.frame if isinstance(split, TabularSplit) else split
        if not isinstance(frame, pd.DataFrame) or frame.empty:
            raise ValueError("measure needs a TabularSplit or DataFrame with at least one row to time and score.")
        report = evaluate_predictor(predictor, frame, slices=list(slices), metrics=metrics)
        overall = dict(report.overall)
        by_slice = {s: {g: dict(v) for g, v in table.items()} for s, table in report.by_slice.items()}
        X = frame[predictor.feature_names]
        feeds = {b: _batch_feeds(predictor, X, b) for b in batch_sizes}
    session = _session(path, threads)
    latency = {b: session_latency(session, feeds[b], warmup=warmup, repeats=repeats) for b in batch_sizes}
    size, gz = file_sizes(path)
    return Measurement(
        name=name or path.stem,
        path=str(path),
        size_bytes=size,
        gzip_bytes=gz,
        latency=latency,
        overall=overall,
        by_slice=by_slice,
        threads=threads,
    )


def _score_images(
    path: Path, split: Any, metrics: Sequence[str] | None, batch_sizes: Sequence[int]
) -> tuple[dict[str, float], dict[str, Any], dict[int, dict[str, np.ndarray]]]:
    """Metrics overall and per true class of an image model, and its latency feeds."""
    from modelyard.evaluate import METRICS
    from modelyard.models import OnnxImagePredictor

    predictor = OnnxImagePredictor(path)
    if len(split) == 0:
        raise ValueError("measure needs an ImageSplit with at least one image to time and score.")
    proba = np.concatenate([predictor.predict_proba(split.x[lo : lo + 4096]) for lo in range(0, len(split), 4096)])
    names = list(metrics) if metrics is not None else ["accuracy", "log_loss"]
    overall = {"count": float(len(split)), **{m: float(METRICS.get(m)(split.y, proba)) for m in names}}
    per_class: dict[str, dict[str, float]] = {}
    for k, label in enumerate(predictor.classes):
        rows = split.y == k
        if rows.any():
            per_class[label] = {"count": float(rows.sum()),
                                "accuracy": float((proba[rows].argmax(axis=1) == k).mean())}
    pixels = predictor.feeds(split.x[: max(batch_sizes)])["image"]
    feeds = {b: {"image": pixels[np.arange(b) % len(pixels)]} for b in batch_sizes}
    return overall, {"class": per_class}, feeds


def compare(
    variants: Mapping[str, str | os.PathLike[str]],
    split: Any,
    *,
    reference: str | None = None,
    **kwargs: Any,
) -> tuple[pd.DataFrame, dict[str, Measurement]]:
    """Measure every variant and its change against ``reference``.

    Parameters
    ----------
    variants : dict of str to path
        Variant name -> ONNX file.
    split : TabularSplit or pandas.DataFrame
    reference : str or None, default=None
        The uncompressed variant; the first one if None.
    **kwargs
        Passed to :func:`measure` (slices, metrics, batch_sizes, threads, warmup, repeats).

    Returns
    -------
    table : pandas.DataFrame
        One row per variant: sizes, p50/p99 per batch size, metrics, and ``size_ratio``,
        ``gzip_ratio``, ``p50_ratio_b<B>`` (variant / reference) and ``<metric>_change``
        (variant - reference).
    measurements : dict of str to Measurement

    Raises
    ------
    ValueError
        No variants, or ``reference`` is not one of them.
    """
    if not variants:
        raise ValueError("compare needs at least one variant: {name: path}.")
    reference = next(iter(variants)) if reference is None else reference
    if reference not in variants:
        raise ValueError(f"reference {reference!r} is not a variant; variants are {list(variants)}.")
    found = {n: measure(p, split, name=n, **kwargs) for n, p in variants.items()}
    return compare_table(found, reference), found


def compare_table(measurements: Mapping[str, Measurement], reference: str) -> pd.DataFrame:
    """One row per measurement, with size and p50 ratios and metric changes against ``reference``."""
    ref = measurements[reference]
    rows = []
    for m in measurements.values():
        row = m.row()
        row["size_ratio"] = m.size_bytes / ref.size_bytes
        row["gzip_ratio"] = m.gzip_bytes / ref.gzip_bytes
        for b, lat in sorted(m.latency.items()):
            row[f"p50_ratio_b{b}"] = lat.p50_ms / ref.latency[b].p50_ms
        for metric, value in m.overall.items():
            if metric != "count":
                row[f"{metric}_change"] = value - ref.overall[metric]
        rows.append(row)
    return pd.DataFrame(rows)
