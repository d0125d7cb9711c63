"""Evaluation: metrics by name and metrics per slice of the data.

Public surface::

    from modelyard.evaluate import SliceReport, evaluate_predictor, METRICS, roc_curve_points

A later issue adds a bincount-based slicing engine with confidence intervals, fairness,
robustness, drift and the validation gate; :class:`SliceReport` keeps its shape.
"""

from modelyard.evaluate._metrics import (
    CLASSIFICATION_METRICS,
    METRICS,
    REGRESSION_METRICS,
    MetricFn,
    accuracy,
    auc,
    count,
    default_metrics,
    log_loss,
    mae,
    r2,
    resolve_metrics,
    rmse,
    roc_curve_points,
)
from modelyard.evaluate._slicing import CROSS, MISSING, SliceReport, bucket_labels, evaluate_predictor

__all__ = [
    "CLASSIFICATION_METRICS",
    "CROSS",
    "METRICS",
    "MISSING",
    "MetricFn",
    "REGRESSION_METRICS",
    "SliceReport",
    "accuracy",
    "auc",
    "bucket_labels",
    "count",
    "default_metrics",
    "evaluate_predictor",
    "log_loss",
    "mae",
    "r2",
    "resolve_metrics",
    "rmse",
    "roc_curve_points",
]
