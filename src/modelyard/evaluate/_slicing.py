"""Metrics per slice of the data: :class:`SliceReport`, in the shape of fairlearn's MetricFrame.

A *slice* splits the rows into groups by one column (``"sex"``), by a cross of columns
(``("sex", "race")``), by numeric buckets (``{"feature": "age", "buckets": [25, 45,
65]}`` or ``{"feature": "age", "quantiles": 4}``), or by a named predicate (``{"name":
"young", "where": "age < 30"}``). Every metric is computed overall and on every group of
every slice, once, in the constructor; the object then only answers questions.

Built-in metrics come from the vectorized engine (:mod:`._engine`): sufficient
statistics per group from ``np.bincount`` and one sort per score column, so the cost is
a few passes over the rows whatever the number of groups, and Poisson-bootstrap
intervals are matrix operations over all replicates. A user's own callable is called on
each group's rows, as fairlearn does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from modelyard.data._schema import Schema, encode_target
from modelyard.data._tabular import TabularSplit
from modelyard.errors import DataError
from modelyard.evaluate import _engine as E
from modelyard.evaluate._accumulate import (
    Result,
    SliceAccumulator,
    plan_metrics,
    validate_arrays,
)
from modelyard.evaluate._groups import (
    _UNKNOWN_COLUMN,  # noqa: F401 - re-exported for callers that format the message
    CROSS,
    MISSING,
    Slice,
    bucket_labels,
    check_columns,
    parse_slices,
    resolve_quantiles,
)
from modelyard.evaluate._metrics import MetricFn

__all__ = ["CROSS", "MISSING", "SliceReport", "bucket_labels", "evaluate_predictor"]

_TASKS = ("binary", "multiclass", "regression")


def _nan_to_none(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


class SliceReport:
    """Metrics overall and on every group of every slice, computed at construction.

    Modelled on fairlearn's ``MetricFrame``: metrics are plain callables
    ``fn(y_true, y_score) -> float``, and the result is read through :attr:`overall`,
    :attr:`by_slice`, :meth:`difference`, :meth:`to_dict` and :meth:`to_frame`.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Class indices (classification) or values (regression).
    y_score : array-like of shape (n_rows, n_classes) or (n_rows,)
        Probabilities (classification; 1-D = P(class 1) for binary) or predicted values
        (regression).
    frame : pandas.DataFrame or None
        Holds the slice columns, one row per element of ``y_true`` (matched by
        position, not index). May be ``None`` when ``slices`` is empty.
    slices : list
        Each item is

        * a column name (``"sex"``): one group per value;
        * a tuple of items, crossed (``("sex", "race")``, named ``"sex × race"`` with
          groups like ``"Female × White"``);
        * numeric buckets ``{"feature": "age", "buckets": [25, 45, 65]}`` with groups
          ``< 25``, ``[25, 45)``, ``[45, 65)``, ``>= 65``, or quantile buckets
          ``{"feature": "age", "quantiles": 4}`` (edges at the quartiles of the data;
          a list of probabilities also works);
        * a named predicate ``{"name": "young", "where": "age < 30"}`` (a pandas
          expression) or ``{"name": ..., "where": fn}`` with ``fn(frame)`` returning a
          boolean mask; its groups are ``"True"`` and ``"False"``.

        Rows with a missing value form the group ``(missing)``. Groups are those
        observed in the data, in value order (buckets in bucket order), ``(missing)``
        last. The overall slice is always there (:attr:`overall`).
    metrics : list of str or callable, dict of str to callable, or None
        Names from :data:`~modelyard.evaluate.METRICS` (``"precision@0.3"`` asks a
        threshold metric at a decision threshold) or callables; ``None`` uses the task's
        defaults (``count, accuracy, auc, log_loss`` or ``count, rmse, mae, r2``).
        ``count`` is always included.
    task : {"binary", "multiclass", "regression"}
    thresholds : list of float or None, default=None
        Binary: also compute every threshold metric asked (accuracy, precision, recall,
        f1, tpr, fpr, tnr, fnr, selection_rate) at each of these decision thresholds,
        named ``"<metric>@<t>"``; class 1 is predicted where ``P(class 1) > t``.
    bootstrap : int, default=0
        Number of Poisson-bootstrap replicates for confidence intervals of every metric
        and group (TFMA's method: each row weighted by a Poisson(1) draw per replicate);
        0 computes none. 200 is a common choice.
    confidence : float, default=0.95
        Level of the percentile intervals.
    seed : int, default=0
        Seed of the bootstrap weights.
    min_count : int or None, default=30
        Groups with fewer rows are flagged in :attr:`small` (their values, and more so
        their intervals, are unreliable). ``None`` flags none.
    ece_bins : int, default=10
        Equal-width confidence bins of the expected calibration error (``"ece"``).

    Attributes
    ----------
    overall : dict of str to float
        ``{metric: value}`` on all rows.
    by_slice : dict
        ``{slice_name: {group: {metric: value}}}``.
    metrics : list of str
        The metric names, ``count`` first.
    n_rows : int
    intervals : dict or None
        With ``bootstrap``: ``{"overall": {metric: (low, high)}, "by_slice": {slice:
        {group: {metric: (low, high)}}}}``; an interval is ``(nan, nan)`` when no
        replicate defines the value.
    small : dict of str to list of str
        ``{slice: [groups with fewer than min_count rows]}``.
    confusion : dict or None
        Classification: ``{"overall": array, "by_slice": {slice: {group: array}}}``,
        arrays of shape ``(n_classes, n_classes)``, true class by predicted class.
    auc_error_bound : dict or None
        Only from a streaming pass with ``auc_bins``: the largest possible error of each
        binned AUC.

    Raises
    ------
    DataError
        If a slice column does not exist (the message lists the columns), lengths
        differ, scores are not finite, or a predicate does not give booleans.
    ValueError, TypeError
        On a malformed slice spec, metric list or threshold; the message names the item.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> frame = pd.DataFrame({"sex": ["F", "M", "F", "M"]})
    >>> r = SliceReport(y_true=np.array([0, 1, 1, 0]), y_score=np.array([0.2, 0.9, 0.4, 0.3]),
    ...                 frame=frame, slices=["sex"], metrics=["accuracy"], task="binary")
    >>> r.overall
    {'count': 4.0, 'accuracy': 0.75}
    >>> r.by_slice["sex"]["F"]
    {'count': 2.0, 'accuracy': 0.5}
    >>> r.difference("accuracy")
    {'sex': 0.5}
    """

    def __init__(
        self,
        *,
        y_true: Any,
        y_score: Any,
        frame: pd.DataFrame | None,
        slices: Sequence[Any],
        metrics: Sequence[str | MetricFn] | Mapping[str, MetricFn] | None = None,
        task: str,
        thresholds: Sequence[float] | None = None,
        bootstrap: int = 0,
        confidence: float = 0.95,
        seed: int = 0,
        min_count: int | None = 30,
        ece_bins: int = 10,
    ) -> None:
        if task not in _TASKS:
            raise ValueError(f"task must be one of {list(_TASKS)}; got {task!r}.")
        specs = parse_slices(slices)
        fns, engine, custom = plan_metrics(metrics, task, thresholds)
        y, s = validate_arrays(y_true, y_score, task)
        n = y.shape[0]
        if specs:
            if not isinstance(frame, pd.DataFrame):
                raise TypeError(
                    f"frame must be a pandas DataFrame holding the slice columns; got {type(frame).__name__}."
                )
            if len(frame) != n:
                raise DataError(f"frame has {len(frame)} rows but y_true has {n}; they must describe the same rows.")
            columns = [str(c) for c in frame.columns]
            check_columns(specs, columns)
            specs = resolve_quantiles(specs, lambda c: frame.iloc[:, columns.index(c)])
        acc = SliceAccumulator(
            task=task, slices=specs, metrics={name: fns[name] for name, _, _ in engine}, bootstrap=bootstrap,
            confidence=confidence, seed=seed, min_count=min_count, ece_bins=ece_bins, _hold_rows=True,
        )
        acc.add(y, s, frame if specs else None)
        groupings = acc.groupings()
        result = acc.result(groupings)
        if custom:
            _custom_metrics(result, {m: fns[m] for m in custom}, y, s, acc, groupings)
        result.metrics = [m for m in fns]  # resolved order, count first
        self._fill(result)

    @classmethod
    def _from_result(cls, result: Result) -> SliceReport:
        report = cls.__new__(cls)
        report._fill(result)
        return report

    def _fill(self, result: Result) -> None:
        self.task = result.task
        self.n_rows = int(result.n_rows)
        self.metrics: list[str] = list(result.metrics)
        self._slices: list[Slice] = list(result.specs)
        order = self.metrics
        self.overall: dict[str, float] = {m: result.overall[m] for m in order}
        self.by_slice: dict[str, dict[str, dict[str, float]]] = {
            s: {g: {m: v[m] for m in order} for g, v in t.items()} for s, t in result.by_slice.items()
        }
        self.thresholds = list(result.thresholds)
        self.min_count = result.min_count
        self.small: dict[str, list[str]] = {
            s: [g for g, v in t.items() if result.min_count is not None and v["count"] < result.min_count]
            for s, t in self.by_slice.items()
        }
        self.intervals: dict[str, Any] | None = None
        self.confidence: float | None = None
        self.replicates = 0
        if result.intervals is not None:
            ci = result.intervals
            self.confidence, self.replicates = ci["confidence"], ci["replicates"]
            self.intervals = {
                "overall": {m: tuple(ci["overall"][m]) for m in order},
                "by_slice": {s: {g: {m: tuple(v[m]) for m in order} for g, v in t.items()}
                             for s, t in ci["by_slice"].items()},
            }
        self.confusion = result.confusion
        self.auc_error_bound = result.auc_bound

    # -- questions -------------------------------------------------------------------
    @property
    def slices(self) -> list[str]:
        """The slice names, in the order given."""
        return [s.name for s in self._slices]

    def interval(self, metric: str, slice: str | None = None, group: str | None = None) -> tuple[float, float]:
        """The bootstrap interval of ``metric`` overall, or on one group of one slice.

        Raises
        ------
        ValueError
            If the report has no intervals (``bootstrap=0``) or the names are unknown.
        """
        if self.intervals is None:
            raise ValueError("This report has no intervals; build it with bootstrap=200 (for example).")
        if metric not in self.overall:
            raise ValueError(f"Unknown metric {metric!r}; this report has {self.metrics}.")
        if slice is None:
            return self.intervals["overall"][metric]
        table = self.intervals["by_slice"].get(slice)
        if table is None:
            raise ValueError(f"Unknown slice {slice!r}; this report has {self.slices}.")
        if group not in table:
            raise ValueError(f"Slice {slice!r} has no group {group!r}; it has {list(table)}.")
        return table[group][metric]

    def difference(self, metric: str, *, method: str = "between_groups") -> dict[str, float]:
        """Largest gap in ``metric`` within each slice.

        Parameters
        ----------
        metric : str
            One of :attr:`metrics`.
        method : {"between_groups", "to_overall"}, default="between_groups"
            ``"between_groups"``: max - min over the slice's groups (as fairlearn).
            ``"to_overall"``: the largest ``|group - overall|``.

        Returns
        -------
        dict of str to float
            ``{slice_name: gap}``; groups whose value is NaN (an AUC on one class) are
            left out, and the gap is NaN when no group has a value.
        """
        if metric not in self.overall:
            raise ValueError(f"Unknown metric {metric!r}; this report has {self.metrics}.")
        if method not in ("between_groups", "to_overall"):
            raise ValueError(f"method must be 'between_groups' or 'to_overall'; got {method!r}.")
        out = {}
        for name, table in self.by_slice.items():
            values = np.array([g[metric] for g in table.values()], dtype=np.float64)
            values = values[~np.isnan(values)]
            if values.size == 0:
                out[name] = float("nan")
            elif method == "between_groups":
                out[name] = float(values.max() - values.min())
            else:
                out[name] = float(np.max(np.abs(values - self.overall[metric])))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: NaN becomes ``None`` and counts become integers.

        Returns
        -------
        dict
            ``{"task", "n_rows", "metrics", "slices": [{"name", "features", "buckets"?,
            "quantiles"?, "where"?}], "overall": {metric: value}, "by_slice": {slice:
            {group: {metric: value}}}, "min_count", "small": {slice: [group]}}``, plus
            ``"thresholds"`` when asked, ``"intervals"`` (``{"confidence",
            "replicates", "overall": {metric: [low, high]}, "by_slice": ...}``) with a
            bootstrap, ``"confusion"`` (nested lists) for classification and
            ``"auc_error_bound"`` for binned AUCs.
        """

        def clean(values: dict[str, float]) -> dict[str, Any]:
            return {k: (int(v) if k == "count" and not math.isnan(v) else _nan_to_none(v)) for k, v in values.items()}

        def pair(values: dict[str, tuple[float, float]]) -> dict[str, Any]:
            return {k: [_nan_to_none(float(a)), _nan_to_none(float(b))] for k, (a, b) in values.items()}

        out: dict[str, Any] = {
            "task": self.task,
            "n_rows": self.n_rows,
            "metrics": list(self.metrics),
            "slices": [s.to_dict() for s in self._slices],
            "overall": clean(self.overall),
            "by_slice": {s: {g: clean(v) for g, v in t.items()} for s, t in self.by_slice.items()},
            "min_count": self.min_count,
            "small": {s: list(g) for s, g in self.small.items()},
        }
        if self.thresholds:
            out["thresholds"] = list(self.thresholds)
        if self.intervals is not None:
            out["intervals"] = {
                "confidence": self.confidence,
                "replicates": self.replicates,
                "overall": pair(self.intervals["overall"]),
                "by_slice": {s: {g: pair(v) for g, v in t.items()} for s, t in self.intervals["by_slice"].items()},
            }
        if self.confusion is not None:
            out["confusion"] = {
                "overall": self.confusion["overall"].tolist(),
                "by_slice": {s: {g: cm.tolist() for g, cm in t.items()} for s, t in self.confusion["by_slice"].items()},
            }
        if self.auc_error_bound is not None:
            b = self.auc_error_bound
            out["auc_error_bound"] = {
                "overall": _nan_to_none(b["overall"]),
                "by_slice": {s: {g: _nan_to_none(v) for g, v in t.items()} for s, t in b["by_slice"].items()},
            }
        return out

    def to_frame(self) -> pd.DataFrame:
        """Long table: ``slice``, ``value`` (the group), ``metric``, ``score``, ``small``.

        One row per slice, group and metric, in report order; ``small`` flags groups with
        fewer than :attr:`min_count` rows. With a bootstrap, ``lower`` and ``upper``
        follow. The overall values are in :attr:`overall`, not here.
        """
        rows = []
        for s, table in self.by_slice.items():
            flagged = set(self.small.get(s, []))
            for g, values in table.items():
                for m, v in values.items():
                    row = [s, g, m, v, g in flagged]
                    if self.intervals is not None:
                        row += list(self.intervals["by_slice"][s][g][m])
                    rows.append(row)
        columns = ["slice", "value", "metric", "score", "small"]
        types: dict[str, Any] = {"slice": object, "value": object, "metric": object, "score": np.float64,
                                 "small": bool}
        if self.intervals is not None:
            columns += ["lower", "upper"]
            types.update(lower=np.float64, upper=np.float64)
        return pd.DataFrame(rows, columns=columns).astype(types)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{k}={int(v)}" if k == "count" else f"{k}={v:.4g}" for k, v in self.overall.items()
        )
        return f"SliceReport(task={self.task!r}, n_rows={self.n_rows}, slices={self.slices}, overall: {shown})"


def _custom_metrics(result: Result, fns: dict[str, MetricFn], y: np.ndarray, s: np.ndarray, acc: SliceAccumulator,
                    groupings: list[Any]) -> None:
    """Call each custom metric on every group's rows (and resampled rows, with a bootstrap)."""
    _, cell = acc._held  # type: ignore[misc]
    for grp in groupings:
        G = len(grp.labels)
        group_rows = grp.cell_group[cell]
        order = np.argsort(group_rows, kind="stable")
        bounds = np.searchsorted(group_rows[order], np.arange(G + 1))
        members = [order[bounds[g] : bounds[g + 1]] for g in range(G)]
        target = {"(all)": result.overall} if grp.name is None else result.by_slice[grp.name]
        for g, label in enumerate(grp.labels):
            idx = members[g]
            for name, fn in fns.items():
                target[label][name] = float(fn(y[idx], s[idx]))
        if result.intervals is not None:
            R = result.intervals["replicates"]
            conf = result.intervals["confidence"]
            reps = {name: np.full((G, R), np.nan) for name in fns}
            boot = acc.memory_bootstrap()
            step = max(1, min(R, (64 << 20) // max(y.shape[0], 1)))
            for r0, r1 in E.chunks(R, step):
                W = boot.weights(r0, r1)  # the engine's weights, so replicates agree across metrics
                for g in range(G):
                    idx = members[g]
                    for r in range(r1 - r0):
                        take = np.repeat(idx, W[r, idx])
                        for name, fn in fns.items():
                            reps[name][g, r0 + r] = float(fn(y[take], s[take])) if take.size else np.nan
            box = result.intervals["overall"] if grp.name is None else result.intervals["by_slice"][grp.name]
            for name in fns:
                lo, hi = E.percentile_interval(reps[name], conf)
                for g, label in enumerate(grp.labels):
                    (box if grp.name is None else box[label])[name] = [float(lo[g]), float(hi[g])]


# -- from a predictor --------------------------------------------------------------------
def evaluate_predictor(
    predictor: Any,
    split_frame: TabularSplit | pd.DataFrame,
    *,
    slices: Sequence[Any],
    metrics: Sequence[str | MetricFn] | Mapping[str, MetricFn] | None = None,
    **options: Any,
) -> SliceReport:
    """Score a predictor on one split, overall and per slice.

    Parameters
    ----------
    predictor : Predictor
        Any object with ``schema``, ``task``, ``feature_names``, ``predict`` and (for
        classifiers) ``predict_proba``.
    split_frame : TabularSplit or pandas.DataFrame
        Raw rows holding the feature columns, the target and the slice columns (slice
        columns need not be features).
    slices : list
        As in :class:`SliceReport`.
    metrics : list of str or callable, dict, or None, default=None
        ``None`` gives the task's defaults.
    **options
        ``thresholds``, ``bootstrap``, ``confidence``, ``seed``, ``min_count``,
        ``ece_bins``: as in :class:`SliceReport`.

    Returns
    -------
    SliceReport

    Raises
    ------
    DataError
        If the target column is missing (the message lists the columns), a label was not
        seen in training, or a slice column does not exist.
    """
    frame = split_frame.frame if isinstance(split_frame, TabularSplit) else split_frame
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"split_frame must be a TabularSplit or a pandas DataFrame; got {type(split_frame).__name__}.")
    schema: Schema = predictor.schema
    columns = [str(c) for c in frame.columns]
    if schema.target not in columns:
        raise DataError(
            f"Target column {schema.target!r} is not in the frame to evaluate on. Columns are: {columns}. "
            "Pass rows that include the target."
        )
    missing = [c for c in predictor.feature_names if c not in columns]
    if missing:
        raise DataError(f"The frame lacks the model's feature columns {missing}. Columns are: {columns}.")
    y_true = encode_target(frame[schema.target], schema)
    X = frame[list(predictor.feature_names)]
    task = predictor.task
    y_score = predictor.predict(X) if task == "regression" else predictor.predict_proba(X)
    return SliceReport(y_true=y_true, y_score=y_score, frame=frame, slices=slices, metrics=metrics, task=task,
                       **options)
