"""``modelyard remediate``: the before/after table, the three files, and one-line errors that write nothing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.cli import main
from modelyard.data import from_csv
from modelyard.evaluate import remediate

FIGURES = ("accuracy", "demographic_parity_difference", "equalized_odds_difference")


def _biased_csv(path: Path, n: int = 1200, seed: int = 0) -> Path:
    """A binary label that depends strongly on the group, plus a three-class column ``tier``."""
    rng = np.random.default_rng(seed)
    group = rng.choice(["A", "B"], n, p=[0.55, 0.45])
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    p = 1 / (1 + np.exp(-(1.2 * x1 + 0.5 * x2 + np.where(group == "A", 1.2, -1.2))))
    y = (rng.random(n) < p).astype(int)
    pd.DataFrame({"x1": x1, "x2": x2, "grp": group, "label": np.where(y == 1, "yes", "no"),
                  "tier": np.array(["low", "mid", "high"])[np.digitize(p, [0.33, 0.66])]}).to_csv(path, index=False)
    return path


def test_remediate_end_to_end(tmp_path: Path) -> None:
    """A real process: the table, the three files, and figures equal to remediate() on the same split."""
    data = _biased_csv(tmp_path / "biased.csv")
    exe = Path(sys.executable).parent / "modelyard"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "modelyard"]
    proc = subprocess.run([*cmd, "remediate", "biased.csv", "--target", "label", "--sensitive", "grp", "--method",
                           "threshold", "--method", "reweighing", "--out", "rem", "--seed", "3"], check=False, cwd=tmp_path,
                          env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "rem"
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(out)
    assert "Fairness remediation on 'grp'" in proc.stdout
    assert [ln.split()[1] for ln in lines if ln.startswith("│")] == ["before", "threshold", "reweighing"]
    assert sorted(p.name for p in out.iterdir()) == ["remediation.csv", "remediation.json", "remediation.png"]
    assert (out / "remediation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "remediation.json").read_text())
    assert doc["methods"] == ["threshold", "reweighing"] and doc["seed"] == 3 and doc["base"] == "gbm"
    with open(out / "remediation.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["before", "threshold", "reweighing"]

    # The same split (from_csv with the CLI's defaults) through the Python API gives the same figures.
    # Same rows and seed, single-threaded fits: equal up to float rounding (1e-12); the CSV holds the
    # floats' repr, so it round-trips exactly.
    dataset = from_csv(data, target="label", valid=0.1, test=0.2, seed=3)
    for method in ("threshold", "reweighing"):
        ref = remediate(method, dataset.train, dataset.valid, dataset.test, sensitive="grp", seed=3)
        for f in FIGURES:
            assert doc["results"][method]["after"][f] == pytest.approx(getattr(ref.after, f), abs=1e-12), (method, f)
            assert float(rows[method][f]) == pytest.approx(getattr(ref.after, f), abs=1e-12)
            assert float(rows["before"][f]) == pytest.approx(getattr(ref.before, f), abs=1e-12)
        assert float(rows[method]["accuracy_cost"]) == pytest.approx(ref.accuracy_cost, abs=1e-12)
    # The base model follows the label's dependence on the group (DPD well above 0.3); thresholds for
    # demographic parity close most of it on the 240 test rows (selection-rate noise about 0.045 per group).
    before, after = doc["before"], doc["results"]["threshold"]["after"]
    assert before["demographic_parity_difference"] > 0.3
    assert after["demographic_parity_difference"] < 0.5 * before["demographic_parity_difference"]


def test_help_explains_the_command(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["remediate", "--help"]) == 0
    text = capsys.readouterr().out
    for needle in ("Usage:", "--sensitive", "--method", "--base", "--constraint", "--tolerance", "--out",
                   "remediation.png", "demographic parity", "Hardt"):
        assert needle in text, needle
    assert main(["--help"]) == 0
    assert "remediate" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--target", "label", "--sensitive", "gender"], 1,
         ("error: --sensitive: sensitive column 'gender' is not in the data; columns are ['x1', 'x2', 'grp', 'label', "
         "'tier'].")),
        (["--target", "tier", "--sensitive", "grp"], 1,
         ("error: Fairness remediation needs a binary target; 'tier' is multiclass (3 classes). Give --target a column "
         "with two values.")),
        (["--target", "x1", "--sensitive", "grp"], 1,
         ("error: Fairness remediation needs a binary target; 'x1' is a regression target. Give --target a column "
         "with two values.")),
        (["--target", "label", "--sensitive", "grp", "--method", "threshold", "--method", "fairlearn"], 2,
         ("error: --method: unknown remediation method(s) ['fairlearn']; known: reweighing, mindiff, threshold, lfr "
         "(got ['threshold', 'fairlearn']).")),
        (["--target", "label", "--sensitive", "grp", "--method", "mindiff"], 2,
         ("error: --method: mindiff is a penalty in the torch MLP's training loss; set the base to mlp or remove "
         "mindiff (got ['mindiff']).")),
        (["--target", "label", "--sensitive", "grp", "--constraint", "parity"], 2,
         ("error: --constraint: Input should be 'demographic_parity', 'equalized_odds', 'true_positive_rate_parity' "
         "or 'false_positive_rate_parity' (got 'parity').")),
        (["--target", "label", "--sensitive", "grp", "--tolerance", "-0.1"], 2,
         "error: --tolerance: Input should be greater than or equal to 0 (got -0.1)."),
        (["--target", "label", "--sensitive", "grp", "--base", "svm"], 2,
         "error: --base: Input should be 'gbm' or 'mlp' (got 'svm')."),
        (["--sensitive", "grp"], 2,
         "error: --target is required for a file (biased.csv); name the binary column to predict."),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], args: list[str], code: int,
                                                  message: str) -> None:
    monkeypatch.chdir(tmp_path)
    _biased_csv(tmp_path / "biased.csv", n=200)
    got = main(["remediate", "biased.csv", *args, "--out", "rem"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert got == code, err
    assert err == [message]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["biased.csv"]  # nothing written


def test_missing_data_and_image_data_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["remediate", "missing.csv", "--target", "label", "--out", "rem"]) == 1
    assert capsys.readouterr().err.startswith("error: Data file 'missing.csv' does not exist")
    assert main(["remediate", "no_such_set", "--out", "rem"]) == 1
    assert "is neither an existing file nor a built-in data set" in capsys.readouterr().err
    assert not (tmp_path / "rem").exists()
