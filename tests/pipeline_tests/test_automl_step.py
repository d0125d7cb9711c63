"""The automl step in a pipeline: its model joins the candidates; its section is validated before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from modelyard import pipeline
from modelyard.errors import SpecError
from modelyard.pipeline import parse_spec

from ._synthetic import make_csv, write_spec

FAST_AUTOML = {"families": ["linear", "gbm"], "time_budget": 2, "max_trials": 3, "ensemble": "weighted",
               "metric": "accuracy"}


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_automl_model_joins_the_candidates(workdir: Path, sqlite_url: str) -> None:
    spec = write_spec(workdir / "spec.yaml", make_csv(workdir / "p.csv", n=600), automl=FAST_AUTOML,
                      train={"models": {"gbm": {"family": "gbm", "max_iter": 20}}})
    result = pipeline.run(spec, store=sqlite_url, quiet=True)
    assert [s.name for s in result.steps][:2] == ["data", "automl"]
    folder = result.root / "automl"
    board = pd.read_csv(folder / "leaderboard.csv")
    assert "test_accuracy" not in board.columns  # the step never sees the test split
    assert set(board["family"]) == {"linear", "gbm", "ensemble"}
    found = json.loads((folder / "automl.json").read_text())
    assert found["model"] == "ensemble" and found["files"]["onnx_max_abs_diff"] < 1e-5
    assert found["families"]["linear"]["completed"] == 3  # max_trials
    metrics = json.loads((result.root / "metrics.json").read_text())
    assert set(metrics["models"]) == {"automl", "gbm"}
    assert metrics["models"]["automl"]["family"] == "automl"
    # The exported model scores what the leaderboard says the ensemble scored on the validation split.
    ensemble_valid = board.loc[board["model"] == "ensemble", "valid_accuracy"].item()
    assert metrics["models"]["automl"]["valid"]["overall"]["accuracy"] == pytest.approx(ensemble_valid)
    html = (result.root / "report.html").read_text()
    assert 'id="automl"' in html and "joins the candidates as <code>automl</code>" in html
    again = pipeline.run(spec, store=sqlite_url, quiet=True)
    assert again.all_cached


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"families": ["linear", "svm"]}, "automl.families[1]: Input should be 'linear', 'gbm' or 'mlp'"),
        ({"families": ["gbm", "gbm"]}, "automl.families: 'gbm' is given twice"),
        ({"families": []}, "automl.families: List should have at least 1 item"),
        ({"time_budget": 0}, "automl.time_budget: Input should be greater than 0"),
        ({"ensemble": "voting"}, "automl.ensemble: Input should be 'weighted', 'stacked' or 'none'"),
        ({"strategy": "bayes"}, "automl.strategy: unknown search strategy 'bayes'; known: ['auto', 'cmaes', "),
        ({"metric": "count"}, "automl.metric: unknown metric 'count'; known: ["),
        ({"budget": 5}, "automl: unknown key 'budget'; allowed keys: base, candidates, ensemble, families"),
        ({"base": {"mlp": {"max_epochs": 3}}, "families": ["gbm"]}, "automl.base: 'mlp' is not one of the tuned"),
        ({"base": {"gbm": {"max_iter": 0}}}, "automl.base.gbm.max_iter: Input should be greater than or equal to 1"),
        ({"base": {"linear": {"C": "big"}}}, "automl.base.linear.C: Input should be a valid number"),
    ],
)
def test_automl_section_errors(section: dict, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "t", "data": {"source": "adult"}, "automl": section})
    assert message in str(info.value)
    assert str(info.value).startswith("Invalid spec: ")


def test_automl_name_is_reserved() -> None:
    with pytest.raises(SpecError, match="the name 'automl' is taken by the AutoML model"):
        parse_spec({"name": "t", "data": {"source": "adult"}, "automl": {},
                    "train": {"models": {"automl": {"family": "gbm"}}}})


def test_automl_defaults_resolve() -> None:
    spec = parse_spec({"name": "t", "data": {"source": "adult"}, "automl": {}})
    resolved = spec.resolved()["automl"]
    assert resolved["families"] == ["linear", "gbm", "mlp"]
    assert resolved["time_budget"] == 60.0 and resolved["ensemble"] == "weighted" and resolved["strategy"] == "auto"
