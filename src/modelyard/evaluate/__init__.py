"""Evaluation: metrics by name, and metrics per slice of the data, fast.

Public surface::

    from modelyard.evaluate import SliceReport, SliceAccumulator, evaluate_parquet, METRICS

* :class:`SliceReport` computes every metric overall and on every group of every slice
  (values of a column, crosses, numeric buckets by edges or quantiles, named
  predicates), with Poisson-bootstrap intervals (``bootstrap=200``), small-group flags
  and confusion matrices. Built-in metrics run on a vectorized engine (``np.bincount``
  sufficient statistics, exact AUCs from one sort); custom callables are called per
  group, as fairlearn's ``MetricFrame`` does.
* :class:`SliceAccumulator` (create, add, merge, extract) and :func:`evaluate_parquet`
  evaluate data larger than memory in chunks, with the same result as in memory.
* :class:`FairnessReport` gives selection rate, TPR, FPR, FNR and precision per group and
  intersectional group at several thresholds (with intervals), and the disparities
  between groups (demographic parity, equalized odds, equal opportunity, ...).
* :func:`evaluate_gate` / :func:`gate_predictors` judge a candidate against a gate
  (:func:`load_gate`): absolute bounds and change against a baseline, per slice, and
  fairness bounds; the :class:`GateResult` lists every check and writes the blessing.
* :func:`remediate` applies a fairness remediation (reweighing, MinDiff, per-group
  threshold optimization, learning fair representations) and reports accuracy,
  demographic parity and equalized odds differences before and after.
* Metrics are plain callables ``fn(y_true, y_score) -> float`` found by name in
  :data:`METRICS`; ``"<metric>@<t>"`` asks a decision metric at threshold ``t``.
"""

from modelyard.evaluate._accumulate import SliceAccumulator, evaluate_parquet
from modelyard.evaluate._fairness import (
    DISPARITIES,
    INDICATORS,
    FairnessReport,
    fairness_indicators,
)
from modelyard.evaluate._gate import (
    Check,
    GateConfig,
    GateResult,
    check_baseline_schema,
    evaluate_gate,
    gate_predictors,
    load_gate,
    parse_gate,
)
from modelyard.evaluate._metrics import (
    CLASSIFICATION_METRICS,
    METRICS,
    REGRESSION_METRICS,
    THRESHOLD_METRICS,
    MetricFn,
    accuracy,
    at_threshold,
    auc,
    auc_pr,
    brier,
    confusion_matrix,
    count,
    default_metrics,
    expected_calibration_error,
    f1,
    fnr,
    fpr,
    log_loss,
    lookup_metric,
    mae,
    precision,
    r2,
    recall,
    resolve_metrics,
    rmse,
    roc_curve_points,
    selection_rate,
    tnr,
    tpr,
)
from modelyard.evaluate._remediation import (
    REMEDIATION_METHODS,
    FairnessSummary,
    RemediationResult,
    fairness_summary,
    remediate,
    reweighing_weights,
)
from modelyard.evaluate._remediation_lfr import LearnedFairRepresentation
from modelyard.evaluate._remediation_mindiff import MinDiffPenalty, mmd_penalty
from modelyard.evaluate._remediation_threshold import ThresholdOptimizer
from modelyard.evaluate._slicing import (
    CROSS,
    MISSING,
    SliceReport,
    bucket_labels,
    evaluate_predictor,
)

__all__ = [
    "CLASSIFICATION_METRICS",
    "CROSS",
    "DISPARITIES",
    "INDICATORS",
    "METRICS",
    "MISSING",
    "REGRESSION_METRICS",
    "REMEDIATION_METHODS",
    "THRESHOLD_METRICS",
    "Check",
    "FairnessReport",
    "FairnessSummary",
    "GateConfig",
    "GateResult",
    "LearnedFairRepresentation",
    "MetricFn",
    "MinDiffPenalty",
    "RemediationResult",
    "SliceAccumulator",
    "SliceReport",
    "ThresholdOptimizer",
    "accuracy",
    "at_threshold",
    "auc",
    "auc_pr",
    "brier",
    "bucket_labels",
    "check_baseline_schema",
    "confusion_matrix",
    "count",
    "default_metrics",
    "evaluate_gate",
    "evaluate_parquet",
    "evaluate_predictor",
    "expected_calibration_error",
    "f1",
    "fairness_indicators",
    "fairness_summary",
    "fnr",
    "fpr",
    "gate_predictors",
    "load_gate",
    "log_loss",
    "lookup_metric",
    "mae",
    "mmd_penalty",
    "parse_gate",
    "precision",
    "r2",
    "recall",
    "remediate",
    "resolve_metrics",
    "reweighing_weights",
    "rmse",
    "roc_curve_points",
    "selection_rate",
    "tnr",
    "tpr",
]
