"""Metrics per slice of the data: :class:`SliceReport`, in the shape of fairlearn's MetricFrame.

A *slice* splits the rows into groups by one column (``"sex"``), by a cross of columns
(``("sex", "race")``), or by numeric buckets (``{"feature": "age", "buckets": [25, 45,
65]}``). Every metric is computed overall and on every group of every slice, once, in the
constructor; the object then only answers questions.

The groups of a slice are found by turning each column into integer codes (values in
sorted order, missing values last) and combining the codes of a cross into one code.
This is the layout the later bincount engine works on; here each group is scored by
calling the metric on its rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from modelyard.data._schema import Schema, category_strings, encode_target
from modelyard.data._tabular import TabularSplit
from modelyard.errors import DataError
from modelyard.evaluate._metrics import MetricFn, resolve_metrics

__all__ = ["SliceReport", "evaluate_predictor", "bucket_labels", "MISSING", "CROSS"]

#: Group label of the rows whose slice value is missing.
MISSING = "(missing)"
#: Joins the column names and the values of a cross: ``"sex × race"``, ``"Female × White"``.
CROSS = " × "

_UNKNOWN_COLUMN = "Slice column {column!r} (in slices[{index}]) does not exist. Columns are: {columns}. {hint}"
_BAD_SLICE = (
    "slices[{index}] must be a column name, a tuple of column names (a cross), or "
    '{{"feature": name, "buckets": [edges...]}}; got {value!r}.'
)
_TASKS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class _Part:
    """One column of a slice, optionally cut into numeric buckets."""

    column: str
    buckets: tuple[float, ...] | None = None


@dataclass(frozen=True)
class _Slice:
    name: str
    parts: tuple[_Part, ...]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "features": [p.column for p in self.parts]}
        buckets = {p.column: list(p.buckets) for p in self.parts if p.buckets is not None}
        if buckets:
            out["buckets"] = buckets
        return out


# -- parsing slice specs ---------------------------------------------------------------
def _parse_part(item: Any, index: int) -> _Part:
    if isinstance(item, str):
        if not item:
            raise ValueError(f"slices[{index}] names an empty column; give a column name.")
        return _Part(item)
    if isinstance(item, Mapping):
        unknown = sorted(set(item) - {"feature", "buckets"})
        if unknown or "feature" not in item or "buckets" not in item:
            raise ValueError(
                f'slices[{index}] must have exactly the keys "feature" and "buckets"; got keys {sorted(item)}.'
            )
        feature, buckets = item["feature"], item["buckets"]
        if not isinstance(feature, str) or not feature:
            raise TypeError(f"slices[{index}].feature must be a column name (a string); got {feature!r}.")
        if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence) or len(buckets) == 0:
            raise ValueError(
                f"slices[{index}].buckets must be a non-empty list of increasing numbers; got {buckets!r}."
            )
        edges = []
        for b in buckets:
            if isinstance(b, bool) or not isinstance(b, (int, float, np.integer, np.floating)) or not math.isfinite(b):
                raise ValueError(f"slices[{index}].buckets must hold finite numbers; got {b!r} in {list(buckets)}.")
            edges.append(float(b))
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"slices[{index}].buckets must be strictly increasing; got {list(buckets)}.")
        return _Part(feature, tuple(edges))
    raise TypeError(_BAD_SLICE.format(index=index, value=item))


def _parse_slices(slices: Any) -> list[_Slice]:
    if slices is None:
        return []
    if isinstance(slices, (str, Mapping)):
        raise TypeError(
            f"slices must be a list of slice specs; got {slices!r}. "
            f"It should probably be a list containing it: slices=[{slices!r}]."
        )
    out: list[_Slice] = []
    where: dict[str, int] = {}
    for index, item in enumerate(slices):
        if isinstance(item, (tuple, list)):
            if len(item) == 0:
                raise ValueError(f"slices[{index}] is an empty cross; name at least one column.")
            parts = tuple(_parse_part(p, index) for p in item)
        else:
            parts = (_parse_part(item, index),)
        columns = [p.column for p in parts]
        if len(set(columns)) != len(columns):
            raise ValueError(f"slices[{index}] crosses a column with itself: {columns}.")
        name = CROSS.join(columns)
        if name in where:
            raise ValueError(
                f"Slice {name!r} is given twice (slices[{where[name]}] and slices[{index}]); remove one."
            )
        where[name] = index
        out.append(_Slice(name, parts))
    return out


# -- grouping --------------------------------------------------------------------------
def _fmt_edge(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def bucket_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the buckets cut at ``edges``: ``< e0``, ``[e0, e1)``, ..., ``>= e_last``."""
    e = [_fmt_edge(x) for x in edges]
    return [f"< {e[0]}", *(f"[{a}, {b})" for a, b in zip(e, e[1:])), f">= {e[-1]}"]


def _codes(series: pd.Series, part: _Part, index: int) -> tuple[np.ndarray, list[str]]:
    """Integer code per row (``len(labels) - 1`` = missing, when present) and the labels."""
    missing = series.isna().to_numpy()
    if part.buckets is not None:
        if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)):
            try:
                values = pd.to_numeric(series, errors="raise")
            except (ValueError, TypeError) as exc:
                raise DataError(
                    f"Column {part.column!r} (slices[{index}]) is bucketed but holds non-numeric values "
                    f"(dtype {series.dtype}); bucket a numeric column or slice by its values instead."
                ) from exc
        else:
            values = series
        x = values.to_numpy(dtype=np.float64, na_value=np.nan)
        labels = bucket_labels(part.buckets)
        codes = np.searchsorted(np.asarray(part.buckets), np.where(missing, 0.0, x), side="right").astype(np.int64)
    else:
        present = series[~missing]
        try:
            uniques = sorted(pd.unique(present))  # natural order: 2 < 10, False < True
        except TypeError:  # mixed types: order as strings
            uniques = sorted(pd.unique(present), key=lambda v: category_strings([v])[0])
        strings = list(category_strings(pd.Series(uniques, dtype=object)))
        # Values that print the same (3 and 3.0) are one group.
        labels = list(dict.fromkeys(strings))
        lookup = {s: i for i, s in enumerate(labels)}
        codes = np.zeros(len(series), dtype=np.int64)
        if len(present):
            codes[~missing] = [lookup[s] for s in category_strings(present)]
    if missing.any():
        codes[missing] = len(labels)
        labels = [*labels, MISSING]
    return codes, labels


def _groups(columns: Mapping[str, pd.Series], n: int, sl: _Slice, index: int) -> tuple[np.ndarray, list[str]]:
    """Rows of each group: ``(group_code_per_row, group_labels)`` over observed groups only."""
    combined = np.zeros(n, dtype=np.int64)
    all_labels: list[list[str]] = []
    for part in sl.parts:
        codes, labels = _codes(columns[part.column], part, index)
        combined = combined * len(labels) + codes
        all_labels.append(labels)
    observed, group = np.unique(combined, return_inverse=True)  # sorted: first column varies slowest
    names = []
    for code in observed:
        pieces = []
        for labels in reversed(all_labels):
            code, digit = divmod(int(code), len(labels))
            pieces.append(labels[digit])
        names.append(CROSS.join(reversed(pieces)))
    return group.reshape(-1), names


def _nan_to_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


# -- the report ------------------------------------------------------------------------
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
        Each item is a column name (``"sex"``), a tuple of column names for a cross
        (``("sex", "race")``, named ``"sex × race"`` with values like
        ``"Female × White"``), or numeric buckets ``{"feature": "age", "buckets": [25,
        45, 65]}`` with groups ``< 25``, ``[25, 45)``, ``[45, 65)``, ``>= 65``. A cross
        may include a bucket spec. Rows with a missing value form the group
        ``(missing)``. Groups are those observed in the data, in value order (buckets in
        bucket order), ``(missing)`` last.
    metrics : list of str or callable, dict of str to callable, or None
        Names from :data:`~modelyard.evaluate.METRICS` or callables; ``None`` uses the
        task's defaults (``count, accuracy, auc, log_loss`` or ``count, rmse, mae, r2``).
        ``count`` is always included.
    task : {"binary", "multiclass", "regression"}

    Attributes
    ----------
    overall : dict of str to float
        ``{metric: value}`` on all rows.
    by_slice : dict
        ``{slice_name: {group: {metric: value}}}``.
    metrics : list of str
        The metric names, ``count`` first.
    n_rows : int

    Raises
    ------
    DataError
        If a slice column does not exist (the message lists the columns), lengths
        differ, or scores are not finite.
    ValueError, TypeError
        On a malformed slice spec or metric list; the message names ``slices[i]``.

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
    ) -> None:
        if task not in _TASKS:
            raise ValueError(f"task must be one of {list(_TASKS)}; got {task!r}.")
        self.task = task
        specs = _parse_slices(slices)
        fns = resolve_metrics(metrics, task)
        self.metrics: list[str] = list(fns)

        y_true = np.asarray(y_true)
        y_score = np.asarray(y_score)
        if y_true.ndim != 1:
            raise DataError(f"y_true must be 1-D (one value per row); got shape {y_true.shape}.")
        n = y_true.shape[0]
        if y_score.shape[:1] != (n,):
            raise DataError(
                f"y_true has {n} rows but y_score has shape {y_score.shape}; pass one prediction per row."
            )
        if np.issubdtype(y_score.dtype, np.number) and not np.all(np.isfinite(y_score)):
            bad = int(np.sum(~np.isfinite(y_score.reshape(n, -1)).all(axis=1))) if n else 0
            raise DataError(
                f"y_score has {bad} rows with NaN or infinite values; the model produced invalid outputs."
            )
        _check_y_true(y_true, y_score, task)
        series: dict[str, pd.Series] = {}
        if specs:
            if not isinstance(frame, pd.DataFrame):
                raise TypeError(
                    f"frame must be a pandas DataFrame holding the slice columns; got {type(frame).__name__}."
                )
            if len(frame) != n:
                raise DataError(f"frame has {len(frame)} rows but y_true has {n}; they must describe the same rows.")
            columns = [str(c) for c in frame.columns]
            for index, sl in enumerate(specs):
                for part in sl.parts:
                    if part.column not in columns:
                        raise DataError(
                            _UNKNOWN_COLUMN.format(
                                column=part.column, index=index, columns=columns, hint=_hint(part.column, columns)
                            )
                        )
                    if columns.count(part.column) > 1:
                        raise DataError(
                            f"Slice column {part.column!r} (in slices[{index}]) appears {columns.count(part.column)} "
                            "times in the frame; give every column a unique name."
                        )
                    # Look the column up by position: frame labels may be non-strings (0, 1, ...).
                    series[part.column] = frame.iloc[:, columns.index(part.column)]
        self.n_rows = int(n)
        self._slices = specs

        self.overall: dict[str, float] = {name: float(fn(y_true, y_score)) for name, fn in fns.items()}
        self.by_slice: dict[str, dict[str, dict[str, float]]] = {}
        for index, sl in enumerate(specs):
            group, names = _groups(series, n, sl, index)
            order = np.argsort(group, kind="stable")
            bounds = np.searchsorted(group[order], np.arange(len(names) + 1))
            table: dict[str, dict[str, float]] = {}
            for g, label in enumerate(names):
                rows = order[bounds[g] : bounds[g + 1]]
                yt, ys = y_true[rows], y_score[rows]
                table[label] = {name: float(fn(yt, ys)) for name, fn in fns.items()}
            self.by_slice[sl.name] = table

    # -- questions -------------------------------------------------------------------
    @property
    def slices(self) -> list[str]:
        """The slice names, in the order given."""
        return [s.name for s in self._slices]

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
            ``{"task", "n_rows", "metrics", "slices": [{"name", "features", "buckets"?}],
            "overall": {metric: value}, "by_slice": {slice: {group: {metric: value}}}}``.
        """

        def clean(values: dict[str, float]) -> dict[str, Any]:
            return {k: (int(v) if k == "count" and not math.isnan(v) else _nan_to_none(v)) for k, v in values.items()}

        return {
            "task": self.task,
            "n_rows": self.n_rows,
            "metrics": list(self.metrics),
            "slices": [s.to_dict() for s in self._slices],
            "overall": clean(self.overall),
            "by_slice": {s: {g: clean(v) for g, v in t.items()} for s, t in self.by_slice.items()},
        }

    def to_frame(self) -> pd.DataFrame:
        """Long table with columns ``slice``, ``value`` (the group), ``metric`` and ``score``.

        One row per slice, group and metric, in report order; the overall values are in
        :attr:`overall`, not here.
        """
        rows = [
            (s, g, m, v)
            for s, table in self.by_slice.items()
            for g, values in table.items()
            for m, v in values.items()
        ]
        return pd.DataFrame(rows, columns=["slice", "value", "metric", "score"]).astype(
            {"slice": object, "value": object, "metric": object, "score": np.float64}
        )

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={int(v)}" if k == "count" else f"{k}={v:.4g}" for k, v in self.overall.items())
        return f"SliceReport(task={self.task!r}, n_rows={self.n_rows}, slices={self.slices}, overall: {shown})"


def _check_y_true(y_true: np.ndarray, y_score: np.ndarray, task: str) -> None:
    """Classification: integer class indices within the score's columns. Regression: finite values."""
    if task == "regression":
        if not np.issubdtype(y_true.dtype, np.number) or not np.all(np.isfinite(y_true.astype(np.float64))):
            raise DataError(
                "y_true must hold finite numbers for a regression task; drop rows with a missing target."
            )
        return
    n_classes = 2 if y_score.ndim == 1 else (y_score.shape[1] if y_score.ndim == 2 else 0)
    if y_score.ndim not in (1, 2) or n_classes < 2:
        raise DataError(
            f"y_score must be probabilities of shape (n_rows, n_classes) with n_classes >= 2 for a {task} task "
            f"(or (n_rows,) for binary); got shape {y_score.shape}."
        )
    if task == "binary" and n_classes != 2:
        raise DataError(f"task='binary' but y_score has {n_classes} columns; use task='multiclass'.")
    if y_true.size == 0:
        return
    if not (np.issubdtype(y_true.dtype, np.integer) or np.issubdtype(y_true.dtype, np.bool_)):
        numeric = np.issubdtype(y_true.dtype, np.number)
        if not numeric or not np.all(np.mod(y_true.astype(np.float64), 1) == 0):
            raise DataError(
                f"y_true must hold class indices 0..{n_classes - 1} (got dtype {y_true.dtype}); "
                "encode labels with modelyard.data.encode_target."
            )
    lo, hi = int(y_true.min()), int(y_true.max())
    if lo < 0 or hi >= n_classes:
        raise DataError(
            f"y_true holds class index {lo if lo < 0 else hi}, outside 0..{n_classes - 1} "
            f"for probabilities with {n_classes} columns."
        )


def _hint(column: str, columns: list[str]) -> str:
    lowered = {c.lower(): c for c in columns}
    if column.lower() in lowered:
        return f"Did you mean {lowered[column.lower()]!r}? Names are case-sensitive."
    return "Fix the slice spec, or pass a frame that holds the column."


# -- from a predictor --------------------------------------------------------------------
def evaluate_predictor(
    predictor: Any,
    split_frame: TabularSplit | pd.DataFrame,
    *,
    slices: Sequence[Any],
    metrics: Sequence[str | MetricFn] | Mapping[str, MetricFn] | None = None,
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
    X = frame[list(predictor.feature_names)]  # noqa: N806 - the conventional name
    task = predictor.task
    y_score = predictor.predict(X) if task == "regression" else predictor.predict_proba(X)
    return SliceReport(y_true=y_true, y_score=y_score, frame=frame, slices=slices, metrics=metrics, task=task)
