"""Permutation feature importance (Breiman 2001) and model class reliance (Fisher, Rudin & Dominici, 1801.01489).

The importance of a raw column is how much a metric worsens when the column's values
are shuffled across rows, breaking its link with the target while keeping its
distribution. Shuffles follow scikit-learn's protocol exactly (one ``RandomState``
seeded from ``random_state``, re-created for every column, and each repeat shuffling
the already shuffled column), so with the same ``random_state`` the values equal
:func:`sklearn.inspection.permutation_importance`. It is faster on models with a
per-call cost: the ``n_repeats`` shuffled copies of a column go to the model in one
``predict`` call instead of ``n_repeats`` calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from modelyard.explain._fast import encoded_view

__all__ = ["ModelClassReliance", "PermutationImportance", "model_class_reliance", "permutation_importance"]

ScoreFn = Callable[[np.ndarray, np.ndarray], float]


@dataclass
class PermutationImportance:
    """What :func:`permutation_importance` found.

    Attributes
    ----------
    features : list of str
    metric : str
    baseline : float
        The metric on the unshuffled rows.
    importances : ndarray of shape (n_features, n_repeats)
        Worsening of the metric per repeat (positive: the model relies on the feature).
    confidence : float
        Level of the intervals.
    """

    features: list[str]
    metric: str
    baseline: float
    importances: np.ndarray
    confidence: float = 0.95

    @property
    def mean(self) -> np.ndarray:
        """Mean importance per feature, ``(n_features,)``."""
        return self.importances.mean(axis=1)

    @property
    def std(self) -> np.ndarray:
        """Standard deviation over repeats (``ddof=0``, as scikit-learn reports it)."""
        return self.importances.std(axis=1)

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """Student-t interval of the mean importance over repeats, ``(low, high)``.

        The repeats are independent shuffles, so the mean's standard error is
        ``s / sqrt(R)`` with ``s`` the sample standard deviation (``ddof=1``). With one
        repeat there is no interval (NaN).
        """
        from scipy import stats

        r = self.importances.shape[1]
        if r < 2:
            nan = np.full(len(self.features), np.nan)
            return nan, nan
        half = stats.t.ppf(0.5 + self.confidence / 2, r - 1) * self.importances.std(axis=1, ddof=1) / math.sqrt(r)
        return self.mean - half, self.mean + half

    def to_frame(self) -> pd.DataFrame:
        """One row per feature, most important first: ``feature, importance, std, low, high``."""
        low, high = self.interval()
        frame = pd.DataFrame({"feature": self.features, "importance": self.mean, "std": self.std,
                              "low": low, "high": high})
        return frame.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)


def _scorer(metric: str | ScoreFn, task: str) -> tuple[str, ScoreFn, bool, bool]:
    """``(name, fn(y_true, output), greater_is_better, needs_proba)`` of a metric."""
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric, True, task != "regression"
    from modelyard.evaluate import METRICS

    fn = METRICS.get(metric)  # unknown names raise with the list of known ones
    if task not in fn.tasks:
        known = [n for n in METRICS.names() if task in METRICS.get(n).tasks and METRICS.get(n).greater_is_better is not None]
        raise ValueError(f"Metric {metric!r} does not apply to a {task} model; use one of {known}.")
    if fn.greater_is_better is None:
        raise ValueError(f"Metric {metric!r} is not a score (it has no better direction); use e.g. 'accuracy'.")
    return metric, fn, bool(fn.greater_is_better), task != "regression"


def _outputs(predictor: Any, X: pd.DataFrame, proba: bool) -> np.ndarray:
    return predictor.predict_proba(X) if proba else predictor.predict(X)


def _target(predictor: Any, frame: pd.DataFrame, y: Any) -> np.ndarray:
    if y is not None:
        return np.asarray(y)
    schema = getattr(predictor, "schema", None)
    if schema is None or schema.target not in frame.columns:
        raise ValueError("Give y, or rows that hold the model's target column.")
    from modelyard.data import encode_target

    return encode_target(frame[schema.target], schema)


def permutation_importance(
    predictor: Any,
    X: pd.DataFrame,
    y: Any = None,
    *,
    features: Sequence[str] | None = None,
    metric: str | ScoreFn | None = None,
    n_repeats: int = 5,
    random_state: int | None = 0,
    confidence: float = 0.95,
    max_rows_per_call: int = 200_000,
) -> PermutationImportance:
    """Permutation importance of raw columns, with repeats and intervals.

    Parameters
    ----------
    predictor : Predictor
        Any model with ``predict``/``predict_proba`` on raw rows (torch, scikit-learn,
        ONNX); ``predictor.task`` says which output the metric reads.
    X : pandas.DataFrame
        Rows to score on (held-out rows show what generalizes). May hold the target.
    y : array-like or None, default=None
        Targets as class indices (classifiers) or values; taken from ``X``'s target
        column (encoded with the model's schema) if None.
    features : list of str or None, default=None
        Columns to permute; the model's features if None.
    metric : str, callable or None, default=None
        A name of :data:`modelyard.evaluate.METRICS` (``accuracy`` for classifiers and
        ``rmse`` for regression if None) or ``fn(y_true, output) -> float``, greater is better.
    n_repeats : int, default=5
    random_state : int or None, default=0
        Seeds the shuffles exactly as scikit-learn's ``permutation_importance`` does.
    confidence : float, default=0.95
        Level of :meth:`PermutationImportance.interval`.
    max_rows_per_call : int, default=200000
        Upper bound on rows per ``predict`` call (repeats are batched up to it).

    Returns
    -------
    PermutationImportance

    Raises
    ------
    ValueError
        A feature the model does not have (the message lists them), an unfit metric,
        ``n_repeats < 1`` or no rows.
    """
    if not isinstance(X, pd.DataFrame) or len(X) == 0:
        raise ValueError("permutation_importance needs a non-empty DataFrame of raw rows.")
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, int) or n_repeats < 1:
        raise ValueError(f"n_repeats must be a positive integer; got {n_repeats!r}.")
    task = getattr(predictor, "task", "binary")
    metric = metric if metric is not None else ("rmse" if task == "regression" else "accuracy")
    name, fn, greater, proba = _scorer(metric, task)
    model_features = list(getattr(predictor, "feature_names", X.columns))
    features = list(model_features if features is None else features)
    unknown = [f for f in features if f not in model_features or f not in X.columns]
    if unknown:
        raise ValueError(f"Features {unknown} are not inputs of the model in these rows; the model takes {model_features}.")
    y_true = _target(predictor, X, y)
    rows = X[model_features].reset_index(drop=True)
    n = len(rows)
    baseline = float(fn(y_true, _outputs(predictor, rows, proba)))  # through predict, as a user would
    seed = np.random.RandomState(random_state).randint(np.iinfo(np.int32).max + 1)
    per_call = max(1, max_rows_per_call // n)
    view = encoded_view(predictor, rows)
    importances = np.empty((len(features), n_repeats))
    for i, feature in enumerate(features):
        rng = np.random.RandomState(seed)  # the same seed for every column, as scikit-learn
        idx = np.arange(n)
        if view is None:
            column = rows[feature].to_numpy()
        else:
            array_name, col = view.where[feature]
            column = view.arrays[array_name][:, col]
        shuffled = []
        for _ in range(n_repeats):
            rng.shuffle(idx)
            column = column[idx]  # each repeat shuffles the already shuffled column
            shuffled.append(column)
        for lo in range(0, n_repeats, per_call):
            block = shuffled[lo : lo + per_call]
            if view is None:
                big = pd.concat([rows] * len(block), ignore_index=True)
                big[feature] = pd.Series(np.concatenate(block), dtype=rows[feature].dtype)
                out = _outputs(predictor, big, proba)
            else:  # edit the encoded column: the same as re-encoding the shuffled raw one
                arrays = {k: np.tile(v, (len(block), 1)) for k, v in view.arrays.items()}
                arrays[array_name][:, col] = np.concatenate(block)
                out = view.run(arrays)
            for j in range(len(block)):
                score = float(fn(y_true, out[j * n : (j + 1) * n]))
                importances[i, lo + j] = baseline - score if greater else score - baseline
    return PermutationImportance(features, name, baseline, importances, confidence)


@dataclass
class ModelClassReliance:
    """Model class reliance: the range of each feature's reliance over a set of good models.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per feature: ``mcr_minus`` and ``mcr_plus`` (lowest and highest model
        reliance over the Rashomon set), and the reliance of the reference (best) model.
    reliance : pandas.DataFrame
        Model reliance of every model in the set (rows) for every feature (columns).
    losses : list of float
        Each model's loss on the rows.
    epsilon : float
    """

    table: pd.DataFrame
    reliance: pd.DataFrame
    losses: list[float]
    epsilon: float


def model_class_reliance(
    models: Sequence[Any] | Mapping[str, Any],
    X: pd.DataFrame,
    y: Any = None,
    *,
    epsilon: float = 0.05,
    loss: str = "log_loss",
    n_repeats: int = 5,
    random_state: int | None = 0,
    features: Sequence[str] | None = None,
) -> ModelClassReliance:
    """Model class reliance (Fisher, Rudin & Dominici, 1801.01489) over the well-performing models.

    A model's reliance on feature ``j`` is ``MR_j = e_switch / e_orig``: its loss with
    ``j`` permuted (averaged over ``n_repeats`` shuffles, estimating the paper's
    ``e_switch``) over its loss on the original rows; ``MR > 1`` means it uses ``j``.
    The Rashomon set holds the models whose loss is within ``(1 + epsilon)`` of the
    best; MCR- and MCR+ are the smallest and largest reliance on ``j`` in that set: if
    even MCR- is well above 1, every good model needs the feature.

    Parameters
    ----------
    models : list or dict of Predictor
        Candidates, e.g. the refitted top trials of a search
        (``[result.best_model(t) for t in ...]``).
    X, y : as in :func:`permutation_importance`
    epsilon : float, default=0.05
        Relative loss margin of the Rashomon set.
    loss : str, default="log_loss"
        A metric where lower is better (``log_loss``, ``rmse``, ``mae``).
    n_repeats, random_state, features : as in :func:`permutation_importance`

    Returns
    -------
    ModelClassReliance
    """
    from modelyard.evaluate import METRICS

    named = dict(models) if isinstance(models, Mapping) else {f"model_{i}": m for i, m in enumerate(models)}
    if not named:
        raise ValueError("model_class_reliance needs at least one model.")
    if METRICS.get(loss).greater_is_better is not False:
        raise ValueError(f"loss must be a metric where lower is better (log_loss, rmse, mae); got {loss!r}.")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0; got {epsilon!r}.")
    results = {k: permutation_importance(m, X, y, features=features, metric=loss, n_repeats=n_repeats,
                                         random_state=random_state) for k, m in named.items()}
    losses = {k: r.baseline for k, r in results.items()}
    best = min(losses.values())
    rashomon = [k for k, v in losses.items() if v <= best * (1 + epsilon)]
    reliance = pd.DataFrame({k: (r.baseline + r.mean) / r.baseline for k, r in results.items()},
                            index=results[rashomon[0]].features).T  # permuted loss / loss
    good = reliance.loc[rashomon]
    reference = min(rashomon, key=losses.__getitem__)
    table = pd.DataFrame({"feature": good.columns, "mcr_minus": good.min().to_numpy(),
                          "mcr_plus": good.max().to_numpy(), "reference": good.loc[reference].to_numpy()})
    table = table.sort_values("mcr_plus", ascending=False, kind="stable").reset_index(drop=True)
    return ModelClassReliance(table, reliance.loc[rashomon], [losses[k] for k in rashomon], epsilon)
