"""Mergeable accumulators of sliced metrics, and streaming evaluation of Parquet data.

:class:`SliceAccumulator` follows the combiner protocol of Beam and TFMA: *create* an
empty accumulator, *add* chunks of rows, *merge* accumulators built elsewhere (other
files, other processes), *extract* a :class:`~modelyard.evaluate.SliceReport`. The state
is the engine's sufficient statistics per cell (see :mod:`._engine`), so its size
depends on the number of slice groups, not of rows, except for exact AUCs, which keep
one entry per distinct ``(score, cell)`` pair; ``auc_bins`` trades that for a fixed
histogram with a stated error bound.

:func:`evaluate_parquet` reads a Parquet file or directory in batches with pyarrow and
feeds an accumulator, so a data set larger than memory is evaluated in one pass (two
when buckets are given as quantiles). The result equals the in-memory
:class:`SliceReport` (counts exactly, sums to rounding; tested).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from modelyard.errors import DataError
from modelyard.evaluate import _engine as E
from modelyard.evaluate._groups import (
    CellCoder,
    Slice,
    check_columns,
    parse_slices,
    resolve_quantiles,
    slice_columns,
)
from modelyard.evaluate._metrics import (
    METRICS,
    THRESHOLD_METRICS,
    MetricFn,
    at_threshold,
    check_threshold,
    resolve_metrics,
)

if TYPE_CHECKING:
    from modelyard.evaluate._slicing import SliceReport

__all__ = ["SliceAccumulator", "evaluate_parquet"]

_TASKS = ("binary", "multiclass", "regression")
#: Bytes of replicate weights (one per row and replicate) held at once.
_WEIGHT_BUDGET = 32 << 20
#: Bytes of per-row work arrays of the exact-AUC bootstrap held at once.
_RANK_BUDGET = 128 << 20
#: Runs of exact-AUC entries kept before they are merged into one.
_MAX_RUNS = 16
#: Score bins of AUC replicates: equal-width in a streaming pass, quantiles of the scores in memory.
REPLICATE_AUC_BINS = 256
MEMORY_AUC_BINS = 1024


# -- inputs ------------------------------------------------------------------------------------
def validate_arrays(y_true: Any, y_score: Any, task: str, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check one chunk's labels and scores; returns them as arrays.

    Raises
    ------
    DataError
        Lengths differ, scores are NaN or infinite, labels are not class indices within the
        score's columns, or a regression target is not finite.
    """
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    if y_true.ndim != 1:
        raise DataError(f"y_true must be 1-D (one value per row); got shape {y_true.shape}.")
    n = y_true.shape[0]
    if y_score.shape[:1] != (n,):
        raise DataError(f"y_true has {n} rows but y_score has shape {y_score.shape}; pass one prediction per row.")
    if not np.issubdtype(y_score.dtype, np.number) or np.issubdtype(y_score.dtype, np.complexfloating):
        raise DataError(f"y_score must hold numbers; got dtype {y_score.dtype}.")
    if not np.all(np.isfinite(y_score)):
        bad = int(np.sum(~np.isfinite(y_score.reshape(n, -1)).all(axis=1))) if n else 0
        raise DataError(f"y_score has {bad} rows with NaN or infinite values; the model produced invalid outputs.")
    if task == "regression":
        if y_score.ndim == 2 and y_score.shape[1] == 1:
            y_score = y_score[:, 0]
        if y_score.ndim != 1:
            raise DataError(f"y_score must be 1-D predictions for a regression task; got shape {y_score.shape}.")
        if not np.issubdtype(y_true.dtype, np.number) or not np.all(np.isfinite(y_true.astype(np.float64))):
            raise DataError("y_true must hold finite numbers for a regression task; drop rows with a missing target.")
        return y_true.astype(np.float64), y_score.astype(np.float64)
    k = 2 if y_score.ndim == 1 else (y_score.shape[1] if y_score.ndim == 2 else 0)
    if y_score.ndim not in (1, 2) or k < 2:
        raise DataError(
            f"y_score must be probabilities of shape (n_rows, n_classes) with n_classes >= 2 for a {task} task "
            f"(or (n_rows,) for binary); got shape {y_score.shape}."
        )
    if task == "binary" and k != 2:
        raise DataError(f"task='binary' but y_score has {k} columns; use task='multiclass'.")
    if n_classes is not None and k != n_classes:
        raise DataError(f"y_score has {k} columns but earlier chunks had {n_classes}; every chunk needs all classes.")
    if n == 0:
        return y_true.astype(np.int64), y_score.astype(np.float64)
    if not (np.issubdtype(y_true.dtype, np.integer) or np.issubdtype(y_true.dtype, np.bool_)):
        numeric = np.issubdtype(y_true.dtype, np.number)
        if not numeric or not np.all(np.mod(y_true.astype(np.float64), 1) == 0):
            raise DataError(
                f"y_true must hold class indices 0..{k - 1} (got dtype {y_true.dtype}); "
                "encode labels with modelyard.data.encode_target."
            )
    lo, hi = int(y_true.min()), int(y_true.max())
    if lo < 0 or hi >= k:
        raise DataError(
            f"y_true holds class index {lo if lo < 0 else hi}, outside 0..{k - 1} for probabilities with {k} columns."
        )
    return y_true.astype(np.int64), y_score.astype(np.float64)


def _base_name(name: str, fn: MetricFn) -> tuple[str, float | None] | None:
    """``(built-in metric, threshold)`` computed by the engine for ``fn``, or None for a custom one."""
    base, t = getattr(fn, "base", None), getattr(fn, "threshold", None)
    if base is not None and t is not None and fn.__module__ == at_threshold.__module__:
        return base, t
    if name in METRICS and METRICS.get(name) is fn:
        return name, None
    for known in METRICS.names():
        if METRICS.get(known) is fn:
            return known, None
    return None


def plan_metrics(
    metrics: Sequence[str | MetricFn] | Mapping[str, MetricFn] | None, task: str, thresholds: Sequence[float] | None
) -> tuple[dict[str, MetricFn], list[tuple[str, str, float | None]], list[str]]:
    """Resolve metrics; returns ``{name: fn}``, the engine's specs, and the custom names.

    ``thresholds`` adds ``"<metric>@<t>"`` for every threshold metric asked.
    """
    fns = resolve_metrics(metrics, task)
    if thresholds is not None:
        if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
            raise TypeError(f"thresholds must be a list of numbers in [0, 1]; got {thresholds!r}.")
        ts = [check_threshold(t, "decision threshold") for t in thresholds]
        if ts and task != "binary":
            raise ValueError(f"Decision thresholds apply to binary tasks; this is a {task} task. Drop thresholds.")
        bases = [n for n in fns if n in THRESHOLD_METRICS and fns[n] is METRICS.get(n)]
        if ts and not bases:
            raise ValueError(
                f"thresholds were given but no metric takes one; add one of {list(THRESHOLD_METRICS)} to metrics."
            )
        for base in bases:
            for t in ts:
                name = f"{base}@{t:g}"
                if name not in fns:
                    fns[name] = at_threshold(base, t)
    specs, custom = [], []
    for name, fn in fns.items():
        found = _base_name(name, fn)
        if found is None or found[0] not in E.ENGINE_METRICS[task]:
            custom.append(name)
        else:
            specs.append((name, found[0], found[1]))
    return fns, specs, custom


# -- results -------------------------------------------------------------------------------------
@dataclass
class Result:
    """What an accumulator extracts; :class:`SliceReport` is built from it."""

    task: str
    n_rows: int
    metrics: list[str]
    specs: list[Slice]
    overall: dict[str, float]
    by_slice: dict[str, dict[str, dict[str, float]]]
    intervals: dict[str, Any] | None
    min_count: int | None
    confusion: dict[str, Any] | None
    auc_bound: dict[str, Any] | None
    thresholds: list[float]


@dataclass
class _Grouping:
    name: str | None  # None: overall
    cell_group: np.ndarray
    labels: list[str]


# -- the accumulator -----------------------------------------------------------------------------
class SliceAccumulator:
    """Mergeable sliced-metric statistics: create, add chunks, merge, extract.

    Parameters
    ----------
    task : {"binary", "multiclass", "regression"}
    slices : list
        As in :class:`~modelyard.evaluate.SliceReport`. Quantile buckets need the whole
        column; give edges, or use :func:`evaluate_parquet`, which computes them first.
    metrics : list of str, dict, or None
        Built-in metrics only (custom callables need the rows: use ``SliceReport``).
    thresholds : list of float or None
        Adds ``"<metric>@<t>"`` for every threshold metric asked (binary).
    auc_bins : int or None, default=None
        ``None``: exact AUC-ROC and AUC-PR, keeping one entry per distinct ``(score,
        cell)`` pair (memory grows with the distinct scores: about 20 bytes each).
        An integer ``B``: equal-width score histograms over [0, 1] with ``B`` bins per
        cell, fixed memory; scores in one bin count as tied, and the report states the
        resulting bound on each AUC error (:attr:`SliceReport.auc_error_bound`).
    bootstrap : int, default=0
        Poisson-bootstrap replicates for intervals (0: none). Row ``i``'s weights depend
        only on ``(seed, i)``, so give each chunk its position in the data set
        (``row_offset``) when chunks are added out of order or on several workers.
        Replicate AUCs count the weights per cell and score bin (256 equal-width bins;
        memory ``cells x 256 x 2 x bootstrap x 8`` bytes per score column); pairs within
        a bin count at the fraction the exact point estimate orders, so a replicate with
        unit weights reproduces the exact AUC. With ``auc_bins``, replicates are recentred
        on the binned point value.
    confidence : float, default=0.95
    seed : int, default=0
    min_count : int or None, default=30
        Groups with fewer rows are flagged (:attr:`SliceReport.small`).
    ece_bins : int, default=10
        Equal-width confidence bins of the expected calibration error.
    n_classes : int or None
        Multiclass: the number of probability columns (taken from the first chunk when
        ``None``).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> acc = SliceAccumulator(task="binary", slices=["g"], metrics=["accuracy", "auc"])
    >>> acc.add([0, 1], [0.2, 0.9], pd.DataFrame({"g": ["a", "b"]}))  # doctest: +ELLIPSIS
    <...SliceAccumulator...>
    >>> other = acc.create().add([1, 0], [0.6, 0.7], pd.DataFrame({"g": ["a", "a"]}), row_offset=2)
    >>> acc.merge(other).extract().by_slice["g"]["a"]["count"]
    3.0
    """

    def __init__(
        self,
        *,
        task: str,
        slices: Sequence[Any] = (),
        metrics: Sequence[str | MetricFn] | Mapping[str, MetricFn] | None = None,
        thresholds: Sequence[float] | None = None,
        auc_bins: int | None = None,
        bootstrap: int = 0,
        confidence: float = 0.95,
        seed: int = 0,
        min_count: int | None = 30,
        ece_bins: int = 10,
        n_classes: int | None = None,
        _hold_rows: bool = False,
    ) -> None:
        if task not in _TASKS:
            raise ValueError(f"task must be one of {list(_TASKS)}; got {task!r}.")
        specs = parse_slices(slices) if not _is_parsed(slices) else list(slices)
        _, engine, custom = plan_metrics(metrics, task, thresholds)
        if custom:
            raise ValueError(
                f"Metrics {custom} are custom callables, which need all rows of a group at once; a streaming pass "
                f"computes the built-in metrics ({sorted(E.ENGINE_METRICS[task])}). Evaluate in memory with "
                "SliceReport to use them."
            )
        _check_int(bootstrap, "bootstrap", 0)
        _check_int(ece_bins, "ece_bins", 1)
        _check_int(seed, "seed", 0)
        if min_count is not None:
            _check_int(min_count, "min_count", 0)
        if auc_bins is not None:
            _check_int(auc_bins, "auc_bins", 2)
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be a number strictly between 0 and 1 (e.g. 0.95); got {confidence!r}.")
        if task == "binary":
            n_classes = 2
        self.task = task
        self._specs = specs
        self._engine_specs = tuple(engine)
        self.auc_bins = auc_bins
        self.bootstrap = int(bootstrap)
        self.confidence = float(confidence)
        self.seed = int(seed)
        self.min_count = min_count
        self.ece_bins = int(ece_bins)
        self.n_classes = n_classes
        self._hold = _hold_rows
        self._plan: E.Plan | None = None
        # Streaming replicates of AUCs count weights per cell and score bin (see binned_groups).
        self._rep_bins = E.Bins(width=REPLICATE_AUC_BINS)
        self._cells = CellCoder(specs)
        self._sums: dict[str, np.ndarray] | None = None
        self._runs: list[list[E.Run]] = []
        self._binned: np.ndarray | None = None
        self._rep_sums: dict[str, np.ndarray] | None = None
        self._rep_binned: np.ndarray | None = None
        self._binned_coarse: np.ndarray | None = None
        self._held: tuple[E.Rows, np.ndarray] | None = None
        self._boot: MemoryBootstrap | None = None
        self.n_rows = 0
        self._offset = 0

    # -- protocol -------------------------------------------------------------------------------
    def create(self) -> SliceAccumulator:
        """An empty accumulator with the same settings (for another worker or file)."""
        return SliceAccumulator(
            task=self.task, slices=self._specs, metrics=self._metric_fns(), auc_bins=self.auc_bins,
            bootstrap=self.bootstrap, confidence=self.confidence, seed=self.seed, min_count=self.min_count,
            ece_bins=self.ece_bins, n_classes=self.n_classes, _hold_rows=self._hold,
        )

    def _metric_fns(self) -> dict[str, MetricFn]:
        out: dict[str, MetricFn] = {}
        for name, base, t in self._engine_specs:
            out[name] = at_threshold(base, t) if t is not None else METRICS.get(base)
        return out

    @property
    def plan(self) -> E.Plan:
        """What the engine computes (known once the number of classes is)."""
        if self._plan is None:
            if self.n_classes is None:
                raise RuntimeError("The number of classes is not known before the first chunk.")
            self._plan = E.Plan(self.task, self.n_classes or 0, self._engine_specs, self.ece_bins)
        return self._plan

    def add(self, y_true: Any, y_score: Any, frame: pd.DataFrame | None = None, *,
            row_offset: int | None = None) -> SliceAccumulator:
        """Add a chunk of rows.

        Parameters
        ----------
        y_true : array-like of shape (n_rows,)
            Class indices (classification) or values (regression).
        y_score : array-like of shape (n_rows, n_classes) or (n_rows,)
            Probabilities, or predictions for regression.
        frame : pandas.DataFrame or None
            The slice columns of the same rows (by position); needed when there are slices.
        row_offset : int or None
            Position of the chunk's first row in the whole data set, which fixes its
            bootstrap weights; ``None`` continues after the rows this accumulator has seen.

        Returns
        -------
        SliceAccumulator
            ``self``.
        """
        if self._held is not None:
            raise ValueError("This accumulator holds all rows of an in-memory evaluation; it takes one add() only.")
        y, s = validate_arrays(y_true, y_score, self.task, self.n_classes)
        n = y.shape[0]
        if self.n_classes is None and self.task == "multiclass":
            self.n_classes = int(s.shape[1])
        if self.task == "regression":
            self.n_classes = 0
        if self._specs:
            if not isinstance(frame, pd.DataFrame):
                raise TypeError(
                    f"frame must be a pandas DataFrame holding the slice columns; got {type(frame).__name__}."
                )
            if len(frame) != n:
                raise DataError(f"frame has {len(frame)} rows but y_true has {n}; they must describe the same rows.")
            check_columns(self._specs, [str(c) for c in frame.columns])
        offset = self._offset if row_offset is None else int(row_offset)
        if offset < 0:
            raise ValueError(f"row_offset must be >= 0; got {row_offset!r}.")
        cell = self._cells.encode(frame if self._specs else None, n)
        C = self._cells.n_cells
        rows = E.Rows(self.plan, y, s)
        point = E.cell_sums(rows, cell, C)
        everything = np.arange(C)
        shift = E.regression_shift(self._sums, point, everything, C) if self.task == "regression" else None
        self._sums = E.merge_sums(self._sums, point, everything, C, shift)
        if self.plan.rank:
            if self.auc_bins is None:
                runs = E.rank_runs(rows, cell, C)
                if not self._runs:
                    self._runs = [[] for _ in runs]
                for kept, run in zip(self._runs, runs):
                    kept.append(run)
                    if len(kept) > _MAX_RUNS:
                        kept[:] = [E.merge_runs(kept)]
            else:
                counts = E.binned_counts(rows, cell, C, self.auc_bins)
                self._binned = _add_rows(self._binned, counts, everything, C)
                if self.bootstrap:  # the point counts at the replicates' resolution, to recentre them
                    coarse = E.binned_counts(rows, cell, C, self._rep_bins.n)
                    self._binned_coarse = _add_rows(self._binned_coarse, coarse, everything, C)
        if self._hold:
            self._held = (rows, cell)
        if self.bootstrap and not self._hold:  # in memory, replicates are drawn at extract()
            K = point.get("K")
            reps = self._replicates(rows, cell, C, offset, K)
            self._rep_sums = E.merge_sums(self._rep_sums, {**reps, **({"K": K} if K is not None else {})},
                                          everything, C, shift)
        self.n_rows += n
        self._offset = max(self._offset, offset + n)
        return self

    def _replicates(self, rows: E.Rows, cell: np.ndarray, C: int, offset: int,
                    K: np.ndarray | None) -> dict[str, np.ndarray]:
        """Replicate sums of one chunk (binned AUC weights go straight into the state)."""
        R, n = self.bootstrap, rows.n
        step = max(1, min(R, _WEIGHT_BUDGET // max(n, 1)))
        if self.plan.rank:
            shape = (C, len(rows.rank_columns()), self._rep_bins.n, 2, R)
            if self._rep_binned is None:
                self._rep_binned = np.zeros(shape)
            elif self._rep_binned.shape[0] < C:
                self._rep_binned = _add_rows(None, self._rep_binned, np.arange(self._rep_binned.shape[0]), C)
        parts = []
        bins = self._rep_bins if self.plan.rank else None
        for r0, r1 in E.chunks(R, step):
            W = E.poisson_weights(self.seed, offset, offset + n, r0, r1)
            parts.append(E.replicate_blocks(rows, cell, C, W, K, bins, self._rep_binned, r0))
        return {key: np.concatenate([p[key] for p in parts], axis=-1) for key in parts[0]}

    def merge(self, other: SliceAccumulator) -> SliceAccumulator:
        """Add ``other``'s rows to this accumulator (``other`` is left unchanged).

        Raises
        ------
        ValueError
            If the two differ in task, slices, metrics or settings, or either holds rows
            for exact AUC intervals.
        """
        if not isinstance(other, SliceAccumulator):
            raise TypeError(f"Can only merge another SliceAccumulator; got {type(other).__name__}.")
        mine, theirs = self._settings(), other._settings()
        if mine != theirs:
            diff = [k for k in mine if mine[k] != theirs[k]]
            raise ValueError(f"Cannot merge accumulators with different {diff}; create() both from one accumulator.")
        if self._held is not None or other._held is not None:
            raise ValueError("An accumulator holding rows for exact AUC intervals cannot be merged.")
        if other.n_classes is not None and self.n_classes is not None and other.n_classes != self.n_classes:
            raise ValueError(f"Cannot merge: {self.n_classes} classes here, {other.n_classes} there.")
        if self.n_classes is None:
            self.n_classes = other.n_classes
        if other._sums is None:
            return self
        cells = self._cells.absorb(other._cells)
        C = self._cells.n_cells
        if cells.size < other._sums["n"].shape[0]:  # other saw no rows: its placeholder cell is empty
            return self
        shift = E.regression_shift(self._sums, other._sums, cells, C) if self.task == "regression" else None
        self._sums = E.merge_sums(self._sums, other._sums, cells, C, shift)
        if other._runs:
            if not self._runs:
                self._runs = [[] for _ in other._runs]
            for kept, runs in zip(self._runs, other._runs):
                kept.extend(E.remap_cells(r, cells) for r in runs)
                if len(kept) > _MAX_RUNS:
                    kept[:] = [E.merge_runs(kept)]
        if other._binned is not None:
            self._binned = _add_rows(self._binned, other._binned, cells, C)
        if other._rep_sums is not None:
            self._rep_sums = E.merge_sums(self._rep_sums, other._rep_sums, cells, C, shift)
        if other._rep_binned is not None:
            self._rep_binned = _add_rows(self._rep_binned, other._rep_binned, cells, C)
        if other._binned_coarse is not None:
            self._binned_coarse = _add_rows(self._binned_coarse, other._binned_coarse, cells, C)
        self.n_rows += other.n_rows
        self._offset = max(self._offset, other._offset)
        return self

    def _settings(self) -> dict[str, Any]:
        return {"task": self.task, "slices": self._specs, "metrics": self._engine_specs, "auc_bins": self.auc_bins,
                "bootstrap": self.bootstrap, "seed": self.seed, "confidence": self.confidence,
                "ece_bins": self.ece_bins, "min_count": self.min_count}

    # -- extract --------------------------------------------------------------------------------
    def extract(self) -> SliceReport:
        """The :class:`~modelyard.evaluate.SliceReport` of all rows added and merged."""
        from modelyard.evaluate._slicing import SliceReport

        return SliceReport._from_result(self.result())

    def groupings(self) -> list[_Grouping]:
        """The overall grouping, then one per slice, as cell -> group maps."""
        C = self._cells.n_cells
        seen = self.n_rows > 0
        out = [_Grouping(None, np.zeros(C, dtype=np.int64) if seen else np.full(C, -1), ["(all)"] if seen else [])]
        for s, spec in enumerate(self._specs):
            cell_group, labels = self._cells.groups(s)
            out.append(_Grouping(spec.name, cell_group, labels))
        return out

    def result(self, groupings: list[_Grouping] | None = None) -> Result:
        """Metric values, intervals, flags and confusion matrices of every group."""
        groupings = groupings or self.groupings()
        if self._sums is None:  # nothing added
            names = [name for name, _, _ in self._engine_specs]
            return Result(task=self.task, n_rows=0, metrics=names, specs=list(self._specs),
                          overall=_empty_overall(names), by_slice={s.name: {} for s in self._specs}, intervals=None,
                          min_count=self.min_count, confusion=None, auc_bound=None,
                          thresholds=sorted({t for _, _, t in self._engine_specs if t is not None}))
        plan = self.plan
        sums = self._sums
        for kept in self._runs:  # one run per column, merged in place to bound the peak
            kept[:] = [E.merge_runs(kept)]
        runs = [kept[0] for kept in self._runs]
        want_ap = plan.uses("auc_pr")
        bins = None  # score bins of AUC replicates, whose within-bin ordering the exact runs give
        if self.bootstrap and plan.rank and runs:
            bins = self.memory_bootstrap().bins if self._held is not None else [self._rep_bins] * len(runs)
        values, bounds, confusion, points = [], [], [], []
        for grp in groupings:
            G = len(grp.labels)
            gs = E.aggregate(sums, grp.cell_group, G)
            rank = None
            if plan.rank:
                if self.auc_bins is None:
                    rank = [E.run_groups(run, grp.cell_group, G, want_ap=want_ap, bins=bins[j] if bins else None)
                            for j, run in enumerate(runs)]
                else:
                    counts = E.aggregate({"c": self._binned}, grp.cell_group, G)["c"]
                    rank = [E.binned_point(counts[:, j], want_ap=want_ap) for j in range(counts.shape[1])]
            values.append(E.finalize(plan, gs, rank))
            bounds.append(_auc_bound(plan, rank) if self.auc_bins is not None and rank is not None else None)
            confusion.append(gs.get("cm"))
            points.append((gs, rank))
        replicates = self._replicate_values(groupings, sums, runs, values, points) if self.bootstrap else None
        return self._assemble(groupings, values, replicates, bounds, confusion)

    def _replicate_values(self, groupings: list[_Grouping], sums: dict[str, np.ndarray], runs: list[E.Run],
                          values: list[dict[str, np.ndarray]], points: list[tuple[Any, Any]]
                          ) -> list[dict[str, np.ndarray]]:
        plan = self.plan
        if self._held is not None:
            return self.memory_bootstrap().values(groupings, self.bootstrap, sums, values, points)
        K, n_point = sums.get("K"), sums["n"]
        want_ap = plan.uses("auc_pr")
        out = []  # streaming: replicate sums were accumulated chunk by chunk
        for grp, point, (gs, rank_point) in zip(groupings, values, points):
            G = len(grp.labels)
            rs = E.aggregate(self._rep_sums, grp.cell_group, G, K=K, n_point=n_point)
            rank = shift = None
            if plan.rank:
                counts = E.aggregate({"c": self._rep_binned}, grp.cell_group, G)["c"]
                rhos = [r["rho"] for r in rank_point] if runs else [None] * counts.shape[1]
                rank = [E.binned_groups(*E.split_bins(counts[:, j]), rhos[j], want_ap=want_ap)
                        for j in range(counts.shape[1])]
                # Recentre on the point value (exact, or binned finer than the replicates).
                if runs:
                    per_cell = np.stack([run_bin_counts(r, self._rep_bins, self._cells.n_cells) for r in runs], 1)
                else:
                    per_cell = self._binned_coarse
                pc = E.aggregate({"c": per_cell}, grp.cell_group, G)["c"]
                shift = _rank_shift(plan, point, gs, [E.binned_point(pc[:, j], rhos[j], want_ap=want_ap)
                                                      for j in range(pc.shape[1])])
            out.append(_shifted(E.finalize(plan, rs, rank), shift))
        return out

    def memory_bootstrap(self) -> MemoryBootstrap:
        """The replicate machinery of an in-memory evaluation (after its one add())."""
        if self._held is None:
            raise ValueError("Only an in-memory evaluation (SliceReport) holds its rows for replicates.")
        if self._boot is None:
            rows, cell = self._held
            for kept in self._runs:
                kept[:] = [E.merge_runs(kept)]
            runs = [kept[0] for kept in self._runs]
            self._boot = MemoryBootstrap(rows, cell, self._cells.n_cells, runs, self.seed)
        return self._boot

    def _assemble(self, groupings: list[_Grouping], values: list[dict[str, np.ndarray]],
                  replicates: list[dict[str, np.ndarray]] | None, bounds: list[np.ndarray | None],
                  confusion: list[np.ndarray | None]) -> Result:
        names = [name for name, _, _ in self.plan.metrics]

        def table(vals: dict[str, np.ndarray], labels: list[str]) -> dict[str, dict[str, float]]:
            return {label: {m: float(vals[m][g]) for m in names} for g, label in enumerate(labels)}

        overall_grp = groupings[0]
        overall = table(values[0], overall_grp.labels).get("(all)") or _empty_overall(names)
        by_slice = {grp.name: table(v, grp.labels) for grp, v in zip(groupings[1:], values[1:])}
        intervals = None
        if replicates is not None:
            per: list[dict[str, dict[str, list[float]]]] = []
            for grp, reps in zip(groupings, replicates):
                cis = {m: E.percentile_interval(reps[m], self.confidence) for m in names}
                per.append({label: {m: [float(cis[m][0][g]), float(cis[m][1][g])] for m in names}
                            for g, label in enumerate(grp.labels)})
            intervals = {
                "confidence": self.confidence, "replicates": self.bootstrap, "method": "poisson-percentile",
                "overall": per[0].get("(all)", {m: [float("nan")] * 2 for m in names}),
                "by_slice": {grp.name: p for grp, p in zip(groupings[1:], per[1:])},
            }
        conf = None
        if self.task != "regression" and confusion[0] is not None:
            def cms(cm: np.ndarray, labels: list[str]) -> dict[str, np.ndarray]:
                return {label: cm[g].astype(np.int64) for g, label in enumerate(labels)}

            k = max(self.plan.n_classes, 2)
            conf = {"overall": cms(confusion[0], overall_grp.labels).get("(all)", np.zeros((k, k), np.int64)),
                    "by_slice": {grp.name: cms(cm, grp.labels) for grp, cm in zip(groupings[1:], confusion[1:])}}
        bound = None
        if bounds[0] is not None:
            bound = {"overall": float(bounds[0][0]) if len(bounds[0]) else float("nan"),
                     "by_slice": {grp.name: {label: float(b[g]) for g, label in enumerate(grp.labels)}
                                  for grp, b in zip(groupings[1:], bounds[1:])}}
        return Result(
            task=self.task, n_rows=self.n_rows, metrics=names, specs=list(self._specs), overall=overall,
            by_slice=by_slice, intervals=intervals, min_count=self.min_count, confusion=conf, auc_bound=bound,
            thresholds=sorted({t for _, _, t in self.plan.metrics if t is not None}),
        )


class MemoryBootstrap:
    """Poisson-bootstrap replicates of an in-memory evaluation.

    Rows are put in one order: by cell, then score bin (about 1,024 quantile bins of
    the first score column; fewer with many cells) and label. Replicate weights are drawn
    for positions in that order, so a cell's rows are contiguous and nothing is gathered.
    Sum statistics come from :func:`~._engine.replicate_cell_sums`; each one-vs-rest
    column's weights per (cell, bin, label) from one cumulative sum. A slice's groups add
    up cells, and their AUCs come from :func:`~._engine.binned_groups` with the exact
    within-bin ordering ``rho``, so a replicate's AUC is exact at unit weights (pairs
    within one bin, about 0.1% of pairs, keep their observed ordering fraction). AUC-PR
    replicates treat a bin as tied and are recentred on the exact point value.
    """

    def __init__(self, rows: E.Rows, cell: np.ndarray, n_cells: int, runs: list[E.Run], seed: int) -> None:
        self.rows, self.cell, self.n_cells, self.seed = rows, cell, n_cells, seed
        cols = rows.rank_columns() if rows.plan.rank else []
        # About 1,024 bins, but no more than keep ~4 rows per cell and bin (finer bins only cost time:
        # pairs within a bin keep their exact ordering fraction) nor 2**21 cell-bins.
        n_bins = int(min(MEMORY_AUC_BINS, max(16, (1 << 21) // max(n_cells, 1)),
                         max(16, rows.n // (4 * max(n_cells, 1)))))
        self.bins = [E.Bins.quantiles(run, n_bins) for run in runs]
        if cols:
            key = (cell * self.bins[0].n + self.bins[0](cols[0][0])) * 2 + cols[0][1]
        else:
            key = cell
        self.order = np.argsort(key, kind="stable")
        self.segments = []  # per column: (perm, starts, flat index of each segment in (cells, 2, bins))
        for j, (score, positive) in enumerate(cols):
            nb = self.bins[j].n
            kj = ((cell * nb + self.bins[j](score)) * 2 + positive)[self.order]
            perm = None if j == 0 else np.argsort(kj, kind="stable")
            ks = kj if perm is None else kj[perm]
            starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]]) if ks.size else np.zeros(0, np.int64)
            sk = ks[starts]
            flat = ((sk // (2 * nb)) * 2 + sk % 2) * nb + (sk // 2) % nb
            self.segments.append((perm, starts, flat))

    def weights(self, r0: int, r1: int) -> np.ndarray:
        """Weights ``(r1 - r0, n)`` of the rows in original order (for custom metrics)."""
        W = E.poisson_weights(self.seed, 0, self.rows.n, r0, r1)
        out = np.empty_like(W)
        out[:, self.order] = W
        return out

    def _dense(self, seg: np.ndarray, j: int) -> np.ndarray:
        """``(R, cells, 2, bins)`` weights from segment sums ``(R, K)``."""
        R = seg.shape[0]
        D = np.zeros((R, self.n_cells * 2 * self.bins[j].n))
        D[:, self.segments[j][2]] = seg
        return D.reshape(R, self.n_cells, 2, self.bins[j].n)

    def values(self, groupings: list[_Grouping], R: int, sums: dict[str, np.ndarray],
               points: list[dict[str, np.ndarray]], ranks: list[tuple[Any, Any]]) -> list[dict[str, np.ndarray]]:
        """Metric values ``(G, R)`` of every group of every grouping in every replicate.

        ``sums`` are the point sums per cell; ``points`` the point values and ``ranks``
        the point group sums and rank statistics (with ``rho``) per grouping.
        """
        rows, plan, n, C = self.rows, self.rows.plan, self.rows.n, self.n_cells
        if n == 0:  # no rows: no replicate defines anything
            return [{name: np.full((len(g.labels), R), np.nan) for name, _, _ in plan.metrics} for g in groupings]
        K, n_point = sums.get("K"), sums["n"]
        want_ap = plan.uses("auc_pr")
        reducers, shifts = [], []
        unit = [self._dense(np.diff(np.r_[st, n]).astype(np.float64)[None, :], j)
                for j, (_, st, _) in enumerate(self.segments)]
        for grp, point, (gs, rank_point) in zip(groupings, points, ranks):
            valid = np.flatnonzero(grp.cell_group >= 0)
            cperm = valid[np.argsort(grp.cell_group[valid], kind="stable")]
            gsorted = grp.cell_group[cperm]
            cstarts = np.flatnonzero(np.r_[True, gsorted[1:] != gsorted[:-1]]) if gsorted.size else cperm[:0]
            reducers.append((cperm, cstarts, gsorted[cstarts], len(grp.labels)))
            shift = None
            if plan.rank:
                binned = [self._binned(unit[j], reducers[-1], rank_point[j]["rho"], want_ap)
                          for j in range(len(self.segments))]
                shift = _rank_shift(plan, point, gs, [{k: v[:, 0] for k, v in b.items()} for b in binned])
            shifts.append(shift)
        per_replicate = 2 * max((b.n for b in self.bins), default=0) * C * 8 * 4
        step = max(1, min(R, _WEIGHT_BUDGET // max(n, 1), _RANK_BUDGET // max(per_replicate, 1)))
        pieces: list[list[dict[str, np.ndarray]]] = [[] for _ in groupings]
        for r0, r1 in E.chunks(R, step):
            W = E.poisson_weights(self.seed, 0, n, r0, r1)  # positions in self.order
            rep = E.replicate_cell_sums(rows, self.cell, C, W, K, order=self.order)
            dense = [self._dense(E.segment_sums(W if perm is None else W[:, perm], starts), j)
                     for j, (perm, starts, _) in enumerate(self.segments)]
            for i, grp in enumerate(groupings):
                rs = E.aggregate(rep, grp.cell_group, len(grp.labels), K=K, n_point=n_point)
                rank = None
                if plan.rank:
                    rank = [self._binned(dense[j], reducers[i], ranks[i][1][j]["rho"], want_ap)
                            for j in range(len(dense))]
                pieces[i].append(_shifted(E.finalize(plan, rs, rank), shifts[i]))
        return [{m: np.concatenate([p[m] for p in ps], axis=1) for m in ps[0]} for ps in pieces]

    @staticmethod
    def _binned(D: np.ndarray, reducer: tuple[Any, ...], rho: np.ndarray | None, want_ap: bool
                ) -> dict[str, np.ndarray]:
        """Rank statistics ``(G, R)`` of one grouping from dense per-cell weights ``(R, cells, 2, bins)``."""
        cperm, cstarts, gids, G = reducer
        R, _, _, nb = D.shape
        if G == 1 and cstarts.size == 1:
            Dg = D.sum(axis=1, keepdims=True)
        elif cstarts.size == cperm.size == G:  # one cell per group: a reordering
            Dg = D if np.array_equal(cperm, np.arange(cperm.size)) else D[:, cperm]
        else:
            Dg = np.zeros((R, G, 2, nb))
            if cstarts.size:
                Dg[:, gids] = np.add.reduceat(D[:, cperm], cstarts, axis=1)
        return E.binned_groups(Dg[:, :, 0], Dg[:, :, 1], rho, want_ap=want_ap)


def run_bin_counts(run: E.Run, bins: E.Bins, n_cells: int) -> np.ndarray:
    """``(n_cells, bins, 2)`` negatives/positives per cell and score bin of an exact run."""
    key = run.cell.astype(np.int64) * bins.n + bins(run.score)
    size = n_cells * bins.n
    neg = np.bincount(key, run.neg.astype(np.float64), minlength=size)
    pos = np.bincount(key, run.pos.astype(np.float64), minlength=size)
    return np.stack([neg, pos], axis=1).reshape(n_cells, bins.n, 2)


def _rank_shift(plan: E.Plan, point: dict[str, np.ndarray], sums: dict[str, np.ndarray],
                binned: Any) -> dict[str, np.ndarray]:
    """Exact minus binned point value of each AUC metric, per group."""
    at_unit = E.finalize(plan, sums, list(binned))
    return {name: np.nan_to_num(point[name] - at_unit[name]) for name, base, _ in plan.metrics
            if base in ("auc", "auc_pr")}


def _shifted(values: dict[str, np.ndarray], shift: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    if not shift:
        return values
    return {m: (v + shift[m][:, None] if m in shift else v) for m, v in values.items()}


def _auc_bound(plan: E.Plan, rank: list[dict[str, np.ndarray]]) -> np.ndarray:
    b = np.stack([r["bound"] for r in rank], axis=1)
    return b[:, 0] if plan.task == "binary" else np.nanmax(np.where(np.isfinite(b), b, -np.inf), axis=1)


def _empty_overall(names: list[str]) -> dict[str, float]:
    return {m: (0.0 if m == "count" else float("nan")) for m in names}


def _add_rows(into: np.ndarray | None, add: np.ndarray, cells: np.ndarray, size: int) -> np.ndarray:
    if into is None:
        into = np.zeros((size, *add.shape[1:]), dtype=add.dtype)
    elif into.shape[0] < size:
        into = np.concatenate([into, np.zeros((size - into.shape[0], *into.shape[1:]), dtype=into.dtype)])
    np.add.at(into, cells, add)
    return into


def _is_parsed(slices: Any) -> bool:
    return isinstance(slices, list) and all(isinstance(s, Slice) for s in slices) and bool(slices)


def _check_int(value: Any, name: str, lowest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
        raise ValueError(f"{name} must be an integer >= {lowest}; got {value!r}.")


# -- Parquet ---------------------------------------------------------------------------------------
def evaluate_parquet(
    path: str | os.PathLike[str],
    *,
    target: str | None = None,
    score: str | Sequence[str] | None = None,
    predictor: Any = None,
    task: str | None = None,
    slices: Sequence[Any] = (),
    metrics: Sequence[str] | None = None,
    classes: Sequence[Any] | None = None,
    thresholds: Sequence[float] | None = None,
    chunk_rows: int = 250_000,
    columns: Sequence[str] | None = None,
    auc_bins: int | None = None,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    min_count: int | None = 30,
    ece_bins: int = 10,
) -> SliceReport:
    """Evaluate a Parquet file or directory in chunks, in bounded memory.

    Parameters
    ----------
    path : str or path-like
        A Parquet file, or a directory of them (``*.parquet`` files, in name order).
    target : str or None
        The label column. With a ``predictor``, defaults to its schema's target.
    score : str or list of str or None
        Precomputed scores: one column (binary P(class 1), or regression predictions) or
        one column per class, in class order. Give this or ``predictor``.
    predictor : Predictor or None
        Scores each chunk (``predict_proba`` on its feature columns, ``predict`` for
        regression); labels are encoded with its schema.
    task : {"binary", "multiclass", "regression"} or None
        Required with ``score``; taken from the predictor otherwise.
    slices, metrics, thresholds, auc_bins, bootstrap, confidence, seed, min_count, ece_bins
        As in :class:`SliceAccumulator`. Quantile buckets are computed in a first pass
        that reads only their columns (8 bytes per row each).
    classes : list or None
        With ``score``: the labels of the classes in index order, to encode a target that
        does not hold class indices (``["<=50K", ">50K"]``).
    chunk_rows : int, default=250,000
        Rows per batch. Memory is about one row group and one batch of the columns read,
        plus the state; each row of a batch costs a few hundred bytes of temporaries.
    columns : list of str or None
        Extra columns to read (the ones predicate slices use); by default every column is
        read when a slice has a predicate, else only the columns needed.

    Returns
    -------
    SliceReport

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    DataError
        If a named column does not exist (the message lists the columns), or labels are
        not classes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"No Parquet file or directory at {str(p)!r}.")
    if (score is None) == (predictor is None):
        raise ValueError("Give exactly one of score= (columns holding the model's scores) or predictor=.")
    _check_int(chunk_rows, "chunk_rows", 1)
    files = sorted(f for f in p.rglob("*.parquet") if f.is_file()) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"No *.parquet files under {str(p)!r}.")
    names = list(pq.read_schema(files[0]).names)
    if predictor is not None:
        task = predictor.task
        target = target or predictor.schema.target
        needed = [*predictor.feature_names]
        score_cols: list[str] = []
    else:
        if task not in _TASKS:
            raise ValueError(f"task must be one of {list(_TASKS)} when scores are given by column; got {task!r}.")
        score_cols = [score] if isinstance(score, str) else list(score or [])
        needed = list(score_cols)
    if not target:
        raise ValueError("target= must name the label column.")
    specs = parse_slices(slices)
    predicates = any(part.where is not None for s in specs for part in s.parts)
    wanted = [target, *needed, *slice_columns(specs), *(columns or [])]
    for column in wanted:
        if column not in names:
            raise DataError(f"Column {column!r} is not in {str(p)!r}. Columns are: {names}.")
    check_columns(specs, names)
    read = names if predicates and columns is None else list(dict.fromkeys(wanted))
    quantile_cols = [part.column for s in specs for part in s.parts if not part.resolved]
    if quantile_cols:
        first = pa.concat_tables(pq.read_table(f, columns=list(dict.fromkeys(quantile_cols))) for f in files)
        specs = resolve_quantiles(specs, lambda c: first.column(c).to_numpy(zero_copy_only=False))
        del first
    lookup = {label: i for i, label in enumerate(classes)} if classes is not None else None
    n_classes = len(score_cols) if task == "multiclass" and len(score_cols) > 1 else None
    acc = SliceAccumulator(task=task, slices=specs, metrics=metrics, thresholds=thresholds, auc_bins=auc_bins,
                           bootstrap=bootstrap, confidence=confidence, seed=seed, min_count=min_count,
                           ece_bins=ece_bins, n_classes=n_classes)
    offset = 0
    for batch in _batches(files, read, chunk_rows):
        frame = batch.to_pandas()
        if predictor is not None:
            from modelyard.data import encode_target

            y = encode_target(frame[target], predictor.schema)
            X = frame[list(predictor.feature_names)]
            s = predictor.predict(X) if task == "regression" else predictor.predict_proba(X)
        else:
            y = _labels(frame[target], lookup, task, target)
            s = frame[score_cols[0]].to_numpy(dtype=np.float64) if len(score_cols) == 1 else \
                frame[score_cols].to_numpy(dtype=np.float64)
        acc.add(y, s, frame, row_offset=offset)
        offset += batch.num_rows
        del frame, batch
        pa.default_memory_pool().release_unused()  # keep the read buffers from piling up
    return acc.extract()


def _batches(files: list[Path], columns: list[str], size: int) -> Any:
    """Record batches of at most ``size`` rows of ``columns``, file by file (one row group in memory)."""
    import pyarrow.parquet as pq

    for f in files:
        reader = pq.ParquetFile(f)
        missing = [c for c in columns if c not in reader.schema_arrow.names]
        if missing:
            raise DataError(f"{str(f)!r} lacks the columns {missing}; every file must hold the same columns.")
        for batch in reader.iter_batches(batch_size=size, columns=columns, use_threads=False):
            if batch.num_rows:
                yield batch


def _labels(series: pd.Series, lookup: dict[Any, int] | None, task: str, target: str) -> np.ndarray:
    if task == "regression" or lookup is None:
        if series.isna().any():
            raise DataError(f"Target column {target!r} has {int(series.isna().sum())} missing values; drop those rows.")
        return series.to_numpy()
    codes = series.map(lookup)
    if codes.isna().any():
        bad = sorted(map(str, series[codes.isna()].unique()[:5]))
        raise DataError(f"Target column {target!r} holds {bad}, not among classes={list(lookup)}.")
    return codes.to_numpy(dtype=np.int64)
