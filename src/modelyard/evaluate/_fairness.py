"""Fairness indicators: rates per group and intersectional group, and the disparities between groups.

For a binary classifier and one or more sensitive features (a column ``"sex"``, a cross
``("sex", "race")`` for intersectional groups, or numeric buckets), at each decision
threshold ``t`` (class 1 predicted where ``P(class 1) > t``):

* per group: ``selection_rate``, ``tpr``, ``fpr``, ``fnr`` and ``precision``, with
  Poisson-bootstrap intervals, from the vectorized slicing engine
  (:class:`~modelyard.evaluate.SliceReport`);
* per sensitive feature, the disparities between its groups (groups where a rate is
  undefined, such as a TPR without positives, are left out, as fairlearn does):

  ================================  ==============================================================
  ``demographic_parity_difference``  max - min selection rate
  ``demographic_parity_ratio``       min / max selection rate (disparate impact; ``<= 1``)
  ``equalized_odds_difference``      max(TPR difference, FPR difference)
  ``equalized_odds_ratio``           min(TPR ratio, FPR ratio)
  ``equal_opportunity_difference``   max - min TPR
  ``equal_opportunity_ratio``        min / max TPR
  ``average_odds_difference``        (TPR difference + FPR difference) / 2
  ``predictive_parity_difference``   max - min precision
  ================================  ==============================================================

  These are fairlearn's definitions (``demographic_parity_difference``,
  ``equalized_odds_difference``, ...; ``average_odds_difference`` is fairlearn's
  ``equalized_odds_difference(agg="mean")``, which for two groups is the absolute value
  of AIF360's signed average odds difference when both gaps point the same way).

Every disparity can be a threshold of the validation gate (:mod:`._gate`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from modelyard.errors import DataError
from modelyard.evaluate._groups import parse_slices
from modelyard.evaluate._metrics import at_threshold, check_threshold
from modelyard.evaluate._slicing import SliceReport

__all__ = ["DISPARITIES", "INDICATORS", "FairnessReport", "disparities_from_rates", "fairness_indicators"]

#: Rates computed per group, at each decision threshold.
INDICATORS: tuple[str, ...] = ("selection_rate", "tpr", "fpr", "fnr", "precision")

#: Disparity metrics between the groups of one sensitive feature, by name -> short definition.
DISPARITIES: dict[str, str] = {
    "demographic_parity_difference": "max - min selection rate over groups",
    "demographic_parity_ratio": "min / max selection rate over groups (disparate impact)",
    "equalized_odds_difference": "max(TPR difference, FPR difference)",
    "equalized_odds_ratio": "min(TPR ratio, FPR ratio)",
    "equal_opportunity_difference": "max - min TPR over groups",
    "equal_opportunity_ratio": "min / max TPR over groups",
    "average_odds_difference": "(TPR difference + FPR difference) / 2",
    "predictive_parity_difference": "max - min precision over groups",
}

#: Which way each disparity is better: differences near 0, ratios near 1.
DISPARITY_IDEAL: dict[str, float] = {name: (1.0 if name.endswith("_ratio") else 0.0) for name in DISPARITIES}


def _name(metric: str, t: float) -> str:
    return f"{metric}@{t:g}"


def _spread(values: np.ndarray) -> tuple[float, float]:
    """(difference, ratio) over the finite values; NaN where undefined (fairlearn's convention)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    lo, hi = float(v.min()), float(v.max())
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = float(np.float64(lo) / np.float64(hi)) if hi != 0 else float("nan")
    return hi - lo, ratio


def _combine(a: float, b: float, how: str) -> float:
    """Worst (``"max"``/``"min"``) or ``"mean"`` of the TPR and FPR parts, skipping an undefined part."""
    parts = [v for v in (a, b) if not math.isnan(v)]
    if not parts:
        return float("nan")
    return float(max(parts) if how == "max" else min(parts) if how == "min" else sum(parts) / len(parts))


def disparities_from_rates(rates: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Every disparity of :data:`DISPARITIES` from per-group rates.

    Parameters
    ----------
    rates : mapping
        ``{"selection_rate": [...], "tpr": [...], "fpr": [...], "precision": [...]}``,
        one value per group (NaN where undefined).

    Returns
    -------
    dict of str to float
        NaN where no group defines the rate. The combined ones (equalized odds, average
        odds) skip an undefined part (e.g. the FPR ratio 0/0 when no group has a false
        positive) and are NaN only when both parts are.
    """
    sr_d, sr_r = _spread(np.asarray(rates["selection_rate"], dtype=np.float64))
    tpr_d, tpr_r = _spread(np.asarray(rates["tpr"], dtype=np.float64))
    fpr_d, fpr_r = _spread(np.asarray(rates["fpr"], dtype=np.float64))
    prec_d, _ = _spread(np.asarray(rates["precision"], dtype=np.float64))
    return {
        "demographic_parity_difference": sr_d,
        "demographic_parity_ratio": sr_r,
        "equalized_odds_difference": _combine(tpr_d, fpr_d, "max"),
        "equalized_odds_ratio": _combine(tpr_r, fpr_r, "min"),
        "equal_opportunity_difference": tpr_d,
        "equal_opportunity_ratio": tpr_r,
        "average_odds_difference": _combine(tpr_d, fpr_d, "mean"),
        "predictive_parity_difference": prec_d,
    }


class FairnessReport:
    """Fairness indicators per group and disparities per sensitive feature, at several thresholds.

    Computed at construction; then read through :attr:`groups`, :attr:`disparities`,
    :meth:`disparity`, :meth:`to_dict` and :meth:`to_frame`.

    Parameters
    ----------
    y_true : array-like of shape (n_rows,)
        Class indices 0 and 1.
    y_score : array-like of shape (n_rows,) or (n_rows, 2)
        P(class 1), or the probability matrix.
    frame : pandas.DataFrame
        Holds the sensitive columns, one row per element of ``y_true`` (by position).
    sensitive : list
        Slice specs (see :class:`~modelyard.evaluate.SliceReport`): a column
        (``"sex"``), a cross for intersectional groups (``("sex", "race")``), numeric
        buckets (``{"feature": "age", "buckets": [25, 45, 65]}``).
    thresholds : list of float, default=(0.5,)
        Decision thresholds in ``[0, 1]``; class 1 is predicted where ``P(class 1) > t``.
    bootstrap : int, default=0
        Poisson-bootstrap replicates for the intervals of every rate (0: none).
    confidence : float, default=0.95
    seed : int, default=0
    min_count : int or None, default=30
        Groups with fewer rows are flagged in :attr:`small`; they still count in the
        disparities (as in fairlearn), so look at the flags.

    Attributes
    ----------
    thresholds : list of float
    features : list of str
        The sensitive features' names (``"sex × race"`` for a cross).
    overall : dict
        ``{threshold: {indicator: value}}`` on all rows (plus ``count``).
    groups : dict
        ``{feature: {threshold: {group: {indicator: value}}}}`` (plus ``count``).
    intervals : dict or None
        With a bootstrap: ``{feature: {threshold: {group: {indicator: (low, high)}}}}``.
    disparities : dict
        ``{feature: {threshold: {disparity: value}}}``.
    small : dict of str to list of str
        ``{feature: [groups with fewer than min_count rows]}``.
    report : SliceReport
        The underlying sliced metrics (names ``"<indicator>@<t>"``).

    Raises
    ------
    DataError
        A sensitive column does not exist (the message lists the columns), lengths
        differ, or scores are NaN.
    ValueError
        No sensitive feature, or a threshold outside ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> frame = pd.DataFrame({"sex": ["F", "F", "M", "M"]})
    >>> r = FairnessReport(y_true=[0, 1, 0, 1], y_score=[0.2, 0.9, 0.7, 0.8], frame=frame, sensitive=["sex"])
    >>> r.disparity("demographic_parity_difference", "sex")
    0.5
    """

    def __init__(
        self,
        *,
        y_true: Any,
        y_score: Any,
        frame: pd.DataFrame,
        sensitive: Sequence[Any],
        thresholds: Sequence[float] = (0.5,),
        bootstrap: int = 0,
        confidence: float = 0.95,
        seed: int = 0,
        min_count: int | None = 30,
    ) -> None:
        specs = parse_slices(sensitive)
        if not specs:
            raise ValueError("sensitive must name at least one feature, e.g. sensitive=['sex'] or [('sex', 'race')].")
        if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence) or not thresholds:
            raise ValueError(f"thresholds must be a non-empty list of numbers in [0, 1]; got {thresholds!r}.")
        ts: list[float] = []
        for t in thresholds:
            v = check_threshold(t, "decision threshold")
            if v not in ts:
                ts.append(v)
        score = np.asarray(y_score)
        if score.ndim == 2 and score.shape[1] != 2:
            raise DataError(
                f"Fairness indicators are for binary classifiers; y_score has {score.shape[1]} columns. "
                "Slice a multiclass model's metrics with SliceReport instead."
            )
        metrics = {_name(m, t): at_threshold(m, t) for t in ts for m in INDICATORS}
        self.report = SliceReport(
            y_true=y_true, y_score=y_score, frame=frame, slices=sensitive, metrics=metrics, task="binary",
            bootstrap=bootstrap, confidence=confidence, seed=seed, min_count=min_count,
        )
        self.thresholds = ts
        self.features = list(self.report.slices)
        self.small = dict(self.report.small)
        r = self.report

        def split(values: Mapping[str, Any], t: float) -> dict[str, Any]:
            out = {"count": values["count"]}
            out.update({m: values[_name(m, t)] for m in INDICATORS})
            return out

        self.overall = {t: split(r.overall, t) for t in ts}
        self.groups = {f: {t: {g: split(v, t) for g, v in r.by_slice[f].items()} for t in ts} for f in self.features}
        self.intervals = None
        if r.intervals is not None:
            self.intervals = {
                f: {t: {g: {m: v[_name(m, t)] for m in INDICATORS} for g, v in r.intervals["by_slice"][f].items()}
                    for t in ts}
                for f in self.features
            }
        self.disparities = {
            f: {t: disparities_from_rates({m: [v[m] for v in self.groups[f][t].values()] for m in INDICATORS})
                for t in ts}
            for f in self.features
        }

    def disparity(self, name: str, feature: str, threshold: float | None = None) -> float:
        """One disparity of one sensitive feature at one threshold (default: the first).

        Raises
        ------
        ValueError
            On an unknown disparity, feature or threshold; the message lists the known ones.
        """
        if name not in DISPARITIES:
            raise ValueError(f"Unknown fairness metric {name!r}; known: {list(DISPARITIES)}.")
        if feature not in self.disparities:
            raise ValueError(f"Unknown sensitive feature {feature!r}; this report has {self.features}.")
        t = self.thresholds[0] if threshold is None else float(threshold)
        if t not in self.disparities[feature]:
            raise ValueError(f"No threshold {threshold!r} in this report; it has {self.thresholds}.")
        return self.disparities[feature][t][name]

    def to_frame(self) -> pd.DataFrame:
        """Long table of the rates: ``feature``, ``group``, ``threshold``, ``indicator``, ``value``, ``count``,
        ``small`` (and ``lower``, ``upper`` with a bootstrap)."""
        rows = []
        for f in self.features:
            flagged = set(self.small.get(f, []))
            for t in self.thresholds:
                for g, values in self.groups[f][t].items():
                    for m in INDICATORS:
                        row = [f, g, t, m, values[m], int(values["count"]), g in flagged]
                        if self.intervals is not None:
                            row += list(self.intervals[f][t][g][m])
                        rows.append(row)
        columns = ["feature", "group", "threshold", "indicator", "value", "count", "small"]
        if self.intervals is not None:
            columns += ["lower", "upper"]
        return pd.DataFrame(rows, columns=columns)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (NaN becomes ``None``; thresholds become strings as JSON keys)."""

        def clean(v: Any) -> Any:
            if isinstance(v, dict):
                return {(f"{k:g}" if isinstance(k, float) else k): clean(x) for k, x in v.items()}
            if isinstance(v, (tuple, list)):
                return [clean(x) for x in v]
            if isinstance(v, float) and math.isnan(v):
                return None
            return v

        out = {
            "thresholds": list(self.thresholds),
            "features": list(self.features),
            "indicators": list(INDICATORS),
            "overall": clean(self.overall),
            "groups": clean(self.groups),
            "disparities": clean(self.disparities),
            "small": {f: list(g) for f, g in self.small.items()},
            "min_count": self.report.min_count,
        }
        if self.intervals is not None:
            out["intervals"] = clean(self.intervals)
            out["confidence"] = self.report.confidence
            out["replicates"] = self.report.replicates
        return out

    def __repr__(self) -> str:
        t = self.thresholds[0]
        shown = ", ".join(f"{f}: DPD {self.disparities[f][t]['demographic_parity_difference']:.4g}"
                          for f in self.features)
        return f"FairnessReport(thresholds={self.thresholds}, {shown} at t={t:g})"


def fairness_indicators(predictor: Any, frame: pd.DataFrame, *, sensitive: Sequence[Any], **options: Any
                        ) -> FairnessReport:
    """Fairness indicators of a binary predictor on raw rows (features, target, sensitive columns).

    Parameters
    ----------
    predictor : Predictor
        A binary classifier.
    frame : pandas.DataFrame
        Rows holding the model's feature columns, its target and the sensitive columns.
    sensitive : list
        As in :class:`FairnessReport`.
    **options
        ``thresholds``, ``bootstrap``, ``confidence``, ``seed``, ``min_count``.

    Raises
    ------
    DataError
        The model is not a binary classifier, or the target or a feature column is missing.
    """
    from modelyard.data._schema import encode_target

    if predictor.task != "binary":
        raise DataError(f"Fairness indicators need a binary classifier; this model does {predictor.task}.")
    schema = predictor.schema
    columns = [str(c) for c in frame.columns]
    if schema.target not in columns:
        raise DataError(f"Target column {schema.target!r} is not in the frame; columns are {columns}.")
    missing = [c for c in predictor.feature_names if c not in columns]
    if missing:
        raise DataError(f"The frame lacks the model's feature columns {missing}; columns are {columns}.")
    y_true = encode_target(frame[schema.target], schema)
    proba = predictor.predict_proba(frame[list(predictor.feature_names)])
    return FairnessReport(y_true=y_true, y_score=proba, frame=frame, sensitive=sensitive, **options)
