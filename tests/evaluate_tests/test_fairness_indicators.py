"""Fairness indicators: per-group rates and disparities against fairlearn, invariants, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equal_opportunity_ratio,
    equalized_odds_difference,
    equalized_odds_ratio,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import precision_score

from modelyard.errors import DataError
from modelyard.evaluate import DISPARITIES, INDICATORS, FairnessReport

# Rates are ratios of integer counts, computed in float64 both here and in fairlearn /
# scikit-learn; they agree to rounding, far inside 1e-12.
TOL = 1e-12
THRESHOLDS = [0.3, 0.5, 0.72]


def _data(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "sex": rng.choice(["F", "M"], n, p=[0.4, 0.6]),
        "race": rng.choice(["a", "b", "c", "d"], n, p=[0.5, 0.3, 0.15, 0.05]),
    })
    y = (rng.random(n) < np.where(frame["sex"] == "M", 0.45, 0.3)).astype(np.int64)
    score = np.clip(0.35 * y + 0.5 * rng.random(n) + 0.12 * (frame["race"] == "b") + 0.05 * (frame["sex"] == "M"),
                    0.0, 1.0)
    return y, score, frame


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    return _data()


@pytest.fixture(scope="module")
def report(data: tuple) -> FairnessReport:
    y, score, frame = data
    return FairnessReport(y_true=y, y_score=score, frame=frame, sensitive=["sex", "race", ("sex", "race")],
                          thresholds=THRESHOLDS)


_FEATURES = {"sex": ["sex"], "race": ["race"], "sex × race": ["sex", "race"]}


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("feature", list(_FEATURES))
def test_disparities_match_fairlearn(data: tuple, report: FairnessReport, feature: str, threshold: float) -> None:
    y, score, frame = data
    pred = (score > threshold).astype(np.int64)
    sf = frame[_FEATURES[feature]]
    got = report.disparities[feature][threshold]
    expected = {
        "demographic_parity_difference": demographic_parity_difference(y, pred, sensitive_features=sf),
        "demographic_parity_ratio": demographic_parity_ratio(y, pred, sensitive_features=sf),
        "equalized_odds_difference": equalized_odds_difference(y, pred, sensitive_features=sf),
        "equalized_odds_ratio": equalized_odds_ratio(y, pred, sensitive_features=sf),
        "equal_opportunity_difference": equal_opportunity_difference(y, pred, sensitive_features=sf),
        "equal_opportunity_ratio": equal_opportunity_ratio(y, pred, sensitive_features=sf),
        "average_odds_difference": equalized_odds_difference(y, pred, sensitive_features=sf, agg="mean"),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=TOL), (name, feature, threshold)
    assert set(got) == set(DISPARITIES)


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_rates_per_intersectional_group_match_metricframe(data: tuple, report: FairnessReport,
                                                          threshold: float) -> None:
    y, score, frame = data
    pred = (score > threshold).astype(np.int64)
    mf = MetricFrame(
        metrics={"selection_rate": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate,
                 "fnr": false_negative_rate,
                 "precision": lambda t, p: precision_score(t, p, zero_division=np.nan)},
        y_true=y, y_pred=pred, sensitive_features=frame[["sex", "race"]],
    )
    groups = report.groups["sex × race"][threshold]
    assert len(groups) == len(mf.by_group) == 8
    for (sex, race), row in mf.by_group.iterrows():
        ours = groups[f"{sex} × {race}"]
        for m in INDICATORS:
            assert ours[m] == pytest.approx(row[m], abs=TOL, nan_ok=True), (sex, race, m)
    for m in INDICATORS:
        assert report.overall[threshold][m] == pytest.approx(mf.overall[m], abs=TOL)


def test_independent_predictions_give_zero_disparity() -> None:
    # The same (label, score) rows repeated in every group: every rate is equal across
    # groups by construction, so every difference is exactly 0 and every ratio exactly 1.
    rng = np.random.default_rng(3)
    base_y = rng.integers(0, 2, 300)
    base_s = rng.random(300)
    groups = ["a", "b", "c"]
    y = np.tile(base_y, len(groups))
    s = np.tile(base_s, len(groups))
    frame = pd.DataFrame({"g": np.repeat(groups, 300), "h": np.tile(np.repeat(["x", "y"], 150), 3)})
    r = FairnessReport(y_true=y, y_score=s, frame=frame, sensitive=["g"], thresholds=[0.2, 0.5, 0.9])
    for t in r.thresholds:
        d = r.disparities["g"][t]
        for name, value in d.items():
            assert value == (1.0 if name.endswith("_ratio") else 0.0), (name, t)


def test_invariants(report: FairnessReport) -> None:
    for feature in report.features:
        for t in report.thresholds:
            d = report.disparities[feature][t]
            rates = report.groups[feature][t]
            tpr = np.array([v["tpr"] for v in rates.values()])
            fpr = np.array([v["fpr"] for v in rates.values()])
            sr = np.array([v["selection_rate"] for v in rates.values()])
            # Equal opportunity is the TPR gap; the parity ratio is min/max selection rate.
            assert d["equal_opportunity_difference"] == np.nanmax(tpr) - np.nanmin(tpr)
            assert d["demographic_parity_ratio"] == np.nanmin(sr) / np.nanmax(sr)
            assert d["demographic_parity_difference"] == np.nanmax(sr) - np.nanmin(sr)
            for name in ("demographic_parity_ratio", "equalized_odds_ratio", "equal_opportunity_ratio"):
                assert 0.0 <= d[name] <= 1.0
            # The worst of two gaps is at least either gap and at least their mean.
            assert d["equalized_odds_difference"] >= d["equal_opportunity_difference"]
            assert d["equalized_odds_difference"] >= np.nanmax(fpr) - np.nanmin(fpr)
            assert d["average_odds_difference"] <= d["equalized_odds_difference"]
            for v in rates.values():  # FNR is 1 - TPR on every group
                assert v["fnr"] == pytest.approx(1.0 - v["tpr"], abs=1e-15)


def test_intervals_per_group_and_threshold(data: tuple) -> None:
    y, score, frame = data
    r = FairnessReport(y_true=y, y_score=score, frame=frame, sensitive=["sex"], thresholds=[0.4, 0.6],
                       bootstrap=60, seed=1)
    assert r.intervals is not None
    for t in r.thresholds:
        for g, rates in r.groups["sex"][t].items():
            for m in INDICATORS:
                lo, hi = r.intervals["sex"][t][g][m]
                assert 0.0 <= lo <= hi <= 1.0
                # 95% intervals of a rate on ~1,600 rows are a few points wide; only a rate
                # of exactly 0 or 1 (every replicate the same) gives a zero-width interval.
                assert hi - lo < 0.2
                assert (hi > lo) == (0.0 < rates[m] < 1.0), (g, m, rates[m])
    table = r.to_frame()
    assert {"lower", "upper"} <= set(table.columns)
    assert len(table) == 2 * 2 * len(INDICATORS)  # groups × thresholds × indicators
    doc = r.to_dict()
    assert doc["disparities"]["sex"]["0.4"]["demographic_parity_difference"] == \
        r.disparity("demographic_parity_difference", "sex", 0.4)


def test_small_groups_are_flagged(data: tuple) -> None:
    y, score, frame = data
    report = FairnessReport(y_true=y, y_score=score, frame=frame, sensitive=[("sex", "race")], min_count=200)
    counts = report.groups["sex × race"][0.5]
    small = {g for g, v in counts.items() if v["count"] < 200}
    assert small == {"F × d", "M × d"}  # about 80 and 120 rows; the others have 240 or more
    assert set(report.small["sex × race"]) == small
    assert report.to_frame().query("small")["group"].unique().tolist() == sorted(small)


def test_bad_input() -> None:
    y, score, frame = _data(200)
    with pytest.raises(DataError, match=r"'gender'.*Columns are: \['sex', 'race'\]"):
        FairnessReport(y_true=y, y_score=score, frame=frame, sensitive=["gender"])
    with pytest.raises(DataError, match="y_true has 200 rows but y_score has shape"):
        FairnessReport(y_true=y, y_score=score[:-1], frame=frame, sensitive=["sex"])
    bad = score.copy()
    bad[5] = np.nan
    with pytest.raises(DataError, match="NaN"):
        FairnessReport(y_true=y, y_score=bad, frame=frame, sensitive=["sex"])
    with pytest.raises(DataError, match="binary classifiers; y_score has 3 columns"):
        FairnessReport(y_true=y % 3, y_score=np.full((200, 3), 1 / 3), frame=frame, sensitive=["sex"])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        FairnessReport(y_true=y, y_score=score, frame=frame, sensitive=["sex"], thresholds=[1.5])
    with pytest.raises(ValueError, match="at least one feature"):
        FairnessReport(y_true=y, y_score=score, frame=frame, sensitive=[])
    r = FairnessReport(y_true=y, y_score=score, frame=frame, sensitive=["sex"])
    with pytest.raises(ValueError, match="Unknown fairness metric 'dpd'; known"):
        r.disparity("dpd", "sex")
    with pytest.raises(ValueError, match=r"Unknown sensitive feature 'race'; this report has \['sex'\]"):
        r.disparity("demographic_parity_difference", "race")
