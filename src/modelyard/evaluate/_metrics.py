"""Metrics as plain callables, found by name through :data:`METRICS`.

Every metric has the signature ``fn(y_true, y_score) -> float``, as in fairlearn's
``MetricFrame``, so a user's own callable works wherever a built-in one does.

* Classification: ``y_true`` holds class indices ``0 .. k-1`` (``schema.classes[i]`` is
  the label of index ``i``); ``y_score`` is the probability matrix ``(n, k)`` from
  ``Predictor.predict_proba``. For binary tasks a 1-D ``y_score`` is read as the
  probability of class 1, as scikit-learn does.
* Regression: ``y_true`` and ``y_score`` are values of shape ``(n,)``.

Binary decisions take the most probable class (class 1 where ``P(class 1) > P(class
0)``); ``"<metric>@<t>"`` names (``"precision@0.3"``, see :func:`at_threshold`) predict
class 1 where ``P(class 1) > t`` instead. A value that is undefined on the rows given (a
precision with nothing predicted positive, an AUC on one class) is ``nan``, never a
silent 0.

Every metric returns ``nan`` on zero rows except ``count``, which returns ``0.0``. The
implementations are plain numpy (no scikit-learn import), so they stay fast to import
and are checked against scikit-learn in the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from modelyard._registry import Registry

__all__ = [
    "CLASSIFICATION_METRICS",
    "ECE_BINS",
    "METRICS",
    "REGRESSION_METRICS",
    "THRESHOLD_METRICS",
    "MetricFn",
    "accuracy",
    "at_threshold",
    "auc",
    "auc_pr",
    "brier",
    "check_threshold",
    "confusion_matrix",
    "count",
    "default_metrics",
    "expected_calibration_error",
    "f1",
    "fnr",
    "fpr",
    "log_loss",
    "lookup_metric",
    "mae",
    "precision",
    "r2",
    "recall",
    "resolve_metrics",
    "rmse",
    "roc_curve_points",
    "selection_rate",
    "tnr",
    "tpr",
]

MetricFn = Callable[[np.ndarray, np.ndarray], float]

#: Name -> metric callable, for YAML specs and the CLI. The Python API also takes callables.
METRICS: Registry[MetricFn] = Registry("metric")

#: Default metrics per task, in display order.
CLASSIFICATION_METRICS: tuple[str, ...] = ("count", "accuracy", "auc", "log_loss")
REGRESSION_METRICS: tuple[str, ...] = ("count", "rmse", "mae", "r2")

#: Probabilities are clipped to ``[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]`` before the log.
LOG_LOSS_EPS = 1e-15

_CLASSIFICATION = frozenset({"binary", "multiclass"})
_BINARY = frozenset({"binary"})
_REGRESSION = frozenset({"regression"})
_ALL_TASKS = _CLASSIFICATION | _REGRESSION


def _metric(name: str, *, tasks: frozenset[str], greater_is_better: bool | None) -> Callable[[MetricFn], MetricFn]:
    """Register a built-in metric and tag it with the tasks it applies to."""

    def decorator(fn: MetricFn) -> MetricFn:
        fn.tasks = tasks  # type: ignore[attr-defined]
        fn.greater_is_better = greater_is_better  # type: ignore[attr-defined]
        METRICS.register(name)(fn)
        return fn

    return decorator


# -- input helpers -------------------------------------------------------------------
def _as_proba(y_score: Any, n: int) -> np.ndarray:
    """Probabilities as ``(n, k)`` float64; a 1-D score is P(class 1) of a binary task."""
    p = np.asarray(y_score, dtype=np.float64)
    if p.ndim == 1:
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2 or p.shape[0] != n:
        raise ValueError(
            f"y_score must be probabilities of shape (n_rows, n_classes) = ({n}, k), or (n_rows,) for the "
            f"positive class of a binary task; got shape {np.shape(y_score)}."
        )
    return p


def _as_labels(y_true: Any, n_classes: int | None = None) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D class indices; got shape {y.shape}.")
    if y.size and not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        as_float = np.asarray(y, dtype=np.float64) if np.issubdtype(y.dtype, np.number) else None
        if as_float is None or not np.all(np.mod(as_float, 1) == 0):
            raise ValueError(
                f"y_true must hold class indices 0..k-1 (dtype {y.dtype} given); encode labels with "
                "modelyard.data.encode_target."
            )
    y = y.astype(np.int64)
    if n_classes is not None and y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"y_true holds class index {int(y.min()) if y.min() < 0 else int(y.max())}, outside 0..{n_classes - 1} "
            f"for probabilities with {n_classes} columns."
        )
    return y


def _as_values(y: Any, what: str) -> np.ndarray:
    v = np.asarray(y, dtype=np.float64)
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 1:
        raise ValueError(f"{what} must be 1-D regression values; got shape {v.shape}.")
    return v


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic with tied scores given average ranks."""
    n = positive.size
    n_pos = int(positive.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    ends = np.r_[starts[1:], n]
    ranks = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based average rank of each tie group
    rank_sum = float(ranks[positive[order]].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


# -- classification --------------------------------------------------------------------
@_metric("count", tasks=_ALL_TASKS, greater_is_better=None)
def count(y_true: Any, y_score: Any) -> float:
    """Number of rows.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
    y_score : array-like
        Ignored.

    Returns
    -------
    float
    """
    return float(len(y_true))


@_metric("accuracy", tasks=_CLASSIFICATION, greater_is_better=True)
def accuracy(y_true: Any, y_score: Any) -> float:
    """Fraction of rows whose most probable class is the true class.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Class indices.
    y_score : array-like of shape (n_rows, n_classes) or (n_rows,)
        Probabilities; ties go to the lowest class index, like ``Predictor.predict``.
        A 1-D integer array is read as predicted class indices; a 1-D float array as
        P(class 1) of a binary task (predicted class 1 when it exceeds 0.5).

    Returns
    -------
    float
        ``nan`` on zero rows.
    """
    y = _as_labels(y_true)
    if y.size == 0:
        return float("nan")
    s = np.asarray(y_score)
    if s.ndim == 1 and (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.bool_)):
        pred = s.astype(np.int64)
        if pred.shape != y.shape:
            raise ValueError(f"y_score has shape {pred.shape}; expected ({y.size},) predicted class indices.")
    else:
        pred = _as_proba(s, y.size).argmax(axis=1)
    return float(np.mean(pred == y))


@_metric("auc", tasks=_CLASSIFICATION, greater_is_better=True)
def auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve.

    Binary: the AUC of the positive class (index 1), scored by ``y_score[:, 1]``.
    Multiclass: one-vs-rest macro average, each class ``c`` scored by
    ``y_score[:, c]`` (scikit-learn's ``multi_class="ovr", average="macro"``).

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Class indices.
    y_score : array-like of shape (n_rows, n_classes) or (n_rows,)
        Probabilities (1-D: P(class 1) of a binary task).

    Returns
    -------
    float
        ``nan`` when ``y_true`` holds a single class (AUC is undefined, and slices of
        one class are common: a small group can be all negatives). For multiclass, the
        average is over the classes that are present but not alone, since the
        one-vs-rest AUC of an absent class is undefined; ``nan`` if there are none.
        Ties in the score count one half, as in the Mann-Whitney U statistic.
    """
    n = len(y_true)
    p = _as_proba(y_score, n)
    y = _as_labels(y_true, p.shape[1])
    if p.shape[1] == 2:
        return _binary_auc(y == 1, p[:, 1])
    per_class = [_binary_auc(y == c, p[:, c]) for c in range(p.shape[1])]
    defined = [a for a in per_class if not np.isnan(a)]
    return float(np.mean(defined)) if defined else float("nan")


@_metric("log_loss", tasks=_CLASSIFICATION, greater_is_better=False)
def log_loss(y_true: Any, y_score: Any) -> float:
    """Mean negative natural log of the probability given to the true class.

    Probabilities are clipped to ``[1e-15, 1 - 1e-15]`` (:data:`LOG_LOSS_EPS`) so a
    confident mistake costs about 34.5 instead of infinity. The classes are the columns
    of ``y_score``, so a slice in which some class never occurs is scored correctly.
    Rows are not renormalised; pass probabilities that sum to one.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Class indices.
    y_score : array-like of shape (n_rows, n_classes) or (n_rows,)
        Probabilities (1-D: P(class 1) of a binary task).

    Returns
    -------
    float
        ``nan`` on zero rows.
    """
    n = len(y_true)
    p = _as_proba(y_score, n)
    y = _as_labels(y_true, p.shape[1])
    if n == 0:
        return float("nan")
    picked = np.clip(p[np.arange(n), y], LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    return float(-np.mean(np.log(picked)))


# -- confusion-based classification metrics ---------------------------------------------
def _predicted(y_score: Any, n: int, threshold: float | None) -> tuple[np.ndarray, int]:
    """Predicted class per row and the number of classes.

    Without a threshold: the most probable class (ties to the lowest index, like
    ``Predictor.predict``). With one (binary only): class 1 where ``P(class 1) >
    threshold``, as Keras and TFMA compare.
    """
    p = _as_proba(y_score, n)
    if threshold is None:
        return p.argmax(axis=1), p.shape[1]
    if p.shape[1] != 2:
        raise ValueError(f"A decision threshold applies to binary tasks; y_score has {p.shape[1]} columns.")
    return (p[:, 1] > threshold).astype(np.int64), 2


def confusion_matrix(y_true: Any, y_score: Any, *, threshold: float | None = None) -> np.ndarray:
    """Counts of rows by true class (rows) and predicted class (columns).

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Class indices.
    y_score : array-like of shape (n_rows, n_classes) or (n_rows,)
        Probabilities (1-D: P(class 1) of a binary task).
    threshold : float or None, default=None
        Binary only: predict class 1 where ``P(class 1) > threshold``. ``None``
        predicts the most probable class.

    Returns
    -------
    numpy.ndarray of shape (n_classes, n_classes), dtype int64
        ``out[i, j]`` = rows of true class ``i`` predicted as ``j`` (scikit-learn's
        layout).
    """
    n = len(y_true)
    pred, k = _predicted(y_score, n, threshold)
    y = _as_labels(y_true, k)
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _binary_counts(y_true: Any, y_score: Any, threshold: float | None) -> tuple[float, float, float, float]:
    cm = confusion_matrix(y_true, y_score, threshold=threshold)
    if cm.shape != (2, 2):
        raise ValueError(f"This metric applies to binary tasks; y_score has {cm.shape[0]} columns.")
    tn, fp, fn, tp = (float(v) for v in cm.ravel())
    return tn, fp, fn, tp


def _macro(y_true: Any, y_score: Any, which: str) -> float:
    """Macro average over the classes that occur in ``y_true`` or the prediction.

    A class whose value is undefined (precision of a class never predicted, recall of a
    class that never occurs) is left out of the average, as scikit-learn does with
    ``zero_division=np.nan``.
    """
    cm = confusion_matrix(y_true, y_score).astype(np.float64)
    tp, true, pred = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    present = (true + pred) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        if which == "precision":
            per_class = tp / pred
        elif which == "recall":
            per_class = tp / true
        else:
            per_class = 2.0 * tp / (true + pred)
    values = per_class[present & np.isfinite(per_class)]
    return float(values.mean()) if values.size else float("nan")


@_metric("precision", tasks=_CLASSIFICATION, greater_is_better=True)
def precision(y_true: Any, y_score: Any, *, threshold: float | None = None) -> float:
    """Fraction of the rows predicted positive that are positive.

    Binary: of class 1. Multiclass: the macro average over the classes that occur in
    ``y_true`` or the prediction, leaving out classes never predicted (their precision is
    undefined), as scikit-learn's ``precision_score(average="macro",
    zero_division=np.nan)``.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Class indices.
    y_score : array-like of shape (n_rows, n_classes) or (n_rows,)
        Probabilities (1-D: P(class 1) of a binary task).
    threshold : float or None, default=None
        Binary only: predict class 1 where ``P(class 1) > threshold`` instead of taking
        the most probable class.

    Returns
    -------
    float
        ``nan`` when nothing is predicted positive.
    """
    if threshold is None and _as_proba(y_score, len(y_true)).shape[1] > 2:
        return _macro(y_true, y_score, "precision")
    _, fp, _, tp = _binary_counts(y_true, y_score, threshold)
    return _ratio(tp, tp + fp)


@_metric("recall", tasks=_CLASSIFICATION, greater_is_better=True)
def recall(y_true: Any, y_score: Any, *, threshold: float | None = None) -> float:
    """Fraction of the positive rows predicted positive (true positive rate, sensitivity).

    Binary: of class 1. Multiclass: the macro average over the classes that occur in
    ``y_true``. Parameters as :func:`precision`.

    Returns
    -------
    float
        ``nan`` when no row is positive.
    """
    if threshold is None and _as_proba(y_score, len(y_true)).shape[1] > 2:
        return _macro(y_true, y_score, "recall")
    _, _, fn, tp = _binary_counts(y_true, y_score, threshold)
    return _ratio(tp, tp + fn)


@_metric("f1", tasks=_CLASSIFICATION, greater_is_better=True)
def f1(y_true: Any, y_score: Any, *, threshold: float | None = None) -> float:
    """Harmonic mean of precision and recall, ``2 TP / (2 TP + FP + FN)``.

    Binary: of class 1. Multiclass: the macro average over the classes that occur in
    ``y_true`` or the prediction. Parameters as :func:`precision`.

    Returns
    -------
    float
        ``nan`` when there is no positive row and no positive prediction.
    """
    if threshold is None and _as_proba(y_score, len(y_true)).shape[1] > 2:
        return _macro(y_true, y_score, "f1")
    _, fp, fn, tp = _binary_counts(y_true, y_score, threshold)
    return _ratio(2.0 * tp, 2.0 * tp + fp + fn)


@_metric("tpr", tasks=_BINARY, greater_is_better=True)
def tpr(y_true: Any, y_score: Any, *, threshold: float | None = None) -> float:
    """True positive rate ``TP / (TP + FN)`` (binary); ``nan`` without positive rows."""
    _, _, fn, tp = _binary_counts(y_true, y_score, threshold)
    return _ratio(tp, tp + fn)


@_metric("fpr", tasks=_BINARY, greater_is_better=False)
def fpr(y_true: Any, y_score: Any, *, threshold: float | None = None) -> float:
    """False positive rate ``FP / (FP + TN)`` (binary); ``nan`` without negative rows."""
    tn, fp, _, _ = _binary_counts(y_true, y_score, threshold)
    return _ratio(fp, fp + tn)


@_metric("tnr", tasks=_BINARY, greater_is_better=True)
def tnr(y_true: Any, y_score: Any, *, threshold: float | None = None) -> float:
    """True negative rate (specificity) ``TN / (TN + FP)`` (binary); ``nan`` without negative rows."""
    tn, fp, _, _ = _binary_counts(y_true, y_score, threshold)
    return _ratio(tn, tn + fp)


@_metric("fnr", tasks=_BINARY, greater_is_better=False)
def fnr(y_true: Any, y_score: Any, *, threshold: float | None = None) -> float:
    """False negative rate ``FN / (FN + TP)`` (binary); ``nan`` without positive rows."""
    _, _, fn, tp = _binary_counts(y_true, y_score, threshold)
    return _ratio(fn, fn + tp)


@_metric("selection_rate", tasks=_BINARY, greater_is_better=None)
def selection_rate(y_true: Any, y_score: Any, *, threshold: float | None = None) -> float:
    """Fraction of rows predicted positive (binary); ``nan`` on zero rows."""
    tn, fp, fn, tp = _binary_counts(y_true, y_score, threshold)
    return _ratio(tp + fp, tn + fp + fn + tp)


def _average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """Step-wise area under the precision-recall curve (scikit-learn's average precision)."""
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    s, pos = score[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tps = np.cumsum(pos)[last_of_tie].astype(np.float64)
    gained = np.diff(np.r_[0.0, tps])
    return float(np.sum(gained * tps / (last_of_tie + 1)) / n_pos)


@_metric("auc_pr", tasks=_CLASSIFICATION, greater_is_better=True)
def auc_pr(y_true: Any, y_score: Any) -> float:
    """Area under the precision-recall curve, as average precision.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct scores from the highest down
    (scikit-learn's ``average_precision_score``; no interpolation). Binary: of class 1.
    Multiclass: one-vs-rest macro average over the classes that occur in ``y_true``.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Class indices.
    y_score : array-like of shape (n_rows, n_classes) or (n_rows,)
        Probabilities (1-D: P(class 1) of a binary task).

    Returns
    -------
    float
        ``nan`` when no row is positive (scikit-learn returns 0.0 with a warning).
    """
    n = len(y_true)
    p = _as_proba(y_score, n)
    y = _as_labels(y_true, p.shape[1])
    if p.shape[1] == 2:
        return _average_precision(y == 1, p[:, 1])
    per_class = [_average_precision(y == c, p[:, c]) for c in range(p.shape[1])]
    defined = [a for a in per_class if not np.isnan(a)]
    return float(np.mean(defined)) if defined else float("nan")


@_metric("brier", tasks=_CLASSIFICATION, greater_is_better=False)
def brier(y_true: Any, y_score: Any) -> float:
    """Brier score: mean squared distance between the probabilities and the one-hot truth.

    Binary: ``mean((P(class 1) - y)^2)``, in [0, 1] (half the sum over both columns,
    which is the same for rows that sum to one). Multiclass: ``mean(sum_c (p_c -
    [y = c])^2)``, in [0, 2]. This is scikit-learn's ``brier_score_loss`` with its
    default ``scale_by_half="auto"``.

    Returns
    -------
    float
        ``nan`` on zero rows.
    """
    n = len(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim == 1:
        y = _as_labels(y_true, 2)
        return float(np.mean((s - y) ** 2)) if n else float("nan")
    p = _as_proba(s, n)
    y = _as_labels(y_true, p.shape[1])
    if n == 0:
        return float("nan")
    onehot = np.zeros_like(p)
    onehot[np.arange(n), y] = 1.0
    total = np.sum((p - onehot) ** 2, axis=1)
    return float(np.mean(total) * (0.5 if p.shape[1] == 2 else 1.0))


#: Equal-width confidence bins of :func:`expected_calibration_error` unless told otherwise.
ECE_BINS = 10


def ece_bin(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin index of each confidence: ``[0, 1/B), [1/B, 2/B), ..., [1 - 1/B, 1]``."""
    return np.minimum((confidence * bins).astype(np.int64), bins - 1)


@_metric("ece", tasks=_CLASSIFICATION, greater_is_better=False)
def expected_calibration_error(y_true: Any, y_score: Any, *, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the predicted class (top-label ECE).

    Rows are put in ``bins`` equal-width bins by the probability of their predicted
    class (the confidence); ECE is ``sum_b |sum_{i in b} (correct_i - confidence_i)| /
    n``, the row-weighted gap between accuracy and mean confidence per bin (Guo et al.,
    2017). Bins are ``[0, 1/B), ..., [1 - 1/B, 1]``.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Class indices.
    y_score : array-like of shape (n_rows, n_classes) or (n_rows,)
        Probabilities (1-D: P(class 1) of a binary task).
    bins : int, default=10

    Returns
    -------
    float
        ``nan`` on zero rows.
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer; got {bins!r}.")
    n = len(y_true)
    p = _as_proba(y_score, n)
    y = _as_labels(y_true, p.shape[1])
    if n == 0:
        return float("nan")
    pred = p.argmax(axis=1)
    confidence = p[np.arange(n), pred]
    gap = (pred == y) - confidence
    return float(np.abs(np.bincount(ece_bin(confidence, int(bins)), gap, minlength=int(bins))).sum() / n)


#: Metrics that turn scores into decisions, and so can be asked at a threshold: ``"recall@0.3"``.
THRESHOLD_METRICS: tuple[str, ...] = (
    "accuracy", "precision", "recall", "f1", "tpr", "fpr", "tnr", "fnr", "selection_rate",
)


def _accuracy_at(y_true: Any, y_score: Any, *, threshold: float) -> float:
    tn, fp, fn, tp = _binary_counts(y_true, y_score, threshold)
    return _ratio(tp + tn, tn + fp + fn + tp)


def at_threshold(name: str, threshold: float) -> MetricFn:
    """The binary metric ``name`` with class 1 predicted where ``P(class 1) > threshold``.

    Parameters
    ----------
    name : str
        One of :data:`THRESHOLD_METRICS`.
    threshold : float
        In ``[0, 1]``.

    Returns
    -------
    callable
        ``fn(y_true, y_score) -> float`` named ``f"{name}@{threshold:g}"``, carrying
        ``base``, ``threshold``, ``tasks`` and ``greater_is_better``.

    Raises
    ------
    ValueError
        If ``name`` cannot take a threshold or ``threshold`` is outside ``[0, 1]``.
    """
    if name not in THRESHOLD_METRICS:
        raise ValueError(f"Metric {name!r} takes no decision threshold; ones that do: {list(THRESHOLD_METRICS)}.")
    t = check_threshold(threshold)
    base = _accuracy_at if name == "accuracy" else METRICS.get(name)

    def fn(y_true: Any, y_score: Any) -> float:
        return base(y_true, y_score, threshold=t)

    fn.__name__ = f"{name}@{t:g}"
    fn.__doc__ = f"{name} with class 1 predicted where P(class 1) > {t:g}."
    fn.base = name  # type: ignore[attr-defined]
    fn.threshold = t  # type: ignore[attr-defined]
    fn.tasks = _BINARY  # type: ignore[attr-defined]
    fn.greater_is_better = METRICS.get(name).greater_is_better  # type: ignore[attr-defined]
    return fn


def check_threshold(value: Any, what: str = "threshold") -> float:
    """A decision threshold as a float in ``[0, 1]``; a clear error otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"A {what} must be a number in [0, 1]; got {value!r}.")
    t = float(value)
    if not (0.0 <= t <= 1.0):
        raise ValueError(
            f"A {what} must lie in [0, 1], since scores are probabilities; got {value!r}."
        )
    return t


# -- regression ----------------------------------------------------------------------
def _regression_pair(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    t = _as_values(y_true, "y_true")
    p = _as_values(y_score, "y_score")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} rows but y_score has {p.size}; pass one prediction per row.")
    return t, p


@_metric("rmse", tasks=_REGRESSION, greater_is_better=False)
def rmse(y_true: Any, y_score: Any) -> float:
    """Root mean squared error; ``nan`` on zero rows."""
    t, p = _regression_pair(y_true, y_score)
    return float(np.sqrt(np.mean((t - p) ** 2))) if t.size else float("nan")


@_metric("mae", tasks=_REGRESSION, greater_is_better=False)
def mae(y_true: Any, y_score: Any) -> float:
    """Mean absolute error; ``nan`` on zero rows."""
    t, p = _regression_pair(y_true, y_score)
    return float(np.mean(np.abs(t - p))) if t.size else float("nan")


@_metric("r2", tasks=_REGRESSION, greater_is_better=True)
def r2(y_true: Any, y_score: Any) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot``.

    Returns
    -------
    float
        ``nan`` when ``y_true`` is constant (including a single row or none), where R²
        is undefined; scikit-learn's ``r2_score`` returns 0.0 or 1.0 there by default.
    """
    t, p = _regression_pair(y_true, y_score)
    if t.size == 0:
        return float("nan")
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((t - p) ** 2)) / ss_tot


# -- resolving -----------------------------------------------------------------------
def lookup_metric(name: str) -> MetricFn:
    """A metric by name: a registered one, or ``"<metric>@<threshold>"`` (``"recall@0.3"``).

    Raises
    ------
    ValueError
        On an unknown name, a metric that takes no threshold, or a threshold outside
        ``[0, 1]`` or not a number.
    """
    if "@" in name:
        base, _, raw = name.partition("@")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(
                f"Metric {name!r}: {raw!r} is not a threshold; write it as <metric>@<number in [0, 1]>, "
                "e.g. 'recall@0.3'."
            ) from None
        return at_threshold(base, value)
    return METRICS.get(name)


def default_metrics(task: str) -> tuple[str, ...]:
    """Names of the default metrics of a task (``"binary"``, ``"multiclass"``, ``"regression"``)."""
    if task in _CLASSIFICATION:
        return CLASSIFICATION_METRICS
    if task in _REGRESSION:
        return REGRESSION_METRICS
    raise ValueError(f"task must be one of {sorted(_ALL_TASKS)}; got {task!r}.")


def resolve_metrics(
    metrics: Sequence[str | MetricFn] | Mapping[str, MetricFn] | None, task: str
) -> dict[str, MetricFn]:
    """Turn names and callables into an ordered ``{name: callable}``, ``count`` first.

    Parameters
    ----------
    metrics : sequence of str or callable, mapping of str to callable, or None
        Names are looked up in :data:`METRICS`, and ``"<metric>@<t>"`` names a
        binary metric of :data:`THRESHOLD_METRICS` at decision threshold ``t``
        (``"recall@0.3"``); a callable is named by its
        ``__name__``; a mapping names callables explicitly. ``None`` gives
        :func:`default_metrics`. ``count`` is always included (a per-group value means
        little without the number of rows behind it).
    task : {"binary", "multiclass", "regression"}

    Raises
    ------
    ValueError
        On an unknown name, a built-in metric that does not apply to the task, or two
        metrics with the same name.
    TypeError
        On an entry that is neither a name nor a callable.
    """
    default_metrics(task)  # validates task
    if metrics is None:
        items: Iterable[tuple[str, Any]] = ((n, METRICS.get(n)) for n in default_metrics(task))
    elif isinstance(metrics, Mapping):
        items = metrics.items()
    elif isinstance(metrics, (str, bytes)) or callable(metrics):
        raise TypeError(
            f"metrics must be a list of names or callables; got {metrics!r}. "
            f"Wrap a single metric in a list: metrics=[{metrics!r}]."
        )
    else:
        pairs = []
        for m in metrics:
            if isinstance(m, str):
                pairs.append((m, lookup_metric(m)))
            elif callable(m):
                pairs.append((getattr(m, "__name__", repr(m)), m))
            else:
                raise TypeError(f"A metric must be a registered name or a callable fn(y_true, y_score); got {m!r}.")
        items = pairs
    out: dict[str, MetricFn] = {"count": count}
    for name, fn in items:
        if not isinstance(name, str) or not callable(fn):
            raise TypeError(f"A metric must be named by a string and be callable; got {name!r}: {fn!r}.")
        tasks = getattr(fn, "tasks", None)
        if tasks is not None and task not in tasks:
            raise ValueError(
                f"Metric {name!r} does not apply to a {task} task. Metrics for {task}: {list(default_metrics(task))}."
            )
        if name in out and not (name == "count" and fn is count):
            raise ValueError(f"Metric {name!r} is given twice; give each metric a unique name.")
        out[name] = fn
    return out


# -- curves --------------------------------------------------------------------------
def roc_curve_points(y_true: Any, proba: Any, max_points: int = 200) -> dict[str, list[float]]:
    """ROC curve of a binary classifier, downsampled for plotting.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Class indices 0 and 1.
    proba : array-like of shape (n_rows, 2) or (n_rows,)
        Probabilities; a 1-D array is P(class 1).
    max_points : int, default=200
        At most this many points are returned. Points are kept evenly spaced along
        the curve (by ``fpr + tpr``, which rises from 0 to 2), always including
        ``(0, 0)`` and ``(1, 1)``, so steep and flat parts both keep their shape.

    Returns
    -------
    dict
        ``{"fpr": [...], "tpr": [...]}``: JSON-able lists of floats, one point per
        distinct threshold (before downsampling), starting at ``(0, 0)``. Every point
        is a point of scikit-learn's ``roc_curve``.

    Raises
    ------
    ValueError
        If ``proba`` has more than two columns, ``max_points < 2``, or ``y_true``
        holds a single class (the curve is undefined).
    """
    if not isinstance(max_points, (int, np.integer)) or isinstance(max_points, bool) or max_points < 2:
        raise ValueError(f"max_points must be an integer >= 2; got {max_points=!r}.")
    n = len(y_true)
    p = _as_proba(proba, n)
    if p.shape[1] != 2:
        raise ValueError(
            f"roc_curve_points is for binary classifiers; proba has {p.shape[1]} columns. "
            "For a multiclass model, pass one class's one-vs-rest column: (y_true == c, proba[:, c])."
        )
    y = _as_labels(y_true, 2)
    positive = y == 1
    n_pos = int(positive.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"The ROC curve needs both classes in y_true; got {n_pos} positive and {n_neg} negative rows."
        )
    score = p[:, 1]
    order = np.argsort(-score, kind="mergesort")
    s = score[order]
    pos_sorted = positive[order]
    last_of_tie = np.r_[np.flatnonzero(s[1:] != s[:-1]), n - 1]  # one point per distinct threshold
    tps = np.cumsum(pos_sorted)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    if fpr.size > max_points:
        walk = fpr + tpr  # nondecreasing from 0 to 2
        idx = np.searchsorted(walk, np.linspace(0.0, 2.0, max_points), side="left")
        idx = np.unique(np.clip(idx, 0, fpr.size - 1))
        idx[0], idx[-1] = 0, fpr.size - 1
        fpr, tpr = fpr[idx], tpr[idx]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}
