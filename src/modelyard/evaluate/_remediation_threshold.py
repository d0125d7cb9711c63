"""Per-group threshold optimization (Hardt, Price & Srebro, 2016), exact and vectorized.

Every classifier derived from a score by a per-group (randomized) threshold is a
point of that group's ROC plane: ``(FPR, TPR)``. The points reachable by
randomizing between thresholds (and their negations) are the convex hull of the
group's ROC points and their reflections ``(1 - FPR, 1 - TPR)``. Accuracy, selection
rate, TPR and FPR are all *linear* in ``(FPR, TPR)``, so "maximize accuracy subject to
demographic parity / equalized odds within a tolerance" is a small linear program over
one point per group, with the hull's edges as constraints. It is solved exactly
(HiGHS through :func:`scipy.optimize.linprog`), and each group's optimal point is then
realized as a mixture of at most four threshold classifiers:

* the point ``(f, U(f))`` on the upper hull at the target FPR, a mixture of two
  adjacent hull vertices (two thresholds, as in the paper), and
* when the target lies strictly inside the hull (the better group of an equalized-odds
  constraint gives up true positives), the point ``(f, L(f))`` on the lower hull, mixed
  in vertically so that the FPR is unchanged.

The result is a lookup table per group: the probability of predicting positive for a
score falling between two consecutive distinct scores seen while fitting. Building the
ROC points is one sort and one cumulative sum per group, so fitting takes milliseconds
for tens of thousands of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelyard.errors import DataError

__all__ = ["CONSTRAINTS", "ThresholdOptimizer"]

#: Constraints the optimizer accepts; the tolerance bounds the largest gap between groups.
CONSTRAINTS = ("demographic_parity", "equalized_odds", "true_positive_rate_parity", "false_positive_rate_parity")


@dataclass
class _GroupRule:
    """One group's derived predictor: ``p_positive[searchsorted(edges, score, 'right')]``."""

    edges: np.ndarray  # (m,) distinct fitting scores, ascending
    p_positive: np.ndarray  # (m + 1,) probability of a positive prediction per bucket
    fpr: float  # on the fitting rows, in expectation
    tpr: float
    selection_rate: float


def _roc_points(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores ``v`` (ascending) and the ROC point of every threshold classifier ``score >= v_j``.

    Returns ``v`` of shape (m,), and ``fpr``, ``tpr`` of shape (m + 1,): entry ``j < m`` is the
    classifier ``score >= v_j`` (``j = 0`` predicts every fitting row positive) and entry
    ``m`` predicts nothing positive.
    """
    v, inverse = np.unique(scores, return_inverse=True)  # (m,), (n,)
    m = len(v)
    pos = np.bincount(inverse, weights=(y == 1).astype(np.float64), minlength=m)  # (m,)
    neg = np.bincount(inverse, weights=(y == 0).astype(np.float64), minlength=m)
    n_pos, n_neg = pos.sum(), neg.sum()
    # Rows with score >= v_j: suffix sums; append 0 for "nothing positive".
    tp = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]])  # (m + 1,)
    fp = np.concatenate([np.cumsum(neg[::-1])[::-1], [0.0]])
    return v, fp / n_neg, tp / n_pos


def _hull_candidates(f: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Indices of the convex hull's vertices (Qhull, in C), a superset of the upper hull's.

    Prunes a million ROC points to a few hundred before the exact chain below; falls
    back to every point when Qhull refuses a degenerate (collinear) set.
    """
    from scipy.spatial import ConvexHull, QhullError

    if len(f) < 64:
        return np.arange(len(f))
    try:
        return np.sort(ConvexHull(np.column_stack([f, t])).vertices)
    except (QhullError, ValueError):
        return np.arange(len(f))


def _upper_hull(f: np.ndarray, t: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Indices of the upper convex hull of points ``(f, t)``, left to right (monotone chain)."""
    cand = np.arange(len(f)) if candidates is None else candidates
    order = cand[np.lexsort((-t[cand], f[cand]))]  # by f, then the highest t first
    hull: list[int] = []
    for i in order:
        if hull and f[hull[-1]] == f[i]:
            continue  # same f: the first seen has the highest t
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b if it lies on or below the segment a -> i
            cross = (f[b] - f[a]) * (t[i] - t[a]) - (t[b] - t[a]) * (f[i] - f[a])
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(int(i))
    return np.array(hull, dtype=np.int64)


class _GroupHull:
    """The feasible ROC region of one group and how to realize any point of it."""

    def __init__(self, scores: np.ndarray, y: np.ndarray) -> None:
        self.edges, fpr, tpr = _roc_points(scores, y)
        m1 = len(fpr)  # m + 1 threshold classifiers
        # Candidate vertices: every threshold classifier and its negation.
        f = np.concatenate([fpr, 1.0 - fpr])
        t = np.concatenate([tpr, 1.0 - tpr])
        idx = _upper_hull(f, t, _hull_candidates(f, t))
        self.uf, self.ut = f[idx], t[idx]  # upper hull, f strictly increasing, from f=0 to f=1
        self.cls = idx % m1  # threshold classifier index 0..m
        self.neg = idx >= m1  # whether it is the negation

    def upper(self, f: float) -> float:
        return float(np.interp(f, self.uf, self.ut))

    def lower(self, f: float) -> float:
        # The point set is symmetric under (f, t) -> (1 - f, 1 - t), so the lower hull is the reflected upper one.
        return 1.0 - self.upper(1.0 - f)

    def half_planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows ``(a, b, c)`` with ``a f + b t <= c`` describing the hull (upper and lower edges)."""
        df, dt = np.diff(self.uf), np.diff(self.ut)  # df > 0
        slope = dt / df
        # upper edge: t <= t_i + slope (f - f_i)  ->  -slope f + t <= t_i - slope f_i
        a_up, c_up = -slope, self.ut[:-1] - slope * self.uf[:-1]
        # lower edge (reflection): t >= 1 - t_i - slope (1 - f - f_i)  ->  -slope f - t <= -(1 - t_i - slope (1 - f_i))
        a_lo = -slope
        c_lo = -(1.0 - self.ut[:-1] - slope * (1.0 - self.uf[:-1]))
        a = np.concatenate([a_up, a_lo])
        b = np.concatenate([np.ones_like(slope), -np.ones_like(slope)])
        c = np.concatenate([c_up, c_lo])
        return a, b, c

    def _mix_on_upper(self, f: float) -> np.ndarray:
        """p_positive per bucket of the upper-hull point at FPR ``f`` (two adjacent vertices mixed)."""
        k = int(np.clip(np.searchsorted(self.uf, f, side="right") - 1, 0, len(self.uf) - 2))
        f0, f1 = self.uf[k], self.uf[k + 1]
        w1 = float(np.clip((f - f0) / (f1 - f0), 0.0, 1.0))
        return (1.0 - w1) * self._vertex_table(k) + w1 * self._vertex_table(k + 1)

    def _vertex_table(self, k: int) -> np.ndarray:
        m = len(self.edges)
        j = int(self.cls[k])
        # Threshold classifier j predicts positive iff score >= v_j, i.e. for buckets b >= j + 1
        # (bucket b of a score: how many distinct fitting scores are <= it).
        table = (np.arange(m + 1) >= j + 1).astype(np.float64)  # (m + 1,)
        return 1.0 - table if self.neg[k] else table

    def realize(self, f: float, t: float) -> np.ndarray:
        """p_positive per bucket of a randomized classifier at ROC point ``(f, t)`` of this hull."""
        up = self._mix_on_upper(f)
        hi, lo = self.upper(f), self.lower(f)
        if hi - lo <= 1e-12:
            return up
        lam = float(np.clip((t - lo) / (hi - lo), 0.0, 1.0))
        if lam >= 1.0:
            return up
        # (f, L(f)) is the reflection of the upper point at 1 - f: the negated mixture.
        down = 1.0 - self._mix_on_upper(1.0 - f)
        return lam * up + (1.0 - lam) * down


class ThresholdOptimizer:
    """Per-group randomized thresholds that maximize accuracy under a fairness constraint.

    Hardt, Price & Srebro (2016), "Equality of Opportunity in Supervised Learning":
    the derived predictor uses the score and the group only. Solved exactly as a linear
    program over one ROC point per group (see the module docstring).

    Parameters
    ----------
    constraint : str, default="demographic_parity"
        ``demographic_parity`` (equal selection rates), ``equalized_odds`` (equal TPR and
        FPR), ``true_positive_rate_parity`` (equal opportunity) or
        ``false_positive_rate_parity``.
    tolerance : float, default=0.0
        The largest allowed gap between groups on the fitting rows (in expectation over
        the randomization): ``max_g r_g - min_g r_g <= tolerance`` for each constrained
        rate, which is how fairlearn's differences are defined.

    Attributes
    ----------
    groups_ : ndarray
        The groups seen in :meth:`fit`, sorted.
    rules_ : dict
        Per group: the bucket edges, the probability of a positive per bucket, and the
        expected FPR, TPR and selection rate on the fitting rows.
    accuracy_ : float
        Expected accuracy on the fitting rows.
    """

    def __init__(self, constraint: str = "demographic_parity", *, tolerance: float = 0.0) -> None:
        if constraint not in CONSTRAINTS:
            raise ValueError(f"Unknown constraint {constraint!r}; use one of {list(CONSTRAINTS)}.")
        if not isinstance(tolerance, (int, float)) or not 0.0 <= tolerance < 1.0:
            raise ValueError(f"tolerance must be a number in [0, 1); got {tolerance!r}.")
        self.constraint = constraint
        self.tolerance = float(tolerance)

    def fit(self, scores: np.ndarray, y: np.ndarray, groups: np.ndarray) -> ThresholdOptimizer:
        """Choose each group's randomized threshold on held-out ``scores`` (higher = more positive)."""
        from scipy.optimize import linprog

        scores, y, groups = _check_inputs(scores, groups, y)
        self.groups_ = np.unique(groups)
        if len(self.groups_) < 2:
            raise DataError(f"Threshold optimization needs at least two groups; got only {self.groups_.tolist()}.")
        hulls, n_pos, n_neg = [], [], []
        for g in self.groups_:
            mask = groups == g
            yg = y[mask]
            if yg.min() == yg.max():
                raise DataError(
                    f"Group {g!r} has only label {int(yg[0])} in the fitting rows; equalized rates need both labels "
                    "in every group. Use a larger validation split or merge small groups."
                )
            hulls.append(_GroupHull(scores[mask], yg))
            n_pos.append(float((yg == 1).sum()))
            n_neg.append(float((yg == 0).sum()))
        n_pos_a, n_neg_a = np.array(n_pos), np.array(n_neg)
        n, k = float(len(y)), len(hulls)
        # Variables: f_0, t_0, ..., f_{k-1}, t_{k-1}, then a common lower bound per constrained rate.
        constrained = {
            "demographic_parity": ("rate",),
            "equalized_odds": ("f", "t"),
            "true_positive_rate_parity": ("t",),
            "false_positive_rate_parity": ("f",),
        }[self.constraint]
        n_var = 2 * k + len(constrained)
        # maximize sum_g (P_g t_g + N_g (1 - f_g)) / n  ->  minimize sum_g (N_g f_g - P_g t_g)
        cost = np.zeros(n_var)
        cost[0 : 2 * k : 2] = n_neg_a / n
        cost[1 : 2 * k : 2] = -n_pos_a / n
        rows, rhs = [], []
        for g, hull in enumerate(hulls):
            a, b, c = hull.half_planes()
            block = np.zeros((len(c), n_var))
            block[:, 2 * g], block[:, 2 * g + 1] = a, b
            rows.append(block)
            rhs.append(c)
        for j, rate in enumerate(constrained):
            for g in range(k):
                coef = np.zeros(n_var)
                if rate == "rate":
                    size = n_pos_a[g] + n_neg_a[g]
                    coef[2 * g], coef[2 * g + 1] = n_neg_a[g] / size, n_pos_a[g] / size
                else:
                    coef[2 * g + (0 if rate == "f" else 1)] = 1.0
                lower = np.zeros(n_var)
                lower[2 * k + j] = 1.0
                rows.append((lower - coef)[None])  # r_lo - rate_g <= 0
                rhs.append(np.zeros(1))
                rows.append((coef - lower)[None])  # rate_g - r_lo <= tolerance
                rhs.append(np.array([self.tolerance]))
        result = linprog(
            cost, A_ub=np.vstack(rows), b_ub=np.concatenate(rhs), bounds=[(0.0, 1.0)] * n_var, method="highs"
        )
        if not result.success:  # pragma: no cover - the constant classifiers are always feasible
            raise RuntimeError(f"The threshold linear program failed: {result.message}")
        x = result.x
        self.rules_: dict[object, _GroupRule] = {}
        correct = 0.0
        for g, hull in enumerate(hulls):
            f, t = float(np.clip(x[2 * g], 0, 1)), float(np.clip(x[2 * g + 1], 0, 1))
            table = hull.realize(f, t)
            size = n_pos_a[g] + n_neg_a[g]
            self.rules_[_scalar(self.groups_[g])] = _GroupRule(
                hull.edges, table, f, t, (n_pos_a[g] * t + n_neg_a[g] * f) / size
            )
            correct += n_pos_a[g] * t + n_neg_a[g] * (1.0 - f)
        self.accuracy_ = correct / n
        return self

    def predict_proba(self, scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Probability of a positive prediction per row (the randomization's expectation), shape (n,)."""
        if not hasattr(self, "rules_"):
            raise RuntimeError("This ThresholdOptimizer is not fitted; call fit(scores, y, groups) first.")
        scores, groups = _check_inputs(scores, groups)
        out = np.empty(len(scores), dtype=np.float64)
        unknown = sorted({str(g) for g in np.unique(groups)} - {str(g) for g in self.rules_})
        if unknown:
            raise DataError(
                f"Groups {unknown} were not seen when fitting the thresholds (known: {[str(g) for g in self.rules_]}); "
                "fit on rows that contain every group."
            )
        for g, rule in self.rules_.items():
            mask = groups == g
            out[mask] = rule.p_positive[np.searchsorted(rule.edges, scores[mask], side="right")]
        return out

    def predict(self, scores: np.ndarray, groups: np.ndarray, *, random_state: int | None = 0) -> np.ndarray:
        """Randomized 0/1 decisions, seeded by ``random_state``, shape (n,) int64."""
        p = self.predict_proba(scores, groups)
        draw = np.random.default_rng(random_state).random(len(p))
        return (draw < p).astype(np.int64)


def _scalar(value: object) -> object:
    """A numpy scalar as its Python value (a str stays a str)."""
    return value.item() if isinstance(value, np.generic) else value


def _check_inputs(scores: np.ndarray, groups: np.ndarray, y: np.ndarray | None = None) -> tuple:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != len(scores):
        raise ValueError(f"groups must be 1-D with one value per score; got shape {groups.shape} for {len(scores)} scores.")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores hold {int((~np.isfinite(scores)).sum())} NaN or infinite values; predict them first.")
    if y is None:
        return scores, groups
    y = np.asarray(y).reshape(-1)
    if len(y) != len(scores):
        raise ValueError(f"y has {len(y)} labels but there are {len(scores)} scores; pass one label per row.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"y must hold binary labels 0/1; got values {np.unique(y)[:5].tolist()}.")
    return scores, y.astype(np.int64), groups
