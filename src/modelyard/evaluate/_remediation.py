"""Fairness remediation, each method measured before and after on the same metrics.

Four methods, one entry point :func:`remediate`:

``reweighing``
    Kamiran & Calders (2012): train the base model with instance weights
    ``w(g, y) = P(g) P(y) / P(g, y)``, under which the label is independent of the
    group (:func:`reweighing_weights`).
``mindiff``
    An MMD penalty between the groups' score distributions (on the negative label by
    default), added to the torch MLP's training loss as a trainer loss hook
    (:class:`MinDiffPenalty`).
``threshold``
    Hardt, Price & Srebro (2016): per-group randomized thresholds on the base model's
    scores, chosen on the validation split to maximize accuracy under demographic
    parity or equalized odds within a tolerance (:class:`ThresholdOptimizer`).
``lfr``
    Zemel et al. (2013): learning fair representations, prototypes fitted on the
    ``L_x + L_y + L_z`` objective in torch (:class:`LearnedFairRepresentation`).

Every result reports accuracy, demographic parity difference (largest gap in selection
rate between groups) and equalized odds difference (the larger of the largest TPR gap
and the largest FPR gap), as fairlearn defines them, on the test split before and after.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.data._schema import encode_frame
from modelyard.data._tabular import TabularSplit
from modelyard.errors import DataError
from modelyard.evaluate._remediation_lfr import LearnedFairRepresentation
from modelyard.evaluate._remediation_mindiff import MinDiffPenalty
from modelyard.evaluate._remediation_threshold import ThresholdOptimizer

__all__ = [
    "REMEDIATION_METHODS",
    "FairnessSummary",
    "RemediationResult",
    "fairness_summary",
    "remediate",
    "reweighing_weights",
]

REMEDIATION_METHODS = ("reweighing", "mindiff", "threshold", "lfr")
_BASES = ("gbm", "lightgbm", "mlp")


# -- metrics ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FairnessSummary:
    """Accuracy and group-fairness differences of 0/1 predictions on one split."""

    accuracy: float
    demographic_parity_difference: float
    equalized_odds_difference: float
    selection_rate: dict[str, float]
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "demographic_parity_difference": self.demographic_parity_difference,
            "equalized_odds_difference": self.equalized_odds_difference,
            "selection_rate": dict(self.selection_rate),
            "n": self.n,
        }


def fairness_summary(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray) -> FairnessSummary:
    """Accuracy, demographic parity difference and equalized odds difference of 0/1 predictions.

    ``y_pred`` may also hold probabilities of a positive decision (a randomized
    classifier's expectation); the figures are then expectations. A group without
    positives (or negatives) has no TPR (FPR) and is left out of that gap, as in fairlearn.
    """
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if not len(y) == len(p) == len(groups):
        raise ValueError(f"y_true, y_pred and groups have {len(y)}, {len(p)} and {len(groups)} rows; they must match.")
    if len(y) == 0:
        raise ValueError("fairness_summary needs at least one row.")
    if not np.isfinite(p).all():
        raise ValueError("y_pred holds NaN values; predict every row first.")
    labels, codes = np.unique(groups, return_inverse=True)
    k = len(labels)
    is_pos = (y == 1).astype(np.float64)
    size = np.bincount(codes, minlength=k).astype(np.float64)
    n_pos = np.bincount(codes, weights=is_pos, minlength=k)
    sel = np.bincount(codes, weights=p, minlength=k)
    tp = np.bincount(codes, weights=p * is_pos, minlength=k)
    fp = sel - tp
    rate = sel / size
    n_neg = size - n_pos
    tpr = tp[n_pos > 0] / n_pos[n_pos > 0]
    fpr = fp[n_neg > 0] / n_neg[n_neg > 0]

    def gap(values: np.ndarray) -> float:
        return float(values.max() - values.min()) if len(values) else 0.0

    accuracy = float(np.mean(p * is_pos + (1.0 - p) * (1.0 - is_pos)))
    return FairnessSummary(
        accuracy=accuracy,
        demographic_parity_difference=gap(rate),
        equalized_odds_difference=max(gap(tpr), gap(fpr)),
        selection_rate={str(g): float(r) for g, r in zip(labels, rate, strict=True)},
        n=len(y),
    )


# -- reweighing ------------------------------------------------------------------------------
def reweighing_weights(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Kamiran & Calders' instance weights ``w(g, y) = P(g) P(y) / P(g, y)``, shape (n,).

    Under these weights the group and the label are independent exactly
    (``sum_{g, y} w = n`` and ``P_w(g, y) = P(g) P(y)``), and the weighted label and
    group marginals equal the unweighted ones.
    """
    y = np.asarray(y).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if len(y) != len(groups):
        raise ValueError(f"y has {len(y)} rows and groups {len(groups)}; pass one group per row.")
    if len(y) == 0:
        raise ValueError("reweighing_weights needs at least one row.")
    _, g = np.unique(groups, return_inverse=True)
    _, c = np.unique(y, return_inverse=True)
    n_g, n_c = g.max() + 1, c.max() + 1
    joint = np.bincount(g * n_c + c, minlength=n_g * n_c).reshape(n_g, n_c).astype(np.float64)  # counts
    expected = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True) / len(y)  # n P(g) P(y)
    with np.errstate(divide="ignore", invalid="ignore"):
        cell = np.where(joint > 0, expected / joint, 0.0)  # an empty cell has no rows to weigh
    return cell[g, c]


# -- base models -----------------------------------------------------------------------------
@dataclass
class _Fitted:
    """A fitted model as a scorer: ``scores(split) -> P(positive)`` of shape (n,)."""

    model: Any
    scores: Callable[[TabularSplit], np.ndarray]


def _fit_base(
    base: Any,
    train: TabularSplit,
    valid: TabularSplit,
    *,
    seed: int,
    sample_weight: np.ndarray | None = None,
    loss_hook: Any = None,
    mlp_config: Any = None,
    base_params: dict[str, Any] | None = None,
) -> _Fitted:
    from modelyard.models._sklearn import encode_matrix

    params = dict(base_params or {})
    schema = train.schema
    if base == "gbm":
        from modelyard.models._config import GBMConfig
        from modelyard.models._gbm import fit_gbm

        predictor = fit_gbm(
            train, valid, GBMConfig(**{"seed": seed, **params}), n_threads=1, sample_weight=sample_weight
        )
        return _Fitted(predictor, lambda s: predictor.predict_proba(s.X)[:, 1])
    if base == "mlp":
        from modelyard.models._config import MLPConfig
        from modelyard.train._fit import fit_mlp

        config = mlp_config if mlp_config is not None else MLPConfig(**{"seed": seed, **params})
        predictor = fit_mlp(train, valid, config, sample_weight=sample_weight, loss_hook=loss_hook)
        return _Fitted(predictor, lambda s: predictor.predict_proba(s.X)[:, 1])
    if base == "lightgbm":
        import lightgbm

        n_num = len(schema.numeric)
        cats = list(range(n_num, n_num + len(schema.categorical)))
        model = lightgbm.LGBMClassifier(
            **{"n_estimators": 300, "learning_rate": 0.05, "verbose": -1, "n_jobs": 1, "random_state": seed, **params}
        )
        model.fit(encode_matrix(train.X, schema), train.y, sample_weight=sample_weight, categorical_feature=cats)
        return _Fitted(model, lambda s: model.predict_proba(encode_matrix(s.X, schema))[:, 1])
    # any scikit-learn style classifier, cloned and fitted on the encoded matrix
    from sklearn.base import clone

    model = clone(base)
    x = encode_matrix(train.X, schema)
    if sample_weight is None:
        model.fit(x, train.y)
    else:
        model.fit(x, train.y, sample_weight=sample_weight)
    return _Fitted(model, lambda s: np.asarray(model.predict_proba(encode_matrix(s.X, schema)))[:, 1])


def _design(train: TabularSplit, exclude: str) -> Callable[[TabularSplit], np.ndarray]:
    """A numeric design matrix for LFR: signed-log, standardized numerics and one-hot categoricals.

    Statistics come from ``train``; ``exclude`` (the sensitive column) is left out.
    A missing numeric is 0 after standardization (the training mean); a missing or
    unseen category is all zeros.
    """
    schema = train.schema
    num_keep = [j for j, c in enumerate(schema.numeric) if c.name != exclude]
    cat_keep = [j for j, c in enumerate(schema.categorical) if c.name != exclude]
    x_num, _ = encode_frame(train.X, schema)
    z = np.sign(x_num[:, num_keep]) * np.log1p(np.abs(x_num[:, num_keep]))
    mean = np.nanmean(z, axis=0) if len(z) else np.zeros(len(num_keep))
    std = np.nanstd(z, axis=0)
    std = np.where(std > 0, std, 1.0)

    def transform(split: TabularSplit) -> np.ndarray:
        x_n, x_c = encode_frame(split.X, schema)
        zn = (np.sign(x_n[:, num_keep]) * np.log1p(np.abs(x_n[:, num_keep])) - mean) / std
        parts = [np.nan_to_num(zn, nan=0.0)]
        for j in cat_keep:
            width = len(schema.categorical[j].categories)
            onehot = np.zeros((len(split), width + 1))
            onehot[np.arange(len(split)), x_c[:, j]] = 1.0
            parts.append(onehot[:, 1:])  # code 0 (missing or unseen): all zeros
        return np.hstack(parts).astype(np.float64)

    return transform


# -- result ----------------------------------------------------------------------------------
@dataclass
class RemediationResult:
    """Before/after figures of one remediation on the test split.

    Attributes
    ----------
    method, sensitive : str
    before, after : FairnessSummary
        The base model (threshold 0.5) and the remediated model on the same rows.
    model : object
        The fitted remediation: a predictor (reweighing, mindiff), a
        :class:`ThresholdOptimizer` or a :class:`LearnedFairRepresentation`.
    predictions : dict of str to ndarray
        ``before`` and ``after`` 0/1 predictions on the test rows.
    fit_time_s : float
        Seconds to fit the remediated model (the base model not included for ``threshold``).
    details : dict
        Method-specific figures (for example the thresholds' expected accuracy on valid,
        or LFR's final loss terms).
    """

    method: str
    sensitive: str
    before: FairnessSummary
    after: FairnessSummary
    model: Any
    predictions: dict[str, np.ndarray] = field(repr=False)
    fit_time_s: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy_cost(self) -> float:
        """Accuracy lost by remediating (negative when it improved)."""
        return self.before.accuracy - self.after.accuracy

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "sensitive": self.sensitive,
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "accuracy_cost": self.accuracy_cost,
            "fit_time_s": self.fit_time_s,
            "details": {k: v for k, v in self.details.items() if isinstance(v, (int, float, str, bool))},
        }

    def table(self) -> str:
        """A plain-text before/after table."""
        rows = [("", "accuracy", "DPD", "EOD")]
        for name, s in (("before", self.before), ("after", self.after)):
            rows.append((name, f"{s.accuracy:.4f}", f"{s.demographic_parity_difference:.4f}",
                         f"{s.equalized_odds_difference:.4f}"))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"{self.method} on {self.sensitive!r}"]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# -- the entry point -------------------------------------------------------------------------
def _groups(split: TabularSplit, sensitive: str, what: str) -> np.ndarray:
    if sensitive not in split.frame.columns:
        raise DataError(
            f"Sensitive column {sensitive!r} is not in the {what} split; its columns are {list(split.frame.columns)}."
        )
    values = split.frame[sensitive]
    if values.isna().any():
        raise DataError(
            f"Sensitive column {sensitive!r} has {int(values.isna().sum())} missing values in the {what} split; "
            "fill them (for example with 'unknown') or drop those rows."
        )
    return values.astype(str).to_numpy()


def remediate(
    method: str,
    train: TabularSplit,
    valid: TabularSplit,
    test: TabularSplit,
    *,
    sensitive: str,
    base: Any = "gbm",
    constraint: str = "demographic_parity",
    tolerance: float = 0.0,
    seed: int = 0,
    mlp_config: Any = None,
    base_params: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> RemediationResult:
    """Remediate a binary classifier for group fairness and measure it before and after on ``test``.

    Parameters
    ----------
    method : {"reweighing", "mindiff", "threshold", "lfr"}
    train, valid, test : TabularSplit
        One data set's splits (``modelyard.data.load(...)``). ``valid`` early-stops the
        base model and, for ``threshold``, is where the thresholds are chosen.
    sensitive : str
        The sensitive column (it may or may not be a feature).
    base : {"gbm", "lightgbm", "mlp"} or scikit-learn classifier, default="gbm"
        The base model: modelyard's gradient boosting, LightGBM on the encoded matrix,
        the torch MLP, or any estimator with ``fit(X, y, sample_weight=...)`` and
        ``predict_proba`` (cloned, fitted on the encoded matrix). ``mindiff`` needs
        ``"mlp"``. ``lfr`` replaces the model; the base is only the "before".
    constraint : str, default="demographic_parity"
        For ``threshold``: ``demographic_parity``, ``equalized_odds``,
        ``true_positive_rate_parity`` or ``false_positive_rate_parity``.
    tolerance : float, default=0.0
        For ``threshold``: the largest allowed gap between groups on the validation rows.
    seed : int, default=0
        Seeds the base model, the remediation and the thresholds' randomization.
    mlp_config : MLPConfig, optional
        For ``base="mlp"``.
    base_params : dict, optional
        Hyperparameters of the base model (GBMConfig / MLPConfig fields, or LightGBM's).
    options : dict, optional
        Method options: ``mindiff``: ``weight``, ``bandwidth``, ``label``; ``lfr``:
        ``n_prototypes``, ``reconstruction``, ``prediction``, ``fairness``, ``max_iter``.

    Returns
    -------
    RemediationResult
    """
    if method not in REMEDIATION_METHODS:
        raise ValueError(f"Unknown remediation method {method!r}; use one of {list(REMEDIATION_METHODS)}.")
    if isinstance(base, str) and base not in _BASES:
        raise ValueError(f"Unknown base model {base!r}; use one of {list(_BASES)} or a scikit-learn classifier.")
    if not isinstance(base, str) and not (hasattr(base, "fit") and hasattr(base, "predict_proba")):
        raise TypeError(f"base must be one of {list(_BASES)} or an estimator with fit and predict_proba; got {base!r}.")
    for name, split in (("train", train), ("valid", valid), ("test", test)):
        if not isinstance(split, TabularSplit):
            raise TypeError(f"{name} must be a TabularSplit (modelyard.data.load(...).{name}); got {type(split).__name__}.")
    if train.schema.task != "binary":
        raise DataError(
            f"Fairness remediation needs a binary target; {train.schema.target!r} is {train.schema.task}."
        )
    if method == "mindiff" and base != "mlp":
        raise ValueError("MinDiff is a penalty in the torch MLP's training loss; pass base='mlp'.")
    options = dict(options or {})
    g_tr, g_va, g_te = (_groups(s, sensitive, n) for s, n in ((train, "train"), (valid, "valid"), (test, "test")))
    common = {"seed": seed, "mlp_config": mlp_config, "base_params": base_params}

    before_model = _fit_base(base, train, valid, **common)
    before_pred = (before_model.scores(test) >= 0.5).astype(np.int64)
    details: dict[str, Any] = {}
    start = time.perf_counter()
    if method == "reweighing":
        weights = reweighing_weights(train.y, g_tr)
        fitted = _fit_base(base, train, valid, sample_weight=weights, **common)
        model: Any = fitted.model
        after_pred = (fitted.scores(test) >= 0.5).astype(np.int64)
        details["weights"] = {f"{g}|{c}": float(weights[(g_tr == g) & (train.y == c)][0])
                              for g in np.unique(g_tr) for c in (0, 1) if ((g_tr == g) & (train.y == c)).any()}  # fmt: skip
    elif method == "mindiff":
        hook = MinDiffPenalty(g_tr, train.y, **options)
        fitted = _fit_base(base, train, valid, loss_hook=hook, **common)
        model = fitted.model
        after_pred = (fitted.scores(test) >= 0.5).astype(np.int64)
    elif method == "threshold":
        optimizer = ThresholdOptimizer(constraint, tolerance=tolerance).fit(before_model.scores(valid), valid.y, g_va)
        model = optimizer
        after_pred = optimizer.predict(before_model.scores(test), g_te, random_state=seed)
        details["valid_expected_accuracy"] = optimizer.accuracy_
    else:  # lfr
        design = _design(train, sensitive)
        lfr = LearnedFairRepresentation(**{"seed": seed, **options})
        lfr.fit(design(train), train.y, g_tr)
        model = lfr
        after_pred = lfr.predict(design(test), g_te)
        details.update(lfr.losses_)
        details["final_loss"] = lfr.loss_history_[-1]
    fit_time = time.perf_counter() - start
    before = fairness_summary(test.y, before_pred, g_te)
    after = fairness_summary(test.y, after_pred, g_te)
    if not math.isfinite(after.accuracy):  # pragma: no cover - fairness_summary refuses NaN
        raise FloatingPointError("The remediated model produced NaN predictions.")
    return RemediationResult(
        method=method,
        sensitive=sensitive,
        before=before,
        after=after,
        model=model,
        predictions={"before": before_pred, "after": after_pred},
        fit_time_s=fit_time,
        details=details,
    )
