"""Bad input to the sliced-metrics engine: every error names the problem and the fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelyard.errors import DataError
from modelyard.evaluate import SliceReport, at_threshold, lookup_metric

FRAME = pd.DataFrame({"sex": ["F", "M", "F", "M"], "age": [20.0, 35.0, 50.0, np.nan], "n": [1, 2, 3, 4]})
Y = np.array([0, 1, 1, 0])
S = np.array([0.2, 0.9, 0.4, 0.3])


def _report(**kw: Any) -> SliceReport:
    args: dict[str, Any] = {"y_true": Y, "y_score": S, "frame": FRAME, "slices": ["sex"], "task": "binary"}
    args.update(kw)
    return SliceReport(**args)


@pytest.mark.parametrize(
    ("slices", "error", "message"),
    [
        (["Sex"], DataError, (r"Slice column 'Sex' \(in slices\[0\]\) does not exist\. Columns are: "
                             r"\['sex', 'age', 'n'\]\. Did you mean 'sex'\?")),
        ([("sex", "race")], DataError, r"'race' \(in slices\[0\]\) does not exist\. Columns are: \['sex', 'age'"),
        ([{"name": "old", "where": "Age > 40"}], DataError,
         r"Predicate slices\[0\] \('old'\) failed on the frame: .*Age.*Columns are: \['sex', 'age', 'n'\]"),
        ([{"name": "x", "where": lambda f: f["n"]}], DataError,
         r"Predicate slices\[0\] \('x'\) must give booleans; got dtype int64\. Compare explicitly"),
        ([{"name": "x", "where": lambda f: f[f["n"] > 1]}], DataError,
         r"must give one boolean per row .* not frame\[frame\['age'\] < 30\]"),
        ([{"name": "x", "where": lambda f: np.array([True, False])}], DataError,
         r"Predicate slices\[0\] \('x'\) gave 2 values for 4 rows"),
        ([{"name": "x", "where": 3}], TypeError, r"slices\[0\]\.where must be a pandas expression"),
        ([{"name": "", "where": "n > 1"}], TypeError, r"slices\[0\]\.name must be a non-empty string"),
        ([{"feature": "age", "quantiles": 1}], ValueError, r"slices\[0\]\.quantiles must be at least 2"),
        ([{"feature": "age", "quantiles": [0.0, 0.5]}], ValueError, r"probabilities strictly between 0 and 1"),
        ([{"feature": "sex", "quantiles": 2}], DataError, r"Column 'sex' \(slices\[0\]\) is bucketed but holds"),
        ([{"feature": "age", "edges": [1]}], ValueError, (r'slices\[0\] must have exactly the keys "feature" and '
                                                         r'"buckets" \(edges\), "feature" and "quantiles", or "name"')),
    ],
)
def test_bad_slices(slices: list[Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        _report(slices=slices)


def test_quantiles_of_an_empty_column() -> None:
    with pytest.raises(DataError, match=r"Column 'age' \(slices\[0\]\) has no values, so it has no quantiles"):
        _report(frame=FRAME.assign(age=np.nan), slices=[{"feature": "age", "quantiles": 2}])


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"thresholds": [0.5, 1.5]}, ValueError, r"must lie in \[0, 1\], since scores are probabilities; got 1\.5"),
        ({"thresholds": [-0.1]}, ValueError, r"must lie in \[0, 1\]"),
        ({"thresholds": ["0.5"]}, TypeError, r"must be a number in \[0, 1\]; got '0\.5'"),
        ({"thresholds": 0.5}, TypeError, r"thresholds must be a list of numbers in \[0, 1\]; got 0\.5"),
        ({"thresholds": [0.3], "metrics": ["auc"]}, ValueError, r"no metric takes one; add one of \['accuracy'"),
        ({"metrics": ["recall@1.5"]}, ValueError, r"must lie in \[0, 1\]"),
        ({"metrics": ["recall@high"]}, ValueError, r"'high' is not a threshold; write it as <metric>@<number"),
        ({"metrics": ["auc@0.3"]}, ValueError, r"Metric 'auc' takes no decision threshold; ones that do"),
        ({"metrics": ["rmse"]}, ValueError, r"Metric 'rmse' does not apply to a binary task"),
        ({"bootstrap": -1}, ValueError, r"bootstrap must be an integer >= 0; got -1"),
        ({"bootstrap": 10, "confidence": 95}, ValueError, r"confidence must be a number strictly between 0 and 1"),
        ({"min_count": 2.5}, ValueError, r"min_count must be an integer >= 0"),
        ({"ece_bins": 0}, ValueError, r"ece_bins must be an integer >= 1"),
    ],
)
def test_bad_options(kw: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        _report(**kw)


def test_thresholds_need_a_binary_task() -> None:
    p = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"Decision thresholds apply to binary tasks; this is a multiclass task"):
        SliceReport(y_true=np.array([0, 1, 2, 0]), y_score=p, frame=None, slices=[], task="multiclass",
                    metrics=["precision"], thresholds=[0.3])
    with pytest.raises(ValueError, match=r"Metric 'precision@0.3' does not apply to a multiclass task"):
        SliceReport(y_true=np.array([0, 1, 2, 0]), y_score=p, frame=None, slices=[], task="multiclass",
                    metrics=["precision@0.3"])
    with pytest.raises(ValueError, match=r"Metric 'tpr' does not apply to a multiclass task"):
        SliceReport(y_true=np.array([0, 1, 2, 0]), y_score=p, frame=None, slices=[], task="multiclass",
                    metrics=["tpr"])


@pytest.mark.parametrize(
    ("y_score", "message"),
    [
        (S[:3], r"y_true has 4 rows but y_score has shape \(3,\); pass one prediction per row"),
        (np.full((4, 3), 1 / 3), r"task='binary' but y_score has 3 columns; use task='multiclass'"),
        (np.array([0.2, np.nan, 0.4, 0.3]), r"y_score has 1 rows with NaN or infinite values"),
        (np.array(["a", "b", "c", "d"]), r"y_score must hold numbers; got dtype <U1"),
        (np.zeros((4, 2, 2)), r"y_score must be probabilities of shape \(n_rows, n_classes\)"),
    ],
)
def test_bad_scores(y_score: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        _report(y_score=y_score)


def test_metric_helpers() -> None:
    recall_03 = at_threshold("recall", 0.3)
    assert recall_03.__name__ == "recall@0.3" and recall_03.threshold == 0.3
    assert recall_03(Y, S) == 1.0
    assert lookup_metric("recall@0.3")(Y, S) == 1.0
