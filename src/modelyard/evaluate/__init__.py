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
* Metrics are plain callables ``fn(y_true, y_score) -> float`` found by name in
  :data:`METRICS`; ``"<metric>@<t>"`` asks a decision metric at threshold ``t``.
"""

from modelyard.evaluate._accumulate import SliceAccumulator, evaluate_parquet
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
    "METRICS",
    "MISSING",
    "REGRESSION_METRICS",
    "THRESHOLD_METRICS",
    "MetricFn",
    "SliceAccumulator",
    "SliceReport",
    "accuracy",
    "at_threshold",
    "auc",
    "auc_pr",
    "brier",
    "bucket_labels",
    "confusion_matrix",
    "count",
    "default_metrics",
    "evaluate_parquet",
    "evaluate_predictor",
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
