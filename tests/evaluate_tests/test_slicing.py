"""SliceReport: per-group values against masking each group and calling scikit-learn directly
(the fairlearn test pattern), bucket and cross assignment, invariants, and errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from modelyard.data import TabularSplit, infer_schema
from modelyard.errors import DataError
from modelyard.evaluate import MISSING, SliceReport, evaluate_predictor
from modelyard.evaluate._slicing import _UNKNOWN_COLUMN
from modelyard.models import BasePredictor

RTOL = 1e-12  # same float64 values summed in another order

SEXES = ["Female", "Male"]
RACES = ["Amer-Indian-Eskimo", "Asian-Pac-Islander", "Black", "Other", "White"]


def _frame(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "sex": rng.choice(SEXES, size=n),
            "race": rng.choice(RACES, size=n, p=[0.02, 0.08, 0.1, 0.05, 0.75]),
            "age": rng.integers(17, 90, size=n).astype(float),
            "hours": rng.integers(1, 99, size=n),
        }
    )
    frame.loc[rng.random(n) < 0.05, "sex"] = None
    frame.loc[rng.random(n) < 0.05, "age"] = np.nan
    frame.loc[:4, "age"] = [25.0, 45.0, 65.0, 24.999, 64.0]  # exact edges land in the upper bucket
    return frame


def _classification(seed: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    proba = rng.dirichlet(np.ones(k), size=n)
    y = np.array([rng.choice(k, p=0.5 * p + 0.5 / k) for p in proba])
    return y, proba


def _sk(metric: str, y: np.ndarray, s: np.ndarray, k: int) -> float:
    """The reference: scikit-learn on the given rows."""
    if metric == "count":
        return float(len(y))
    if metric == "accuracy":
        return skm.accuracy_score(y, s.argmax(axis=1))
    if metric == "log_loss":
        return skm.log_loss(y, s, labels=list(range(k)))
    if metric == "auc":
        present = np.unique(y)
        if present.size < 2:
            return math.nan
        if k == 2:
            return skm.roc_auc_score(y, s[:, 1])
        if present.size == k:
            return skm.roc_auc_score(y, s, multi_class="ovr", labels=list(range(k)))
        return float(np.mean([skm.roc_auc_score(y == c, s[:, c]) for c in present]))
    if metric == "rmse":
        return float(np.sqrt(skm.mean_squared_error(y, s)))
    if metric == "mae":
        return skm.mean_absolute_error(y, s)
    if metric == "r2":
        return skm.r2_score(y, s) if np.ptp(y) > 0 else math.nan
    raise AssertionError(metric)


def _masks(frame: pd.DataFrame, column: str) -> dict[str, np.ndarray]:
    """Group masks built independently of the code under test."""
    s = frame[column]
    out = {str(v): (s == v).to_numpy() for v in s.dropna().unique()}
    if s.isna().any():
        out[MISSING] = s.isna().to_numpy()
    return out


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_by_slice_equals_masking_each_group(k: int, seed: int) -> None:
    frame = _frame(seed, 600)
    y, proba = _classification(seed, 600, k)
    report = SliceReport(
        y_true=y, y_score=proba, frame=frame, slices=["sex", "race"], task="binary" if k == 2 else "multiclass"
    )
    assert report.metrics == ["count", "accuracy", "auc", "log_loss"]
    for column in ("sex", "race"):
        masks = _masks(frame, column)
        assert set(report.by_slice[column]) == set(masks)
        for group, mask in masks.items():
            for metric, value in report.by_slice[column][group].items():
                expected = _sk(metric, y[mask], proba[mask], k)
                assert value == pytest.approx(expected, rel=RTOL, nan_ok=True), f"{column=} {group=} {metric=}"


def test_regression_by_slice_equals_masking() -> None:
    frame = _frame(2, 400)
    rng = np.random.default_rng(0)
    y = rng.normal(50, 10, size=400)
    pred = y + rng.normal(0, 4, size=400)
    report = SliceReport(y_true=y, y_score=pred, frame=frame, slices=["race"], task="regression")
    assert report.metrics == ["count", "rmse", "mae", "r2"]
    for group, mask in _masks(frame, "race").items():
        for metric, value in report.by_slice["race"][group].items():
            assert value == pytest.approx(_sk(metric, y[mask], pred[mask], 0), rel=RTOL), f"{group=} {metric=}"


def test_buckets_put_each_row_in_the_right_bucket() -> None:
    frame = _frame(3, 500)
    y, proba = _classification(3, 500, 2)
    report = SliceReport(
        y_true=y, y_score=proba, frame=frame, slices=[{"feature": "age", "buckets": [25, 45, 65]}], task="binary"
    )
    groups = report.by_slice["age"]
    assert list(groups) == ["< 25", "[25, 45)", "[45, 65)", ">= 65", MISSING]

    def bucket(a: float) -> str:  # row by row, the obvious way
        if math.isnan(a):
            return MISSING
        if a < 25:
            return "< 25"
        if a < 45:
            return "[25, 45)"
        if a < 65:
            return "[45, 65)"
        return ">= 65"

    expected = np.array([bucket(a) for a in frame["age"]])
    assert [expected[i] for i in range(5)] == ["[25, 45)", "[45, 65)", ">= 65", "< 25", "[45, 65)"]
    for label, values in groups.items():
        mask = expected == label
        assert values["count"] == mask.sum(), label
        assert values["accuracy"] == pytest.approx(_sk("accuracy", y[mask], proba[mask], 2), rel=RTOL), label


def test_bucket_labels_of_fractional_edges() -> None:
    frame = pd.DataFrame({"x": [0.1, 0.3, 2.0, -1.0]})
    report = SliceReport(
        y_true=np.array([0, 1, 0, 1]), y_score=np.full(4, 0.5), frame=frame,
        slices=[{"feature": "x", "buckets": [0.25, 1.5]}], task="binary",
    )
    assert list(report.by_slice["x"]) == ["< 0.25", "[0.25, 1.5)", ">= 1.5"]
    assert [g["count"] for g in report.by_slice["x"].values()] == [2, 1, 1]


def test_crosses() -> None:
    frame = _frame(4, 800)
    y, proba = _classification(4, 800, 2)
    report = SliceReport(
        y_true=y, y_score=proba, frame=frame,
        slices=[("sex", "race"), ("race", {"feature": "age", "buckets": [40]})], task="binary",
    )
    assert report.slices == ["sex × race", "race × age"]
    cross = report.by_slice["sex × race"]
    sex, race = _masks(frame, "sex"), _masks(frame, "race")
    expected_groups = {f"{a} × {b}": sex[a] & race[b] for a in sex for b in race if (sex[a] & race[b]).any()}
    assert set(cross) == set(expected_groups)
    assert list(cross)[:5] == [f"Female × {r}" for r in RACES]  # first column varies slowest, values sorted
    assert list(cross)[-1].startswith(f"{MISSING} × ")
    for group, mask in expected_groups.items():
        for metric in ("count", "accuracy", "auc", "log_loss"):
            assert cross[group][metric] == pytest.approx(
                _sk(metric, y[mask], proba[mask], 2), rel=RTOL, nan_ok=True
            ), f"{group=} {metric=}"
    young_white = (frame["race"] == "White") & (frame["age"] < 40)
    assert report.by_slice["race × age"]["White × < 40"]["count"] == young_white.sum()


def test_single_class_slice_gives_nan_auc_and_difference_skips_it() -> None:
    frame = pd.DataFrame({"g": ["a"] * 4 + ["b"] * 4})
    y = np.array([0, 0, 0, 0, 0, 1, 0, 1])
    score = np.array([0.1, 0.6, 0.2, 0.3, 0.2, 0.9, 0.4, 0.3])
    report = SliceReport(y_true=y, y_score=score, frame=frame, slices=["g"], task="binary")
    assert math.isnan(report.by_slice["g"]["a"]["auc"])
    assert report.by_slice["g"]["b"]["auc"] == pytest.approx(skm.roc_auc_score(y[4:], score[4:]))
    assert report.difference("auc") == {"g": 0.0}  # only one group has an AUC
    assert report.to_dict()["by_slice"]["g"]["a"]["auc"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariants(seed: int) -> None:
    frame = _frame(seed, 700)
    y, proba = _classification(seed, 700, 3)
    slices = ["sex", "race", ("sex", "race"), {"feature": "age", "buckets": [30, 60]}, "hours"]
    report = SliceReport(y_true=y, y_score=proba, frame=frame, slices=slices, task="multiclass")
    for name, groups in report.by_slice.items():
        assert sum(g["count"] for g in groups.values()) == 700, name  # every row in exactly one group
    for metric in report.metrics:
        assert report.overall[metric] == pytest.approx(_sk(metric, y, proba, 3), rel=RTOL), metric
    # A slice whose groups all share one value has that value everywhere.
    everyone = SliceReport(
        y_true=y, y_score=proba, frame=frame.assign(all="x"), slices=["all"], task="multiclass"
    )
    assert everyone.by_slice["all"]["x"] == everyone.overall


def test_difference() -> None:
    frame = _frame(5, 500)
    y, proba = _classification(5, 500, 2)
    report = SliceReport(y_true=y, y_score=proba, frame=frame, slices=["race", "sex"], task="binary")
    acc = {g: v["accuracy"] for g, v in report.by_slice["race"].items()}
    assert report.difference("accuracy")["race"] == pytest.approx(max(acc.values()) - min(acc.values()))
    to_overall = report.difference("accuracy", method="to_overall")["race"]
    assert to_overall == pytest.approx(max(abs(v - report.overall["accuracy"]) for v in acc.values()))
    with pytest.raises(ValueError, match=r"Unknown metric 'rmse'; this report has \['count', 'accuracy'"):
        report.difference("rmse")


def test_value_order_and_labels() -> None:
    frame = pd.DataFrame({"n": [10, 2, 2.0, 3, np.nan, 10], "flag": [True, False, True, True, False, False]})
    report = SliceReport(
        y_true=np.array([0, 1, 0, 1, 0, 1]), y_score=np.full(6, 0.4), frame=frame, slices=["n", "flag"],
        task="binary",
    )
    assert list(report.by_slice["n"]) == ["2", "3", "10", MISSING]  # numeric order; 2 and 2.0 are one group
    assert report.by_slice["n"]["2"]["count"] == 2
    assert list(report.by_slice["flag"]) == ["False", "True"]


def test_to_dict_is_json_and_to_frame_is_long() -> None:
    frame = _frame(6, 300)
    y, proba = _classification(6, 300, 2)
    report = SliceReport(
        y_true=y, y_score=proba, frame=frame, slices=["sex", {"feature": "age", "buckets": [40]}],
        metrics=["accuracy", "auc"], task="binary",
    )
    d = report.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["metrics"] == ["count", "accuracy", "auc"]
    assert d["slices"] == [
        {"name": "sex", "features": ["sex"]},
        {"name": "age", "features": ["age"], "buckets": {"age": [40.0]}},
    ]
    assert isinstance(d["overall"]["count"], int) and d["n_rows"] == 300
    long = report.to_frame()
    assert list(long.columns) == ["slice", "value", "metric", "score", "small"]
    n_groups = sum(len(t) for t in report.by_slice.values())
    assert len(long) == n_groups * 3
    row = long[(long.slice == "sex") & (long.value == "Female") & (long.metric == "auc")]
    assert row.score.item() == report.by_slice["sex"]["Female"]["auc"]


def test_unknown_column_lists_the_columns() -> None:
    frame = _frame(0, 20)
    y, proba = _classification(0, 20, 2)
    with pytest.raises(DataError) as info:
        SliceReport(y_true=y, y_score=proba, frame=frame, slices=["sex", ("race", "Age")], task="binary")
    assert info.value.args[0] == _UNKNOWN_COLUMN.format(
        column="Age", index=1, columns=["sex", "race", "age", "hours"],
        hint="Did you mean 'age'? Names are case-sensitive.",
    )


@pytest.mark.parametrize(
    ("slices", "error", "message"),
    [
        ("sex", TypeError, r"It should probably be a list containing it: slices=\['sex'\]"),
        ([42], TypeError, r"slices\[0\] must be a column name"),
        ([{"feature": "age"}], ValueError, r'slices\[0\] must have exactly the keys "feature" and "buckets"'),
        ([{"feature": "age", "buckets": []}], ValueError, r"slices\[0\]\.buckets must be a non-empty list"),
        ([{"feature": "age", "buckets": [45, 25]}], ValueError, r"strictly increasing; got \[45, 25\]"),
        ([{"feature": "age", "buckets": ["a"]}], ValueError, r"finite numbers"),
        (["race", "sex", "race"], ValueError, r"Slice 'race' is given twice \(slices\[0\] and slices\[2\]\)"),
        ([("sex", "sex")], ValueError, r"crosses a column with itself"),
        ([{"feature": "sex", "buckets": [1]}], DataError, r"Column 'sex' \(slices\[0\]\) is bucketed but holds"),
    ],
)
def test_bad_slice_specs(slices: object, error: type[Exception], message: str) -> None:
    frame = _frame(0, 20)
    y, proba = _classification(0, 20, 2)
    with pytest.raises(error, match=message):
        SliceReport(y_true=y, y_score=proba, frame=frame, slices=slices, task="binary")  # type: ignore[arg-type]


def test_bad_inputs() -> None:
    frame = _frame(0, 20)
    y, proba = _classification(0, 20, 2)
    with pytest.raises(DataError, match=r"frame has 19 rows but y_true has 20"):
        SliceReport(y_true=y, y_score=proba, frame=frame.iloc[:19], slices=["sex"], task="binary")
    with pytest.raises(DataError, match=r"y_score has 1 rows with NaN"):
        SliceReport(y_true=y, y_score=np.where(np.arange(20)[:, None] == 3, np.nan, proba), frame=frame,
                    slices=["sex"], task="binary")
    with pytest.raises(ValueError, match=r"task must be one of"):
        SliceReport(y_true=y, y_score=proba, frame=frame, slices=[], task="classification")
    no_slices = SliceReport(y_true=y, y_score=proba, frame=None, slices=[], task="binary")
    assert no_slices.by_slice == {} and no_slices.overall["count"] == 20


class _Logistic(BasePredictor):
    """A fixed logistic model on one numeric feature; enough to exercise the predictor path."""

    def _forward(self, X: pd.DataFrame) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-(X["hours"].to_numpy(dtype=float) - 40.0) / 10.0))
        return np.column_stack([1.0 - p, p])


def test_evaluate_predictor() -> None:
    frame = _frame(7, 400)
    rng = np.random.default_rng(7)
    frame["income"] = np.where(rng.random(400) < frame["hours"] / 100, ">50K", "<=50K")
    schema = infer_schema(frame[["hours", "income"]], "income")
    model = _Logistic(schema)
    split = TabularSplit(frame, schema)
    report = evaluate_predictor(model, split, slices=["sex", ("sex", "race")])
    y = split.y
    by_hand = SliceReport(
        y_true=y, y_score=model.predict_proba(frame[["hours"]]), frame=frame, slices=["sex", ("sex", "race")],
        task="binary",
    )
    assert report.to_dict() == by_hand.to_dict()
    assert report.overall["accuracy"] == pytest.approx(skm.accuracy_score(y, model.predict(frame[["hours"]])))
    with pytest.raises(DataError, match=r"Target column 'income' is not in the frame"):
        evaluate_predictor(model, frame.drop(columns="income"), slices=["sex"])


def test_labels_and_targets_are_checked() -> None:
    y, proba = _classification(0, 6, 3)
    frame = pd.DataFrame({0: list("aabbcc"), 1: list("xyxyxy")})  # non-string column labels
    report = SliceReport(y_true=y, y_score=proba, frame=frame, slices=["0", ("0", "1")], task="multiclass")
    assert list(report.by_slice["0"]) == ["a", "b", "c"]
    dupes = pd.DataFrame([[1, 2], [3, 4]], columns=["g", "g"])
    with pytest.raises(DataError, match=r"Slice column 'g' \(in slices\[0\]\) appears 2 times"):
        SliceReport(y_true=np.array([0, 1]), y_score=np.array([0.2, 0.7]), frame=dupes, slices=["g"], task="binary")
    with pytest.raises(DataError, match=r"y_true holds class index 3, outside 0\.\.2"):
        SliceReport(y_true=np.array([0, 3]), y_score=proba[:2], frame=None, slices=[], task="multiclass")
    with pytest.raises(DataError, match=r"task='binary' but y_score has 3 columns; use task='multiclass'"):
        SliceReport(y_true=y, y_score=proba, frame=None, slices=[], task="binary")
    with pytest.raises(DataError, match=r"y_true must hold class indices 0\.\.1 \(got dtype <U1\)"):
        SliceReport(y_true=np.array(["a", "b"]), y_score=np.array([0.2, 0.7]), frame=None, slices=[], task="binary")
    with pytest.raises(DataError, match=r"finite numbers for a regression task"):
        SliceReport(y_true=np.array([1.0, np.nan]), y_score=np.array([1.0, 2.0]), frame=None, slices=[],
                    task="regression")
