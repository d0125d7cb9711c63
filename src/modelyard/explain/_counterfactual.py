"""What-if and counterfactual explanations: edit a row and re-predict; find the smallest change that flips it.

A counterfactual for row ``x`` is a row ``x'`` that differs only in mutable features and
that the model assigns to another class (Wachter, Mittelstadt & Russell, 2017). Its size
is the distance used by Wachter et al.: for a numeric feature ``|x'_j - x_j| / MAD_j``
(median absolute deviation over reference rows, so units do not matter and a robust
spread is one unit), and 1 for a changed category.

The search is model-agnostic and batched (any Predictor, including ONNX and trees):

1. **single changes**: for every mutable feature, every candidate value (numeric:
   the reference rows' quantiles; categorical: every category) in one ``predict`` call;
2. **pairs** (and up to ``max_features`` changes) by a beam over the best partial moves
   when no single change flips the prediction;
3. **refinement**: each numeric change of a flipping row is shrunk by bisection toward
   the original value while the prediction stays flipped, so the change ends within
   ``tol`` MAD units of the decision boundary along that direction.

Returned counterfactuals are ordered by distance, then by the number of changed features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Counterfactual", "counterfactuals", "what_if"]


def _row(X: Any, row: Any) -> pd.DataFrame:
    if isinstance(row, pd.DataFrame):
        if len(row) != 1:
            raise ValueError(f"Give one row; got {len(row)}.")
        return row.reset_index(drop=True)
    if isinstance(row, pd.Series):
        return row.to_frame().T.reset_index(drop=True)
    if isinstance(row, Mapping):
        return pd.DataFrame([dict(row)])
    if isinstance(row, (int, np.integer)) and X is not None:
        if not 0 <= row < len(X):
            raise IndexError(f"Row {row} is out of range: the data has {len(X)} rows (0..{len(X) - 1}).")
        return X.iloc[[int(row)]].reset_index(drop=True)
    raise TypeError("row must be a one-row DataFrame, a Series, a dict of feature values, or an index into X.")


def _scores(predictor: Any, frame: pd.DataFrame) -> np.ndarray:
    return predictor.predict(frame) if predictor.task == "regression" else predictor.predict_proba(frame)


def what_if(predictor: Any, row: Any, changes: Mapping[str, Any], *, X: pd.DataFrame | None = None) -> dict[str, Any]:
    """Re-predict a row with some feature values changed.

    Parameters
    ----------
    predictor : Predictor
    row : one-row DataFrame, Series, dict, or int (an index into ``X``)
    changes : dict of str to value
        New values of some features.
    X : pandas.DataFrame or None
        Rows an integer ``row`` indexes.

    Returns
    -------
    dict
        ``before`` and ``after`` (the prediction: class label or value), ``proba_before``
        and ``proba_after`` (class probabilities; classifiers), and ``row`` (the edited row).

    Raises
    ------
    ValueError
        A changed feature the model does not have (the message lists them).
    """
    base = _row(X, row)
    features = list(predictor.feature_names)
    unknown = [k for k in changes if k not in features]
    if unknown:
        raise ValueError(f"Features {unknown} are not inputs of the model; it takes {features}.")
    edited = base.copy()
    for k, v in changes.items():
        edited[k] = pd.Series([v], dtype=object if not isinstance(v, (int, float, np.number)) else None)
    before, after = _scores(predictor, base[features]), _scores(predictor, edited[features])
    out: dict[str, Any] = {"row": edited}
    if predictor.task == "regression":
        out.update(before=float(before[0]), after=float(after[0]))
    else:
        classes = list(getattr(predictor.schema, "classes", range(before.shape[1])))
        out.update(before=classes[int(before[0].argmax())], after=classes[int(after[0].argmax())],
                   proba_before=before[0].tolist(), proba_after=after[0].tolist())
    return out


@dataclass
class Counterfactual:
    """One counterfactual row.

    Attributes
    ----------
    row : pandas.DataFrame
        The changed row (all features).
    changes : dict of str to (old, new)
    distance : float
        Sum of MAD-scaled numeric changes plus one per changed category.
    predicted : Any
        The new predicted class.
    probability : float
        The new class's probability.
    """

    row: pd.DataFrame
    changes: dict[str, tuple[Any, Any]]
    distance: float
    predicted: Any
    probability: float
    extra: dict[str, Any] = field(default_factory=dict)


def counterfactuals(
    predictor: Any,
    row: Any,
    X: pd.DataFrame,
    *,
    mutable: Sequence[str] | None = None,
    target: Any = None,
    n: int = 3,
    max_features: int = 2,
    n_values: int = 20,
    beam: int = 10,
    tol: float = 1e-3,
) -> list[Counterfactual]:
    """The smallest changes to mutable features that change a classifier's prediction.

    Parameters
    ----------
    predictor : Predictor
        A classifier on raw rows.
    row : one-row DataFrame, Series, dict or int (an index into ``X``)
    X : pandas.DataFrame
        Reference rows: candidate values (quantiles, categories) and MAD scales.
    mutable : list of str or None, default=None
        Features that may change (all features if None; leave out e.g. age, sex).
    target : class label or None, default=None
        The class to reach; any class other than the current prediction if None.
    n : int, default=3
        Counterfactuals to return (different feature sets).
    max_features : int, default=2
        Most features changed at once.
    n_values : int, default=20
        Candidate values per numeric feature (quantiles of ``X``).
    beam : int, default=10
        Partial moves kept per round when searching combinations.
    tol : float, default=1e-3
        Bisection stops when the change is known to within this many MAD units.

    Returns
    -------
    list of Counterfactual
        Up to ``n``, smallest distance first; empty if none was found within ``max_features`` changes.

    Raises
    ------
    ValueError
        A regression model, an unknown mutable feature or target class, or ``X`` without the features.
    """
    if predictor.task == "regression":
        raise ValueError("counterfactuals flip a classifier's prediction; for a regression model use what_if.")
    features = list(predictor.feature_names)
    missing = [f for f in features if f not in X.columns]
    if missing:
        raise ValueError(f"Reference rows X lack the model's features {missing}; pass rows with all of {features}.")
    mutable = list(features if mutable is None else mutable)
    unknown = [f for f in mutable if f not in features]
    if unknown:
        raise ValueError(f"Mutable features {unknown} are not inputs of the model; it takes {features}.")
    base = _row(X, row)[features]
    classes = list(predictor.schema.classes)
    p0 = _scores(predictor, base)[0]
    current = int(p0.argmax())
    if target is not None and target not in classes:
        raise ValueError(f"target {target!r} is not a class of the model; classes are {classes}.")
    goal = None if target is None else classes.index(target)
    categorical = {c.name for c in predictor.schema.categorical}
    scale = {}
    candidates: dict[str, list[Any]] = {}
    for f in mutable:
        col = X[f].dropna()
        if f in categorical:
            candidates[f] = [v for v in sorted(col.astype(str).unique()) if v != str(base[f].iloc[0])]
        else:
            values = col.to_numpy(dtype=np.float64)
            mad = float(np.median(np.abs(values - np.median(values))))
            scale[f] = mad if mad > 0 else (float(values.std()) or 1.0)
            candidates[f] = list(np.unique(np.quantile(values, np.linspace(0, 1, n_values))))

    def cost(changes: dict[str, Any]) -> float:
        total = 0.0
        for f, v in changes.items():
            total += 1.0 if f in categorical else abs(float(v) - float(base[f].iloc[0])) / scale[f]
        return total

    def build(moves: list[dict[str, Any]]) -> pd.DataFrame:
        frame = pd.concat([base] * len(moves), ignore_index=True)
        for f in {k for m in moves for k in m}:
            col = frame[f].astype(object).to_numpy().copy()
            for i, m in enumerate(moves):
                if f in m:
                    col[i] = m[f]
            frame[f] = pd.Series(col, dtype=object) if f in categorical else pd.to_numeric(pd.Series(col))
        return frame

    def flipped(p: np.ndarray) -> np.ndarray:
        pred = p.argmax(axis=1)
        return pred == goal if goal is not None else pred != current

    def margin(p: np.ndarray) -> np.ndarray:
        """How far from flipping (lower is closer): the current class's lead over the best other / the goal."""
        if goal is not None:
            return p.max(axis=1) - p[:, goal]
        others = p.copy()
        others[:, current] = -np.inf
        return p[:, current] - others.max(axis=1)

    found: list[dict[str, Any]] = []
    frontier: list[dict[str, Any]] = [{}]
    for _ in range(max_features):
        moves = [{**m, f: v} for m in frontier for f in mutable if f not in m for v in candidates[f]]
        moves = list({tuple(sorted((k, str(v)) for k, v in m.items())): m for m in moves}.values())
        if not moves:
            break
        p = _scores(predictor, build(moves))
        ok = flipped(p)
        found += [moves[i] for i in np.flatnonzero(ok)]
        if len({frozenset(m) for m in found}) >= n:
            break
        order = np.argsort(margin(p) + 1e-3 * np.array([cost(m) for m in moves]))  # closest to the boundary first
        frontier = [moves[i] for i in order if not ok[i]][:beam]
    results = [_refine(m, base, categorical, scale, tol, predictor, build, flipped) for m in found]
    results.sort(key=lambda r: (cost(r), len(r)))
    chosen: list[Counterfactual] = []
    seen: set[frozenset[str]] = set()
    for changes in results:
        key = frozenset(changes)
        if key in seen or any(s < key for s in seen):  # keep minimal feature sets, one per set
            continue
        seen.add(key)
        frame = build([changes])
        p = _scores(predictor, frame)[0]
        k = int(p.argmax())
        chosen.append(Counterfactual(frame, {f: (base[f].iloc[0], v) for f, v in changes.items()}, cost(changes),
                                     classes[k], float(p[k])))
        if len(chosen) == n:
            break
    return chosen


def _refine(changes, base, categorical, scale, tol, predictor, build, flipped) -> dict[str, Any]:  # noqa: ANN001
    """Shrink each numeric change toward the original value by bisection while the prediction stays flipped."""
    changes = dict(changes)
    for f in [k for k in changes if k not in categorical]:
        start = float(base[f].iloc[0])
        lo, hi = 0.0, 1.0  # fraction of the change: 1 flips; find the smallest that still does
        while (hi - lo) * abs(float(changes[f]) - start) / scale[f] > tol:
            mids = np.linspace(lo, hi, 9)[1:-1]  # 7 probes per round in one predict call
            moves = [{**changes, f: start + t * (float(changes[f]) - start)} for t in mids]
            ok = flipped(_scores(predictor, build(moves)))
            first = int(np.argmax(ok)) if ok.any() else None
            if first is None:
                lo = mids[-1]
            else:
                hi = mids[first]
                lo = mids[first - 1] if first > 0 else lo
        changes[f] = start + hi * (float(changes[f]) - start)
    return changes
