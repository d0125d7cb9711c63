"""The vectorized engine behind :class:`SliceReport`: sufficient statistics per cell.

Every built-in metric is a function of a few sums per group of rows, so the engine never
calls a metric per group:

* **Sum statistics** (mergeable by addition): row counts, the 2×2 confusion counts (k×k
  for multiclass), counts above each decision threshold, the sums of per-row log-loss
  and Brier terms, the per-bin gaps of the calibration error, and for regression the
  shifted sums of ``y`` and ``y²`` and the sums of ``|e|`` and ``e²``. They are kept per
  *cell* (see :mod:`._groups`) with ``np.bincount``, and a slice's groups add up cells.
* **Rank statistics** for AUC-ROC and AUC-PR, exact: rows sorted once by score become a
  *run* of ``(score, cell, positives, negatives)`` entries; per slice the entries are
  ordered by group with a stable integer sort (a radix sort for small group counts),
  and the Mann-Whitney U (ties count one half) and average precision of every group
  come out of cumulative sums over that order.

Poisson bootstrap (as TFMA does): replicate ``r`` gives row ``i`` the weight
``w_ri ~ Poisson(1)``, drawn from a generator advanced to the row's position, so
any chunking of the rows draws the same weights. Sum statistics under weights are BLAS
products of the weights with the per-row terms, per cell. AUC replicates sum the
weights per (cell, score bin, label) with one cumulative sum per replicate; pairs in
different bins are ordered by their bins, and pairs within a bin count at the fraction
the exact data orders (``rho``), so a replicate reproduces the exact AUC at unit weights
while costing a few passes over the rows for all slices together. All replicates of a
chunk are computed at once, in memory-bounded blocks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.evaluate._metrics import LOG_LOSS_EPS, ece_bin

__all__ = [
    "ENGINE_METRICS",
    "Plan",
    "Rows",
    "Run",
    "aggregate",
    "cell_sums",
    "finalize",
    "merge_runs",
    "merge_sums",
    "poisson_weights",
    "rank_runs",
    "regression_shift",
    "remap_cells",
    "replicate_blocks",
    "run_groups",
    "segment_sums",
    "split_bins",
]

#: Metrics the engine computes from sufficient statistics, by task.
ENGINE_METRICS: dict[str, frozenset[str]] = {
    "binary": frozenset({
        "count", "accuracy", "precision", "recall", "f1", "tpr", "fpr", "tnr", "fnr", "selection_rate",
        "auc", "auc_pr", "log_loss", "brier", "ece",
    }),
    "multiclass": frozenset({"count", "accuracy", "precision", "recall", "f1", "auc", "auc_pr", "log_loss", "brier",
                             "ece"}),
    "regression": frozenset({"count", "rmse", "mae", "r2"}),
}
_RANK = frozenset({"auc", "auc_pr"})


@dataclass(frozen=True)
class Plan:
    """What to compute: the metrics (name, base metric, threshold) and their settings."""

    task: str
    n_classes: int
    metrics: tuple[tuple[str, str, float | None], ...]
    ece_bins: int = 10
    thresholds: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        ts = sorted({t for _, _, t in self.metrics if t is not None})
        object.__setattr__(self, "thresholds", tuple(ts))

    def uses(self, *bases: str) -> bool:
        return any(b in bases for _, b, _ in self.metrics)

    @property
    def rank(self) -> bool:
        return self.uses(*_RANK)


# -- rows ------------------------------------------------------------------------------------
class Rows:
    """Validated arrays of one chunk, and the per-row terms the statistics sum.

    Parameters
    ----------
    plan : Plan
    y_true : numpy.ndarray
        Class indices (int64) or values (float64).
    y_score : numpy.ndarray
        ``(n,)`` P(class 1) or ``(n, k)`` probabilities; ``(n,)`` predictions for
        regression.
    """

    def __init__(self, plan: Plan, y_true: np.ndarray, y_score: np.ndarray) -> None:
        self.plan = plan
        self.n = int(y_true.shape[0])
        task = plan.task
        if task == "regression":
            self.y = y_true.astype(np.float64, copy=False)
            self.pred_value = y_score.astype(np.float64, copy=False).reshape(self.n)
            return
        self.y = y_true.astype(np.int64, copy=False)
        s = y_score.astype(np.float64, copy=False)
        n = self.n
        if s.ndim == 1:  # P(class 1) of a binary task; the matrix would be [1 - s, s]
            self.proba = None
            self.score1 = s
            q = 1.0 - s
            self.pred = (s > q).astype(np.int64)
            self._p_true = lambda: np.where(self.y == 1, s, q)
            self._conf = lambda: np.where(self.pred == 1, s, q)
            self._brier = lambda: (s - self.y) ** 2
        else:
            self.proba = s
            self.score1 = s[:, 1] if s.shape[1] == 2 else None
            self.pred = s.argmax(axis=1)
            idx = np.arange(n)
            self._p_true = lambda: s[idx, self.y]
            self._conf = lambda: s[idx, self.pred]
            self._brier = lambda: self._brier_matrix(s)

    def _brier_matrix(self, p: np.ndarray) -> np.ndarray:
        d = p.copy()
        d[np.arange(self.n), self.y] -= 1.0
        return np.einsum("ij,ij->i", d, d) * (0.5 if p.shape[1] == 2 else 1.0)

    # Per-row terms, computed on first use.
    def log_loss_terms(self) -> np.ndarray:
        return -np.log(np.clip(self._p_true(), LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS))

    def brier_terms(self) -> np.ndarray:
        return self._brier()

    def ece_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """Bin of each row's confidence, and ``correct - confidence``."""
        conf = self._conf()
        return ece_bin(conf, self.plan.ece_bins), (self.pred == self.y) - conf

    def above(self) -> np.ndarray:
        """Number of thresholds each P(class 1) exceeds (``score > t``)."""
        return np.searchsorted(np.asarray(self.plan.thresholds), self.score1, side="left")

    def rank_columns(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(score, positive)`` per one-vs-rest column: one for binary, ``k`` for multiclass."""
        if self.plan.task == "binary":
            return [(self.score1, self.y == 1)]
        return [(np.ascontiguousarray(self.proba[:, c]), self.y == c) for c in range(self.plan.n_classes)]


# -- sum statistics --------------------------------------------------------------------------
def _bc(idx: np.ndarray, weights: np.ndarray | None, size: int) -> np.ndarray:
    """Counts (int64) or weighted sums (float64; numpy gives int64 for empty input) per index."""
    out = np.bincount(idx, weights, minlength=size)
    return out.astype(np.int64 if weights is None else np.float64, copy=False)


def cell_sums(rows: Rows, cell: np.ndarray, n_cells: int) -> dict[str, np.ndarray]:
    """Sum statistics per cell (leading axis ``n_cells``), with ``np.bincount``."""
    plan, C = rows.plan, n_cells
    out: dict[str, np.ndarray] = {"n": _bc(cell, None, C)}
    if plan.task == "regression":
        n = out["n"].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            K = np.where(n > 0, _bc(cell, rows.y, C) / np.maximum(n, 1), 0.0)
        d = rows.y - K[cell]
        e = rows.pred_value - rows.y
        out.update(K=K, s1=_bc(cell, d, C), s2=_bc(cell, d * d, C),
                   sae=_bc(cell, np.abs(e), C), sse=_bc(cell, e * e, C))
        ymin = np.full(C, np.inf)
        ymax = np.full(C, -np.inf)
        np.minimum.at(ymin, cell, rows.y)
        np.maximum.at(ymax, cell, rows.y)
        out.update(ymin=ymin, ymax=ymax)
        return out
    k = plan.n_classes
    out["cm"] = _bc(cell * (k * k) + rows.y * k + rows.pred, None, C * k * k).reshape(C, k, k)
    if plan.thresholds:
        T = len(plan.thresholds)
        counts = _bc((cell * 2 + rows.y) * (T + 1) + rows.above(), None, C * 2 * (T + 1)).reshape(C, 2, T + 1)
        # Rows above threshold j are those whose count of exceeded thresholds is > j.
        out["thr"] = np.cumsum(counts[:, :, ::-1], axis=2)[:, :, ::-1][:, :, 1:]
    if plan.uses("log_loss"):
        out["ll"] = _bc(cell, rows.log_loss_terms(), C)
    if plan.uses("brier"):
        out["brier"] = _bc(cell, rows.brier_terms(), C)
    if plan.uses("ece"):
        b, gap = rows.ece_terms()
        B = plan.ece_bins
        out["ece"] = _bc(cell * B + b, gap, C * B).reshape(C, B)
    return out


def _reshift(s1: np.ndarray, s2: np.ndarray, n: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``y - K_old`` re-expressed around ``K_new`` where ``d = K_old - K_new``."""
    return s1 + n * d, s2 + 2.0 * d * s1 + n * d * d


def _pad(a: np.ndarray, size: int, fill: float = 0) -> np.ndarray:
    if a.shape[0] >= size:
        return a
    extra = np.full((size - a.shape[0], *a.shape[1:]), fill, dtype=a.dtype)
    return np.concatenate([a, extra])


def regression_shift(into: dict[str, np.ndarray] | None, add: dict[str, np.ndarray], cells: np.ndarray,
                     size: int) -> np.ndarray:
    """Settle the target's shift ``K`` of cells ``cells`` and return ``K_add - K_target``.

    The target keeps its shift where it has rows, and takes the added one elsewhere.
    Call before :func:`merge_sums` of the point sums and of their replicates.
    """
    if into is None:
        return np.zeros(cells.size)
    n_old = _pad(into["n"], size)[cells]
    K = _pad(into["K"], size)
    K_to = np.where(n_old > 0, K[cells], add["K"])
    return add["K"] - K_to


def merge_sums(
    into: dict[str, np.ndarray] | None, add: dict[str, np.ndarray], cells: np.ndarray, size: int,
    shift: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Add ``add`` (its rows are cells ``cells`` of the target) into ``into``, grown to ``size`` cells.

    Regression sums are sums of ``y - K`` per cell; ``shift`` (from
    :func:`regression_shift`) re-expresses the added ones around the target's ``K``,
    which is exact algebra, and replicate sums (trailing axis) use the same shift.
    """
    if into is None:
        into = {key: np.zeros((size, *v.shape[1:]), dtype=v.dtype) for key, v in add.items()}
        if "ymin" in into:
            into["ymin"][:] = np.inf
            into["ymax"][:] = -np.inf
    else:
        for key in list(into):
            into[key] = _pad(into[key], size, np.inf if key == "ymin" else (-np.inf if key == "ymax" else 0))
            if key in add and into[key].dtype != np.result_type(into[key], add[key]):
                into[key] = into[key].astype(np.result_type(into[key], add[key]))
    if shift is not None and "s1" in add:
        d = shift.reshape((-1,) + (1,) * (add["s1"].ndim - 1))
        s1, s2 = _reshift(add["s1"], add["s2"], _expand(add["n"], add["s1"]), d)
        add = {**add, "s1": s1, "s2": s2}
    for key, value in add.items():
        if key == "K":
            into[key][cells] = value - (shift if shift is not None else 0.0)
        elif key == "ymin":
            np.minimum.at(into[key], cells, value)
        elif key == "ymax":
            np.maximum.at(into[key], cells, value)
        else:
            np.add.at(into[key], cells, value)
    return into


def _expand(n: np.ndarray, like: np.ndarray) -> np.ndarray:
    return n.reshape(n.shape + (1,) * (like.ndim - n.ndim)).astype(np.float64)


def aggregate(
    sums: dict[str, np.ndarray], cell_group: np.ndarray, n_groups: int, *, K: np.ndarray | None = None,
    n_point: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Group sums from cell sums. ``cell_group[c] < 0`` drops cell ``c``.

    Regression: each group's sums are re-expressed around one shift per group, the
    row-weighted mean of its cells' shifts (``K``, ``n_point``: those of the point
    statistics, so replicates share the point estimate's shift).
    """
    keep = cell_group >= 0
    everything = bool(keep.all())
    g = cell_group if everything else cell_group[keep]
    out: dict[str, np.ndarray] = {}
    if "s1" in sums:
        Kc = sums["K"][keep] if K is None else K[keep]
        nc = (sums["n"] if n_point is None else n_point)[keep].astype(np.float64)
        tot = np.bincount(g, nc, minlength=n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            Kg = np.bincount(g, nc * Kc, minlength=n_groups) / np.where(tot > 0, tot, 1.0)
        d = (Kc - Kg[g]).reshape((-1,) + (1,) * (sums["s1"].ndim - 1))
        s1, s2 = _reshift(sums["s1"][keep], sums["s2"][keep], _expand(sums["n"][keep], sums["s1"]), d)
        sums = {**{k: v[keep] for k, v in sums.items()}, "s1": s1, "s2": s2}
        out["K"] = Kg
    elif not everything:
        sums = {k: v[keep] for k, v in sums.items()}
    for key, value in sums.items():
        if key == "K":
            continue
        if key in ("ymin", "ymax"):
            acc = np.full((n_groups, *value.shape[1:]), np.inf if key == "ymin" else -np.inf)
            (np.minimum if key == "ymin" else np.maximum).at(acc, g, value)
        elif n_groups == 1:
            acc = value.sum(axis=0, keepdims=True)
        elif g.size == n_groups and np.array_equal(g, np.arange(n_groups)):
            acc = value  # one cell per group, in group order
        else:
            acc = np.zeros((n_groups, *value.shape[1:]), dtype=value.dtype)
            np.add.at(acc, g, value)
        out[key] = acc
    return out


# -- rank statistics -------------------------------------------------------------------------
@dataclass
class Run:
    """Rows of one one-vs-rest column sorted by ``(score, cell)``, equal pairs merged."""

    score: np.ndarray
    cell: np.ndarray
    pos: np.ndarray
    neg: np.ndarray
    unique: bool = False  # no score occurs twice (so no two entries of a group tie)

    @property
    def nbytes(self) -> int:
        return int(self.score.nbytes + self.cell.nbytes + self.pos.nbytes + self.neg.nbytes)


def _smallest(values_max: int) -> type:
    """The smallest unsigned integer dtype holding ``0 .. values_max``."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if values_max <= np.iinfo(dt).max:
            return dt
    return np.int64


def _compact(score: np.ndarray, cell: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> Run:
    """Merge adjacent entries with equal ``(score, cell)``; counts in the smallest dtype."""
    n = score.size
    same = score[1:] == score[:-1] if n > 1 else np.zeros(0, dtype=bool)
    if not same.any():
        return Run(score, cell, pos, neg, unique=True)
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.logical_not(same, out=new[1:])
    new[1:] |= cell[1:] != cell[:-1]
    if not new.all():
        starts = np.flatnonzero(new)
        pos = np.add.reduceat(pos.astype(np.int64), starts)
        neg = np.add.reduceat(neg.astype(np.int64), starts)
        dt = _smallest(int(max(pos.max(), neg.max())))
        pos, neg = pos.astype(dt), neg.astype(dt)
        score, cell = score[starts], cell[starts]
    return Run(score, cell, pos, neg)


def rank_runs(rows: Rows, cell: np.ndarray, n_cells: int) -> list[Run]:
    """One :class:`Run` per one-vs-rest column of ``rows`` (binary: one)."""
    out = []
    cell_dt = _smallest(max(n_cells - 1, 0))
    for score, positive in rows.rank_columns():
        order = np.argsort(score)
        s = score[order]
        if s.size > 1 and bool(np.any(s[1:] == s[:-1])):  # ties: order them by cell so they can merge
            order = np.lexsort((cell, score))
            s = score[order]
        pos = positive[order].astype(np.uint8)
        out.append(_compact(s, cell[order].astype(cell_dt), pos, 1 - pos))
    return out


def merge_runs(runs: list[Run]) -> Run:
    """One run holding the entries of all ``runs``, in score order, adjacent equal entries merged.

    Only score order matters downstream (:func:`run_groups` merges a group's equal
    scores), so a stable sort on the scores alone does: it is a merge of sorted runs.
    Columns are gathered one at a time and ``runs`` is emptied as it goes, which keeps
    the peak near twice the entries' size.
    """
    if len(runs) == 1:
        return runs[0]
    score = np.concatenate([r.score for r in runs])
    order = np.argsort(score, kind="stable")
    cols = {}
    for key in ("cell", "pos", "neg"):
        cols[key] = np.concatenate([getattr(r, key) for r in runs])[order]
    runs.clear()
    del order
    score.sort(kind="stable")  # in place: the same order as the gather, without a second copy
    return _compact(score, cols["cell"], cols["pos"], cols["neg"])


def remap_cells(run: Run, table: np.ndarray) -> Run:
    """The run with cell ``c`` renamed ``table[c]`` (after a merge of accumulators)."""
    cell = table[run.cell].astype(_smallest(int(table.max(initial=0))))
    return Run(run.score, cell, run.pos, run.neg, run.unique)


def _small_codes(g: np.ndarray, n_groups: int) -> np.ndarray:
    """Group codes in the smallest unsigned dtype, so a stable argsort is a radix sort."""
    for dt in (np.uint8, np.uint16):
        if n_groups <= np.iinfo(dt).max + 1:
            return g.astype(dt)
    return g


def _by_group(g: np.ndarray, n_groups: int) -> np.ndarray | None:
    """Stable order by group (None: already ordered)."""
    if n_groups <= 1:
        return None
    return np.argsort(_small_codes(g, n_groups), kind="stable")


_AUC_BLOCK = 1 << 20  # entries per block of _auc_ap: its temporaries stay at a few tens of MB


def _auc_ap(g: np.ndarray, pos: np.ndarray, neg: np.ndarray, n_groups: int, *,
            want_ap: bool = True) -> dict[str, np.ndarray]:
    """U statistic, summed average-precision terms, positives and negatives per group.

    Entries are blocks of tied ``(group, score)``, in group order and ascending score;
    ``pos``/``neg`` are integer counts, ``g`` non-negative integer codes. Entries are
    taken in blocks of 2**20, carrying the running counts, so memory does not grow with
    the data. Sums are of integers (U in halves) below 2**53, so they are exact in
    float64.
    """
    P = np.zeros(n_groups)
    N = np.zeros(n_groups)
    for a, b in chunks(g.size, _AUC_BLOCK):
        P += np.bincount(g[a:b], pos[a:b], minlength=n_groups)
        N += np.bincount(g[a:b], neg[a:b], minlength=n_groups)
    # Groups are contiguous, so the counts before a group's first entry are cumulative totals.
    neg_base, pos_base = np.cumsum(N) - N, np.cumsum(P) - P
    U = np.zeros(n_groups)
    AP = np.zeros(n_groups)
    neg_seen = pos_seen = 0.0
    for a, b in chunks(g.size, _AUC_BLOCK):
        nb, pb = neg[a:b].astype(np.float64), pos[a:b].astype(np.float64)
        neg_before = np.cumsum(nb) - nb + neg_seen  # negatives before each entry, from the first group
        idx = np.flatnonzero(pb)
        gi, pi = g[a:b][idx], pb[idx]
        below = neg_before[idx] - neg_base[gi]  # negatives of the entry's group with a lower score
        U += np.bincount(gi, pi * (below + 0.5 * nb[idx]), minlength=n_groups)
        if want_ap:
            pos_before = (np.cumsum(pb) - pb + pos_seen)[idx] - pos_base[gi]
            tp_above = P[gi] - pos_before
            fp_above = N[gi] - below
            AP += np.bincount(gi, pi * (tp_above / (tp_above + fp_above)), minlength=n_groups)
        neg_seen += nb.sum()
        pos_seen += pb.sum()
    out = {"U": U, "P": P, "N": N}
    if want_ap:
        out["AP"] = AP
    return out


def run_groups(run: Run, cell_group: np.ndarray, n_groups: int, *, want_ap: bool = True,
               bins: Bins | None = None) -> dict[str, np.ndarray]:
    """Exact U, average-precision sum, positives and negatives per group of one slice.

    With ``bins``, also ``rho`` of shape ``(n_groups, bins.n)``: the fraction of the
    positive-negative pairs within each group and score bin that are ordered (ties one
    half), 0.5 where a bin has no such pair. A binned replicate uses it for the pairs it
    cannot order, so at unit weights it reproduces the exact U.
    """
    if cell_group.size and cell_group.min() < 0:  # cells in no group (a report of no rows)
        keep = cell_group[run.cell] >= 0
        run = Run(run.score[keep], run.cell[keep], run.pos[keep], run.neg[keep], run.unique)
    g = _small_codes(np.maximum(cell_group, 0), max(n_groups, 1))[run.cell]
    pos, neg = run.pos, run.neg
    need_score = bins is not None or not run.unique
    score = run.score if need_score else None
    order = _by_group(g, n_groups)
    if order is not None:
        g, pos, neg = g[order], pos[order], neg[order]
        if need_score:
            score = score[order]
        del order
    n = g.size
    if n > 1 and not run.unique:
        new = np.empty(n, dtype=bool)
        new[0] = True
        np.not_equal(score[1:], score[:-1], out=new[1:])
        new[1:] |= g[1:] != g[:-1]
        if not new.all():  # cells of one group with equal scores: one block
            starts = np.flatnonzero(new)
            pos = np.add.reduceat(pos.astype(np.int64), starts)
            neg = np.add.reduceat(neg.astype(np.int64), starts)
            g, score = g[starts], score[starts]
    out = _auc_ap(g, pos, neg, n_groups, want_ap=want_ap)
    if bins is not None:
        within = _auc_ap(g.astype(np.int64) * bins.n + bins(score), pos, neg, n_groups * bins.n, want_ap=False)
        pairs = within["P"] * within["N"]
        rho = np.where(pairs > 0, within["U"] / np.where(pairs > 0, pairs, 1.0), 0.5)
        out["rho"] = rho.reshape(n_groups, bins.n)
    return out


# -- binned rank statistics (bounded memory, and bootstrap replicates) -------------------------
@dataclass(frozen=True)
class Bins:
    """Score bins: equal width over [0, 1] (``width``), or given ``edges``.

    With edges, bin ``j`` holds scores in ``(edges[j-1], edges[j]]``, so equal scores
    always share a bin.
    """

    width: int | None = None
    edges: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.width) if self.width is not None else int(self.edges.size) + 1  # type: ignore[union-attr]

    def __call__(self, score: np.ndarray) -> np.ndarray:
        if self.width is not None:
            return np.clip((score * self.width).astype(np.int64), 0, self.width - 1)
        return np.searchsorted(self.edges, score, side="left")

    @classmethod
    def quantiles(cls, run: Run, n_bins: int) -> Bins:
        """About ``n_bins`` bins holding equal numbers of rows of ``run`` (ties kept together)."""
        counts = run.pos.astype(np.int64) + run.neg
        cum = np.cumsum(counts)
        if cum.size == 0:
            return cls(edges=np.zeros(0))
        targets = np.arange(1, n_bins) * (cum[-1] / n_bins)
        idx = np.minimum(np.searchsorted(cum, targets, side="left"), cum.size - 1)
        return cls(edges=np.unique(run.score[idx]))


def score_bin(score: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each score over [0, 1] (scores outside are clipped)."""
    return Bins(width=bins)(score)


def binned_counts(rows: Rows, cell: np.ndarray, n_cells: int, bins: int) -> np.ndarray:
    """``(n_cells, n_columns, bins, 2)`` counts of negatives/positives per score bin."""
    cols = rows.rank_columns()
    out = np.zeros((n_cells, len(cols), bins, 2), dtype=np.int64)
    for j, (score, positive) in enumerate(cols):
        idx = (cell * bins + score_bin(score, bins)) * 2 + positive
        out[:, j] = np.bincount(idx, minlength=n_cells * bins * 2).reshape(n_cells, bins, 2)
    return out


def binned_groups(neg: np.ndarray, pos: np.ndarray, rho: np.ndarray | None = None, *,
                  want_ap: bool = True) -> dict[str, np.ndarray]:
    """U, AP sums, P, N and the AUC error bound per group from binned weights.

    Parameters
    ----------
    neg, pos : numpy.ndarray of shape (R, G, bins)
        Weight (or count) of negatives and positives per replicate, group and score bin.
    rho : numpy.ndarray of shape (G, bins) or None
        Pairs in different bins are ordered by their bins; pairs within a bin count
        ``rho`` each (the ordered fraction of the exact data, from :func:`run_groups`),
        or one half without it, and then the true U lies within ``0.5 * sum_b pos_b
        neg_b`` of the binned one, returned as ``bound`` (AUC units).
    want_ap : bool
        Average precision treats a bin as one tied score.

    Returns
    -------
    dict of numpy.ndarray of shape (G, R)
    """
    P, N = pos.sum(axis=2), neg.sum(axis=2)
    below_neg = np.cumsum(neg, axis=2)
    below_neg -= neg
    pairs = pos * neg
    U = np.einsum("rgb,rgb->rg", pos, below_neg)
    U += np.einsum("rgb,gb->rg", pairs, rho) if rho is not None else 0.5 * pairs.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"U": U.T, "P": P.T, "N": N.T, "bound": (0.5 * pairs.sum(axis=2) / (P * N)).T}
        if want_ap:
            below_pos = np.cumsum(pos, axis=2)
            below_pos -= pos
            tp_above = P[:, :, None] - below_pos
            fp_above = N[:, :, None] - below_neg
            terms = np.where(pos > 0, pos * tp_above / (tp_above + fp_above), 0.0)
            out["AP"] = terms.sum(axis=2).T
    return out


def split_bins(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(neg, pos)`` views of shape ``(R, G, bins)`` of counts ``(G, bins, 2[, R])``."""
    c = counts.astype(np.float64, copy=False)
    if c.ndim == 3:
        c = c[..., None]
    return c[:, :, 0].transpose(2, 0, 1), c[:, :, 1].transpose(2, 0, 1)


def binned_point(counts: np.ndarray, rho: np.ndarray | None = None, *, want_ap: bool = True) -> dict[str, np.ndarray]:
    """:func:`binned_groups` of point counts ``(G, bins, 2)``; arrays of shape ``(G,)``."""
    neg, pos = split_bins(counts)
    return {k: v[:, 0] for k, v in binned_groups(neg, pos, rho, want_ap=want_ap).items()}


# -- metrics from statistics -----------------------------------------------------------------
def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    return _div(total, finite.sum(axis=axis))


def _binary_cells(s: dict[str, np.ndarray], threshold: float | None, plan: Plan) -> tuple[np.ndarray, ...]:
    cm = s["cm"].astype(np.float64)
    neg, pos = cm[:, 0, 0] + cm[:, 0, 1], cm[:, 1, 0] + cm[:, 1, 1]
    if threshold is None:
        fp, tp = cm[:, 0, 1], cm[:, 1, 1]
    else:
        j = plan.thresholds.index(threshold)
        thr = s["thr"].astype(np.float64)
        fp, tp = thr[:, 0, j], thr[:, 1, j]
    return neg - fp, fp, pos - tp, tp


def _macro(s: dict[str, np.ndarray], which: str) -> np.ndarray:
    tp, true, pred = (s[k].astype(np.float64) for k in ("tp", "true", "predc"))
    present = (true + pred) > 0
    if which == "precision":
        per = _div(tp, pred)
    elif which == "recall":
        per = _div(tp, true)
    else:
        per = _div(2.0 * tp, true + pred)
    return _nanmean(np.where(present, per, np.nan), axis=1)


def finalize(plan: Plan, s: dict[str, np.ndarray], r: list[dict[str, np.ndarray]] | None) -> dict[str, np.ndarray]:
    """Metric values per group (``(G,)``, or ``(G, R)`` for replicates) from group sums.

    Parameters
    ----------
    plan : Plan
    s : dict
        Group sums (:func:`aggregate`).
    r : list of dict or None
        Rank statistics per one-vs-rest column (:func:`run_groups`), when AUCs are asked.
    """
    n = s["n"].astype(np.float64)
    out: dict[str, np.ndarray] = {}
    task = plan.task
    if task == "multiclass" and "tp" not in s:
        cm = s["cm"]
        k = plan.n_classes
        s = {**s, "tp": cm[:, np.arange(k), np.arange(k)], "true": cm.sum(axis=2), "predc": cm.sum(axis=1)}
    for name, base, t in plan.metrics:
        if base == "count":
            v = n
        elif task == "regression":
            if base == "rmse":
                v = np.sqrt(_div(s["sse"], n))
            elif base == "mae":
                v = _div(s["sae"], n)
            else:  # r2
                with np.errstate(invalid="ignore", divide="ignore"):
                    sstot = s["s2"] - s["s1"] ** 2 / np.where(n > 0, n, 1.0)
                v = 1.0 - _div(s["sse"], sstot)
                if "ymin" in s:  # constant target: undefined
                    v = np.where(s["ymax"] > s["ymin"], v, np.nan)
                v = np.where(sstot > 0, v, np.nan)
        elif base == "log_loss":
            v = _div(s["ll"], n)
        elif base == "brier":
            v = _div(s["brier"], n)
        elif base == "ece":
            v = _div(np.abs(s["ece"]).sum(axis=1), n)
        elif base in _RANK:
            v = _rank_metric(plan, base, r or [], s)
        elif task == "multiclass":
            if base == "accuracy":
                v = _div(s["tp"].sum(axis=1), n)
            else:
                v = _macro(s, base)
        else:
            v = _binary_metric(base, n, *_binary_cells(s, t, plan))
        out[name] = np.asarray(v, dtype=np.float64)
    return out


def _binary_metric(base: str, n: np.ndarray, tn: np.ndarray, fp: np.ndarray, fn: np.ndarray,
                   tp: np.ndarray) -> np.ndarray:
    if base == "accuracy":
        return _div(tp + tn, n)
    if base == "precision":
        return _div(tp, tp + fp)
    if base in ("recall", "tpr"):
        return _div(tp, tp + fn)
    if base == "f1":
        return _div(2.0 * tp, 2.0 * tp + fp + fn)
    if base == "fpr":
        return _div(fp, fp + tn)
    if base == "tnr":
        return _div(tn, tn + fp)
    if base == "fnr":
        return _div(fn, fn + tp)
    if base == "selection_rate":
        return _div(tp + fp, n)
    raise ValueError(f"No binary metric {base!r}.")


def _rank_metric(plan: Plan, base: str, r: list[dict[str, np.ndarray]], s: dict[str, np.ndarray]) -> np.ndarray:
    if base == "auc":
        per = [_div(c["U"], c["P"] * c["N"]) for c in r]
    else:
        per = [_div(c["AP"], c["P"]) for c in r]
    if plan.task == "binary":
        return per[0]
    return _nanmean(np.stack(per, axis=1), axis=1)


# -- Poisson bootstrap -----------------------------------------------------------------------
_BLOCK = 1 << 16  # rows per Philox stream


def _poisson_table(bits: int = 16) -> np.ndarray:
    """Inverse CDF of Poisson(1) at the midpoints of ``2**bits`` equal steps."""
    k = np.arange(32)
    pmf = np.exp(-1.0) / np.array([math.factorial(int(i)) for i in k], dtype=np.float64)
    cdf = np.cumsum(pmf)
    u = (np.arange(1 << bits) + 0.5) / (1 << bits)
    return np.searchsorted(cdf, u, side="right").astype(np.uint8)


_POISSON = _poisson_table()


def poisson_weights(seed: int, start: int, stop: int, r0: int, r1: int) -> np.ndarray:
    """Poisson(1) weights of rows ``start..stop-1`` in replicates ``r0..r1-1``.

    Returns
    -------
    numpy.ndarray of shape (r1 - r0, stop - start), dtype uint8
        The weight of row ``i`` in replicate ``r`` depends only on ``(seed, i, r)``:
        block ``b`` of 65,536 rows and replicate ``r`` read their own stretch of one
        PCG64DXSM stream (reached with ``advance``), so chunks of any size give the same
        weights. A 16-bit uniform picks the weight through the inverse CDF (Poisson
        probabilities resolved to 2**-16).
    """
    m = stop - start
    reps = r1 - r0
    if m <= 0 or reps <= 0:
        return np.zeros((max(reps, 0), max(m, 0)), dtype=np.uint8)
    b0, b1 = start // _BLOCK, (stop - 1) // _BLOCK + 1
    out = np.empty((reps, (b1 - b0) * _BLOCK), dtype=np.uint8)
    per_rep = _BLOCK // 4  # 64-bit draws per block and replicate (four 16-bit uniforms each)
    base = np.random.PCG64DXSM(np.random.SeedSequence(seed))
    for b in range(b0, b1):
        gen = np.random.PCG64DXSM()
        gen.state = base.state
        gen.advance(((b << 24) + r0) * per_rep)
        bits = gen.random_raw(reps * per_rep).view(np.uint16).reshape(reps, _BLOCK)
        out[:, (b - b0) * _BLOCK : (b - b0 + 1) * _BLOCK] = _POISSON[bits]
    lo = start - b0 * _BLOCK
    return out[:, lo : lo + m]


def _design(rows: Rows, idx: np.ndarray, K: np.ndarray | None, cell: np.ndarray) -> np.ndarray:
    """Per-row terms of the sum statistics, one column each, for rows ``idx``."""
    plan = rows.plan
    m = idx.size
    cols: list[np.ndarray] = [np.ones(m)]
    if plan.task == "regression":
        y = rows.y[idx]
        e = rows.pred_value[idx] - y
        d = y - K[cell[idx]]
        cols += [d, d * d, np.abs(e), e * e]
        return np.column_stack(cols)
    y, pred = rows.y[idx], rows.pred[idx]
    k = plan.n_classes
    if plan.task == "binary":
        yf, pf = y.astype(np.float64), pred.astype(np.float64)
        cols += [yf, pf, yf * pf]
        if plan.thresholds:
            above = np.searchsorted(np.asarray(plan.thresholds), rows.score1[idx], side="left")
            a = (above[:, None] > np.arange(len(plan.thresholds))[None, :]).astype(np.float64)
            cols += list(a.T) + list((a * yf[:, None]).T)
    else:
        eye = np.eye(k)
        oy, op = eye[y], eye[pred]
        cols += list(oy.T) + list(op.T) + list((oy * (y == pred)[:, None]).T)
    if plan.uses("log_loss"):
        cols.append(_sub(rows, "ll", rows.log_loss_terms)[idx])
    if plan.uses("brier"):
        cols.append(_sub(rows, "brier", rows.brier_terms)[idx])
    if plan.uses("ece"):
        b, gap = _sub(rows, "ece", rows.ece_terms)
        onehot = np.zeros((m, plan.ece_bins))
        onehot[np.arange(m), b[idx]] = gap[idx]
        cols += list(onehot.T)
    return np.column_stack(cols)


def _sub(rows: Rows, name: str, make: Any) -> Any:
    """Per-row terms, computed once per :class:`Rows`."""
    cache = rows.__dict__.setdefault("_terms", {})
    if name not in cache:
        cache[name] = make()
    return cache[name]


def _unpack(plan: Plan, acc: np.ndarray) -> dict[str, np.ndarray]:
    """Sum statistics from the ``(C, R, S)`` sums of :func:`_design` columns (trailing R)."""
    a = np.moveaxis(acc, 1, 2)  # (C, S, R)
    out: dict[str, np.ndarray] = {"n": a[:, 0]}
    j = 1
    if plan.task == "regression":
        out.update(s1=a[:, 1], s2=a[:, 2], sae=a[:, 3], sse=a[:, 4])
        return out
    k = plan.n_classes
    if plan.task == "binary":
        y, p, yp = a[:, 1], a[:, 2], a[:, 3]
        n = a[:, 0]
        out["cm"] = np.stack([np.stack([n - y - p + yp, p - yp], axis=1), np.stack([y - yp, yp], axis=1)], axis=1)
        j = 4
        if plan.thresholds:
            T = len(plan.thresholds)
            above, yabove = a[:, j : j + T], a[:, j + T : j + 2 * T]
            out["thr"] = np.stack([above - yabove, yabove], axis=1)
            j += 2 * T
    else:
        out.update(true=a[:, j : j + k], predc=a[:, j + k : j + 2 * k], tp=a[:, j + 2 * k : j + 3 * k])
        j += 3 * k
    for key in ("ll", "brier"):
        if plan.uses("log_loss" if key == "ll" else "brier"):
            out[key] = a[:, j]
            j += 1
    if plan.uses("ece"):
        out["ece"] = a[:, j : j + plan.ece_bins]
    return out


_SEGMENT_ROWS = 1 << 16
#: Per-row terms of replicate sums are kept between replicate chunks up to this size.
_DESIGN_CACHE_BYTES = 256 << 20


def replicate_cell_sums(
    rows: Rows, cell: np.ndarray, n_cells: int, W: np.ndarray, K: np.ndarray | None = None,
    order: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Sum statistics per cell under replicate weights ``W`` of shape ``(R, n)``.

    ``order`` lists the rows with each cell's rows together, and ``W[:, p]`` is the
    weight of row ``order[p]``; without it, rows are ordered by cell here (once per
    ``rows``) and ``W`` is in row order. The ordered rows are taken in blocks of at most
    65,536; within a block, each cell's rows add ``W_seg @ X_seg`` (a BLAS product of
    weights and per-row terms), or, when the block's cells are many and small,
    ``np.add.reduceat`` over the cell boundaries column by column. The per-row terms are
    kept between calls (up to 256 MB). Returns arrays with a trailing replicate axis.
    """
    R = W.shape[0]
    if order is None:
        order = cell_order(rows, cell, n_cells)
        W = W[:, order]
    sorted_cells = cell[order]
    S = _design(rows, np.zeros(0, dtype=np.int64), K, cell).shape[1]
    acc = np.zeros((n_cells, R, S))  # float64: a block's float32 products are exact, their total need not be
    # The per-row terms of a block are the same for every replicate chunk: keep them (on the rows,
    # for this order) when they fit.
    cache = rows.__dict__.setdefault("_design_cache", {})
    if cache.get("order") is not order:
        cache.clear()
        cache["order"] = order
    keep = order.size * S * 8 <= _DESIGN_CACHE_BYTES
    for a, b in chunks(order.size, _SEGMENT_ROWS):
        idx, cs = order[a:b], sorted_cells[a:b]
        starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
        X = cache.get(a) if keep else None
        if X is None:
            X = _design(rows, idx, K, cell)
            if _indicators(rows.plan):  # 0/1 terms: float32 sums of integers stay exact below 2**24
                X = X.astype(np.float32)
            if keep:
                cache[a] = X
        Wb = W[:, a:b].astype(X.dtype)
        if starts.size <= max(16, (b - a) // 64):  # segments of 64+ rows on average: one product each
            ends = np.r_[starts[1:], idx.size]
            for lo, hi in zip(starts, ends):
                acc[cs[lo]] += Wb[:, lo:hi] @ X[lo:hi]
        else:
            for j in range(S):
                acc[cs[starts], :, j] += np.add.reduceat(Wb * X[:, j], starts, axis=1).T
    return _unpack(rows.plan, acc)


def cell_order(rows: Rows, cell: np.ndarray, n_cells: int) -> np.ndarray:
    """Rows ordered by cell (stable), computed once per :class:`Rows`."""
    cache = rows.__dict__.setdefault("_cell_order", {})
    if n_cells not in cache:
        cache.clear()
        cache[n_cells] = np.argsort(_small_codes(cell, n_cells), kind="stable")
    return cache[n_cells]


def _indicators(plan: Plan) -> bool:
    """True when every per-row term of the replicate sums is 0 or 1 (counts only)."""
    return plan.task != "regression" and not plan.uses("log_loss", "brier", "ece")


#: Bytes of the cumulative sums of :func:`segment_sums` held at once.
_CUMSUM_BYTES = 64 << 20


def segment_sums(W: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of ``W`` (``(R, n)``) over the column segments starting at ``starts``: ``(R, len(starts))``.

    One cumulative sum per replicate (int32 while it cannot overflow), taken a few
    replicates at a time so its temporary stays under 64 MB.
    """
    R, n = W.shape
    dt = np.int32 if n * 255 < 2**31 - 1 else np.int64
    ends = np.r_[starts[1:], n]
    out = np.empty((R, starts.size))
    step = max(1, _CUMSUM_BYTES // ((n + 1) * np.dtype(dt).itemsize))
    for a, b in chunks(R, step):
        c = np.zeros((b - a, n + 1), dtype=dt)
        np.cumsum(W[a:b], axis=1, dtype=dt, out=c[:, 1:])
        out[a:b] = c[:, ends] - c[:, starts]
    return out


def replicate_blocks(rows: Rows, cell: np.ndarray, n_cells: int, W: np.ndarray, K: np.ndarray | None,
                     bins: Bins | None, into: np.ndarray | None, r0: int) -> dict[str, np.ndarray]:
    """Replicate sums of a chunk whose weights ``W`` (``(R, n)``) are in row order (streaming).

    Rows are taken in blocks of 65,536 in their own order; each block is sorted locally
    by (cell, score bin, label), so gathering its weights stays within a cache-sized
    window, and that one order serves both the sum statistics (a BLAS product per cell
    segment) and, with ``bins``, the AUC weights per (cell, bin, label), which are added
    into ``into`` (``(cells, columns, bins, 2, R_total)``, replicates ``r0 ..``).
    Returns the sum statistics with a trailing replicate axis.
    """
    R, n = W.shape
    plan = rows.plan
    cols = rows.rank_columns() if bins is not None else []
    S = _design(rows, np.zeros(0, dtype=np.int64), K, cell).shape[1]
    acc = np.zeros((n_cells, R, S))
    flat = into.reshape(-1, into.shape[-1]) if into is not None else None
    dtype = np.float32 if _indicators(plan) else np.float64
    for a, b in chunks(n, _SEGMENT_ROWS):
        c = cell[a:b]
        if cols:
            score, positive = cols[0]
            key = (c * bins.n + bins(score[a:b])) * 2 + positive[a:b]
            local = np.argsort(key, kind="stable")
        else:
            local = np.argsort(_small_codes(c, n_cells), kind="stable")
        Wb = W[:, a:b][:, local]
        cs = c[local]
        starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
        ends = np.r_[starts[1:], local.size]
        X = _design(rows, a + local, K, cell).astype(dtype, copy=False)
        Wf = Wb.astype(dtype)
        for lo, hi in zip(starts, ends):
            acc[cs[lo]] += Wf[:, lo:hi] @ X[lo:hi]
        del Wf
        for j, (score, positive) in enumerate(cols):
            if j == 0:
                ks, Wj = key[local], Wb
            else:  # another one-vs-rest column: its own local order
                kj = (c * bins.n + bins(score[a:b])) * 2 + positive[a:b]
                lj = np.argsort(kj, kind="stable")
                ks, Wj = kj[lj], W[:, a:b][:, lj]
            seg = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
            k = ks[seg]
            target = ((k // (2 * bins.n)) * len(cols) + j) * (2 * bins.n) + k % (2 * bins.n)
            flat[target, r0 : r0 + R] += segment_sums(Wj, seg).T
    return _unpack(plan, acc)


def percentile_interval(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over the last axis, ignoring NaN replicates."""
    alpha = 1.0 - confidence
    finite = np.isfinite(values)
    v = np.where(finite, values, np.nan)
    lo = np.full(values.shape[:-1], np.nan)
    hi = np.full(values.shape[:-1], np.nan)
    ok = finite.any(axis=-1)
    if ok.any():
        q = np.nanpercentile(v[ok], [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=-1)
        lo[ok], hi[ok] = q[0], q[1]
    return lo, hi


def chunks(total: int, size: int) -> Iterable[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of at most ``size``."""
    for a in range(0, total, size):
        yield a, min(a + size, total)
