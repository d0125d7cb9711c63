"""The validation gate on constructed data: absolute and per-slice change checks, fairness bounds,
the blessing artifact, and clear errors on bad gates and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from modelyard.data._schema import Column, Schema
from modelyard.errors import DataError, SchemaMismatchError, SpecError
from modelyard.evaluate import (
    FairnessReport,
    evaluate_gate,
    gate_predictors,
    load_gate,
    parse_gate,
)
from modelyard.evaluate._gate import check_baseline_schema


def _rows(n_correct: int, n_wrong: int, *, label: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Labels and P(class 1) with exactly ``n_correct`` right and ``n_wrong`` wrong decisions."""
    y = np.full(n_correct + n_wrong, label)
    right, wrong = (0.9, 0.1) if label == 1 else (0.1, 0.9)
    return y, np.r_[np.full(n_correct, right), np.full(n_wrong, wrong)]


@pytest.fixture()
def constructed() -> dict:
    """Group A: 100 rows, all right (50 of each class). Group B: 100 rows, 70 right.

    Candidate accuracy: A 1.0, B 0.7, overall 0.85. The baseline gets 75 right in B
    (overall 0.875): the candidate drops 0.05 in B and 0.025 overall, nothing in A.
    """
    ya1, sa1 = _rows(50, 0, label=1)
    ya0, sa0 = _rows(50, 0, label=0)
    yb1, sb1 = _rows(35, 15, label=1)
    yb0, sb0 = _rows(35, 15, label=0)
    y = np.r_[ya1, ya0, yb1, yb0]
    cand = np.r_[sa1, sa0, sb1, sb0]
    base = cand.copy()
    base[135:140] = 0.9  # five of B's wrong positives (rows 135..149) made right
    frame = pd.DataFrame({"g": ["A"] * 100 + ["B"] * 100, "tiny": ["x"] * 195 + ["y"] * 5})
    return {"y": y, "cand": cand, "base": base, "frame": frame}


def _check(result, kind: str, metric: str, sl: str, group: str | None):
    found = [c for c in result.checks if (c.kind, c.metric, c.slice, c.group) == (kind, metric, sl, group)]
    assert len(found) == 1, [(c.kind, c.metric, c.slice, c.group) for c in result.checks]
    return found[0]


def test_absolute_threshold_fails_in_one_slice(constructed: dict) -> None:
    gate = {"slices": ["g"], "thresholds": {"accuracy": {"min": 0.8}}}
    r = evaluate_gate(gate, y_true=constructed["y"], y_score=constructed["cand"], frame=constructed["frame"],
                      task="binary")
    assert not r.blessed
    assert [(c.slice, c.group, c.status) for c in r.checks] == [
        ("overall", None, "pass"), ("g", "A", "pass"), ("g", "B", "fail")]
    failed = r.failed[0]
    assert failed.value == pytest.approx(0.7, abs=1e-15) and failed.lower == 0.8 and failed.threshold == ">= 0.8"
    assert failed.reason == "accuracy 0.7 on g = B is below the minimum 0.8"
    assert r.summary().startswith("NOT BLESSED: 1 of 3 checks failed; first: accuracy 0.7 on g = B")
    passing = evaluate_gate({"slices": ["g"], "thresholds": {"accuracy": {"min": 0.7, "max": 1.0}}},
                            y_true=constructed["y"], y_score=constructed["cand"], frame=constructed["frame"],
                            task="binary")
    assert passing.blessed and passing.counts == {"checks": 3, "passed": 3, "failed": 0, "skipped": 0}
    overall_only = evaluate_gate({"slices": ["g"], "thresholds": {"accuracy": {"min": 0.8, "slices": "overall"}}},
                                 y_true=constructed["y"], y_score=constructed["cand"], frame=constructed["frame"],
                                 task="binary")
    assert overall_only.blessed and len(overall_only.checks) == 1


def test_change_checks_are_per_slice(constructed: dict) -> None:
    gate = {"slices": ["g"], "change": {"accuracy": {"max_drop": 0.03}}}
    r = evaluate_gate(gate, y_true=constructed["y"], y_score=constructed["cand"], frame=constructed["frame"],
                      task="binary", baseline_score=constructed["base"])
    overall = _check(r, "change", "accuracy", "overall", None)
    a = _check(r, "change", "accuracy", "g", "A")
    b = _check(r, "change", "accuracy", "g", "B")
    # Exact by construction: 5 of 200 rows flip (0.025 overall), 5 of B's 100 rows (0.05).
    assert overall.baseline == pytest.approx(0.875, abs=1e-15) and overall.delta == pytest.approx(-0.025, abs=1e-15)
    assert overall.status == "pass" and overall.lower == pytest.approx(0.845, abs=1e-15)
    assert a.delta == 0.0 and a.status == "pass"
    assert b.delta == pytest.approx(-0.05, abs=1e-15) and b.status == "fail"
    assert "dropped by 0.05 (0.75 -> 0.7), more than the allowed 0.03" in b.reason
    assert not r.blessed and r.failed == [b]
    # A drop of exactly the bound is allowed (0.7 - 0.75 is -0.05000000000000004 in floats; the
    # comparison has 1e-12 of slack), and a rise bound judges the other way.
    assert evaluate_gate({"slices": ["g"], "change": {"accuracy": {"max_drop": 0.05}}}, y_true=constructed["y"],
                         y_score=constructed["cand"], frame=constructed["frame"], task="binary",
                         baseline_score=constructed["base"]).blessed
    flipped = evaluate_gate({"slices": ["g"], "change": {"accuracy": {"max_rise": 0.01}}}, y_true=constructed["y"],
                            y_score=constructed["base"], frame=constructed["frame"], task="binary",
                            baseline_score=constructed["cand"])
    assert [(c.slice, c.group) for c in flipped.failed] == [("overall", None), ("g", "B")]


def test_small_and_undefined_groups_are_skipped_not_failed(constructed: dict) -> None:
    gate = {"slices": ["tiny"], "min_count": 10, "thresholds": {"accuracy": {"min": 0.99}, "auc": {"min": 0.5}}}
    r = evaluate_gate(gate, y_true=constructed["y"], y_score=constructed["cand"], frame=constructed["frame"],
                      task="binary")
    tiny = _check(r, "absolute", "accuracy", "tiny", "y")
    assert tiny.status == "skipped" and tiny.reason == "tiny = y has 5 rows, fewer than min_count 10"
    assert tiny.count == 5
    # The five "y" rows are all of class 0: AUC is undefined there (and the group is small anyway).
    auc_y = _check(r, "absolute", "auc", "tiny", "y")
    assert auc_y.status == "skipped" and auc_y.value is None
    assert _check(r, "absolute", "accuracy", "overall", None).status == "fail"  # 0.85 < 0.99 still fails
    undefined = evaluate_gate({"slices": ["tiny"], "min_count": 1, "thresholds": {"auc": {"min": 0.5}}},
                              y_true=constructed["y"], y_score=constructed["cand"], frame=constructed["frame"],
                              task="binary")
    check = _check(undefined, "absolute", "auc", "tiny", "y")
    assert check.status == "skipped" and "undefined" in check.reason and undefined.blessed


def test_fairness_bounds_use_the_fairness_engine() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    frame = pd.DataFrame({"sex": rng.choice(["F", "M"], n), "race": rng.choice(["a", "b", "c"], n)})
    y = rng.integers(0, 2, n)
    score = np.clip(0.3 * y + 0.5 * rng.random(n) + 0.15 * (frame["sex"] == "M"), 0, 1)
    fair = FairnessReport(y_true=y, y_score=score, frame=frame, sensitive=["sex", ("sex", "race")],
                          thresholds=[0.5, 0.6])
    dpd = fair.disparity("demographic_parity_difference", "sex", 0.5)
    eod = fair.disparity("equalized_odds_difference", "sex × race", 0.6)
    gate = {"slices": ["sex"], "thresholds": {
        "demographic_parity_difference": {"max": round(dpd, 3) + 0.001},  # over the gate's slices
        "equalized_odds_difference": {"max": eod - 0.001, "over": [["sex", "race"]], "threshold": 0.6},
    }}
    r = evaluate_gate(gate, y_true=y, y_score=score, frame=frame, task="binary")
    d = _check(r, "absolute", "demographic_parity_difference", "sex", None)
    e = _check(r, "absolute", "equalized_odds_difference", "sex × race", None)
    assert d.value == dpd and d.status == "pass"
    assert e.value == eod and e.status == "fail"
    assert "groups of sex × race at threshold 0.6" in e.reason
    assert set(r.fairness) == {"candidate"}
    # Change of a disparity against a baseline whose scores ignore sex: judged on the measured rise.
    base = np.clip(0.3 * y + 0.5 * rng.random(n), 0, 1)
    base_dpd = FairnessReport(y_true=y, y_score=base, frame=frame, sensitive=["sex"]).disparity(
        "demographic_parity_difference", "sex")
    r2 = evaluate_gate({"change": {"demographic_parity_difference": {"max_rise": 0.0, "over": ["sex"]}}},
                       y_true=y, y_score=score, frame=frame, task="binary", baseline_score=base)
    c = r2.checks[0]
    assert c.baseline == base_dpd and c.delta == pytest.approx(dpd - base_dpd, abs=1e-15)
    assert c.status == ("fail" if dpd > base_dpd else "pass")


def test_blessing_is_written_either_way(constructed: dict, tmp_path: Path) -> None:
    for min_acc, blessed in ((0.6, True), (0.8, False)):
        r = evaluate_gate({"slices": ["g", "tiny"], "thresholds": {"accuracy": {"min": min_acc}, "auc": {"min": 0}}},
                          y_true=constructed["y"], y_score=constructed["cand"], frame=constructed["frame"],
                          task="binary")
        path = r.write_blessing(tmp_path / f"out{min_acc}" / "blessing.json", candidate={"path": "m.onnx"})
        text = path.read_text()
        doc = json.loads(text)  # strict JSON: the NaN AUC of the one-class group is null, not NaN
        assert "NaN" not in text
        assert doc["blessed"] is blessed and doc["candidate"] == {"path": "m.onnx"}
        assert doc["counts"]["checks"] == len(doc["checks"]) == len(r.checks)
        assert [c["status"] for c in doc["failed"]] == ["fail"] * (0 if blessed else 1)
        assert doc["gate"]["thresholds"]["accuracy"]["min"] == min_acc
        assert doc["metrics"]["candidate"]["by_slice"]["g"]["B"]["accuracy"] == pytest.approx(0.7)
        assert sorted(p.name for p in path.parent.iterdir()) == ["blessing.json"]  # no temporary file left


def test_gate_file_loading(tmp_path: Path) -> None:
    gate = tmp_path / "gates" / "gate.yaml"
    gate.parent.mkdir()
    gate.write_text("baseline: ../prod/model.onnx\nthresholds:\n  accuracy: {min: 0.8}\n"
                    "change:\n  log_loss: {max_rise: 0.02, slices: [sex]}\n")
    g = load_gate(gate)
    assert g.baseline == str((tmp_path / "prod" / "model.onnx").resolve())
    assert g.metrics() == ["accuracy", "log_loss"] and g.change["log_loss"].slices == ["sex"]
    example = load_gate(Path(__file__).resolve().parents[2] / "examples" / "gate.yaml")
    assert "demographic_parity_difference" in example.thresholds
    evil = tmp_path / "evil.yaml"
    evil.write_text("thresholds: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="is not valid YAML"):
        load_gate(evil)
    with pytest.raises(SpecError, match="does not exist"):
        load_gate(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(SpecError, match="is empty"):
        load_gate(tmp_path / "empty.yaml")


@pytest.mark.parametrize(("gate", "message"), [
    ({"thresholds": {"acuracy": {"min": 0.8}}},
     (r"thresholds: unknown metric 'acuracy'; known metrics: \['accuracy', 'auc'.*fairness metrics: "
      r"\['demographic_parity_difference'")),
    ({"thresholds": {"accuracy": {}}}, r"thresholds\.accuracy: give min, max or both"),
    ({"thresholds": {"accuracy": 0.8}}, r"thresholds\.accuracy: must be a mapping such as \{min: 0\.8\} \(got 0\.8\)"),
    ({"thresholds": {"accuracy": {"min": 0.9, "max": 0.8}}}, r"min 0\.9 is above max 0\.8"),
    ({"thresholds": {"accuracy": {"min": 0.8, "minimum": 1}}},
     r"thresholds\.accuracy: unknown key 'minimum'; allowed keys: min, max, slices, over, threshold"),
    ({"change": {"accuracy": {"max_drop": -0.01}}}, r"change\.accuracy\.max_drop: Input should be greater than"),
    ({"thresholds": {"accuracy": {"min": 0.8, "over": ["sex"]}}}, r"over and threshold are for fairness metrics"),
    ({"thresholds": {"demographic_parity_difference": {"max": 0.1, "slices": ["sex"]}}}, r"use over: \[\.\.\.\]"),
    ({"thresholds": {"recall@1.5": {"min": 0.8}}}, r"must lie in \[0, 1\]"),
    ({"slices": [{"feature": "age"}]}, r"slices\[0\] must have exactly the keys"),
    ({"tresholds": {}}, r"unknown key 'tresholds'; allowed keys: baseline, slices, min_count, thresholds, change"),
    (["accuracy"], "the top level must be a mapping"),
])
def test_bad_gates_are_clear(gate: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_gate(gate)


def test_bad_inputs_at_evaluation(constructed: dict) -> None:
    y, cand, frame = constructed["y"], constructed["cand"], constructed["frame"]
    with pytest.raises(DataError, match=r"Slice column 'sex' .* Columns are: \['g', 'tiny'\]"):
        evaluate_gate({"slices": ["sex"], "thresholds": {"accuracy": {"min": 0.5}}}, y_true=y, y_score=cand,
                      frame=frame, task="binary")
    with pytest.raises(SpecError, match=r"thresholds\.accuracy\.slices: unknown slice 'h'; the gate's slices are "
                                        r"\['g'\]"):
        evaluate_gate({"slices": ["g"], "thresholds": {"accuracy": {"min": 0.5, "slices": ["h"]}}}, y_true=y,
                      y_score=cand, frame=frame, task="binary")
    with pytest.raises(SpecError, match=r"'rmse' does not fit a binary task; metrics for binary: \["):
        evaluate_gate({"thresholds": {"rmse": {"max": 1}}}, y_true=y, y_score=cand, frame=frame, task="binary")
    with pytest.raises(SpecError, match="fairness metric for binary classifiers; this is a regression task"):
        evaluate_gate({"thresholds": {"demographic_parity_difference": {"max": 0.1, "over": ["g"]}}},
                      y_true=y.astype(float), y_score=cand, frame=frame, task="regression")
    with pytest.raises(SpecError, match="a fairness metric needs sensitive features"):
        evaluate_gate({"thresholds": {"demographic_parity_difference": {"max": 0.1}}}, y_true=y, y_score=cand,
                      frame=frame, task="binary")
    with pytest.raises(SpecError, match=r"change checks \(accuracy\) but no baseline model was given"):
        evaluate_gate({"change": {"accuracy": {"max_drop": 0.01}}}, y_true=y, y_score=cand, frame=frame,
                      task="binary")
    with pytest.raises(DataError, match="y_true has 200 rows but y_score has shape \\(199,\\)"):
        evaluate_gate({}, y_true=y, y_score=cand[:-1], frame=frame, task="binary")
    with pytest.raises(DataError, match="baseline's predictions have 150 rows but there are 200 labels"):
        evaluate_gate({}, y_true=y, y_score=cand, frame=frame, task="binary", baseline_score=cand[:150])
    nan = cand.copy()
    nan[[3, 7]] = np.nan
    with pytest.raises(DataError, match="y_score has 2 rows with NaN"):
        evaluate_gate({}, y_true=y, y_score=nan, frame=frame, task="binary")
    with pytest.raises(DataError, match="Baseline model: y_score has 2 rows with NaN"):
        evaluate_gate({}, y_true=y, y_score=cand, frame=frame, task="binary", baseline_score=nan)


class _Fake:
    """A Predictor stand-in: fixed schema and scores."""

    def __init__(self, schema: Schema, proba: np.ndarray) -> None:
        self.schema, self._proba = schema, proba
        self.task, self.feature_names = schema.task, schema.feature_names

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self._proba[: len(X)]


def _schema(**change: object) -> Schema:
    base = {"features": (Column("age", "numeric"), Column("g", "categorical", ("A", "B"))), "target": "y",
            "task": "binary", "classes": ("no", "yes")}
    return Schema(**{**base, **change})


def test_predictors_schema_mismatch_and_nan_predictions(constructed: dict) -> None:
    frame = constructed["frame"].assign(age=np.arange(200.0), y=np.where(constructed["y"] == 1, "yes", "no"))
    proba = np.column_stack([1 - constructed["cand"], constructed["cand"]])
    cand = _Fake(_schema(), proba)
    r = gate_predictors(cand, frame, {"slices": ["g"], "thresholds": {"accuracy": {"min": 0.8}}},
                        baseline=_Fake(_schema(), proba))
    assert not r.blessed and r.baseline is not None
    assert _check(r, "absolute", "accuracy", "g", "B").value == pytest.approx(0.7)
    other = _Fake(_schema(features=(Column("age", "categorical", ("1",)), Column("h", "numeric"))), proba)
    with pytest.raises(SchemaMismatchError, match=r"different input schema.*no input columns \['g'\]; extra input "
                                                  r"columns \['h'\]; other column kinds: age \(categorical instead "
                                                  r"of numeric\)"):
        gate_predictors(cand, frame, None, baseline=other)
    with pytest.raises(SchemaMismatchError, match=r"classes \['yes', 'no'\] instead of \['no', 'yes'\]"):
        check_baseline_schema(cand, SimpleNamespace(schema=_schema(classes=("yes", "no"))))
    bad = proba.copy()
    bad[10] = np.nan
    with pytest.raises(DataError, match=r"The baseline model returned NaN or infinite predictions on 1 of 200 rows "
                                        r"\(first at row 10\)"):
        gate_predictors(cand, frame, None, baseline=_Fake(_schema(), bad))
    with pytest.raises(DataError, match=r"Target column 'label' is not in the data; columns are"):
        gate_predictors(cand, frame, None, target="label")
    with pytest.raises(DataError, match=r"lacks the model's feature columns \['age'\]"):
        gate_predictors(cand, frame.drop(columns="age"), None)


def test_regression_gate_per_slice() -> None:
    # Group A: errors of ±1 (RMSE 1); group B: errors of ±3 (RMSE 3); overall RMSE sqrt(5).
    y = np.arange(40, dtype=float)
    err = np.r_[np.tile([1.0, -1.0], 10), np.tile([3.0, -3.0], 10)]
    frame = pd.DataFrame({"g": ["A"] * 20 + ["B"] * 20})
    gate = {"slices": ["g"], "min_count": 1, "thresholds": {"rmse": {"max": 2.5}},
            "change": {"mae": {"max_rise": 0.5}}}
    r = evaluate_gate(gate, y_true=y, y_score=y + err, frame=frame, task="regression", baseline_score=y + err / 2)
    rmse = {(c.slice, c.group): c for c in r.checks if c.metric == "rmse"}
    assert rmse[("overall", None)].value == pytest.approx(np.sqrt(5.0), abs=1e-12)
    assert [rmse[k].status for k in (("overall", None), ("g", "A"), ("g", "B"))] == ["pass", "pass", "fail"]
    mae = {(c.slice, c.group): c for c in r.checks if c.metric == "mae"}
    # The baseline's errors are half as large: MAE rises by 1 overall, 0.5 in A (allowed) and 1.5 in B.
    assert mae[("g", "A")].delta == pytest.approx(0.5, abs=1e-12) and mae[("g", "A")].status == "pass"
    assert mae[("g", "B")].delta == pytest.approx(1.5, abs=1e-12) and mae[("g", "B")].status == "fail"
    assert "rose by 1.5 (1.5 -> 3), more than the allowed 0.5" in mae[("g", "B")].reason
    assert r.candidate.metrics == ["count", "rmse", "mae", "r2"]  # the task's defaults, plus the gate's
