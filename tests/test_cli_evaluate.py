"""`modelyard evaluate`: slice table, gate checks, blessing.json and exit codes on real tiny models;
and the gate in a pipeline spec's evaluate step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_tests._synthetic import make_csv, write_spec
from typer.testing import CliRunner

from modelyard.cli import app


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A GBM (ONNX) and an MLP (safetensors) trained in seconds on the same columns, the test rows
    as CSV, their per-slice accuracies, and a GBM trained on other columns."""
    from modelyard import data as mydata
    from modelyard.compress import export_onnx
    from modelyard.evaluate import evaluate_predictor
    from modelyard.models import GBMConfig, MLPConfig, fit_gbm, save_torch
    from modelyard.train import fit_mlp

    root = tmp_path_factory.mktemp("cli_evaluate")
    data = mydata.from_csv(make_csv(root / "people.csv", n=800), target="label", sensitive=["sex"], test=0.3,
                           valid=0.2, seed=0)
    data.test.frame.to_csv(root / "test.csv", index=False)
    gbm = fit_gbm(data.train, data.valid, GBMConfig(max_iter=20))
    export_onnx(gbm, root / "gbm.onnx", sample=data.valid.X.head(100))
    mlp = fit_mlp(data.train, data.valid, MLPConfig(max_epochs=3, hidden_sizes=(8,)))
    save_torch(mlp, root / "mlp.safetensors")
    other = mydata.from_csv(make_csv(root / "other.csv", n=300, columns={"income": "salary"}), target="label",
                            test=0.3, valid=0.2, seed=0)
    export_onnx(fit_gbm(other.train, other.valid, GBMConfig(max_iter=5)), root / "other.onnx",
                sample=other.valid.X.head(50))
    acc = {name: evaluate_predictor(p, data.test.frame, slices=["sex"], metrics=["accuracy"])
           for name, p in (("gbm", gbm), ("mlp", mlp))}
    return {"root": root, "acc": {k: {"overall": r.overall["accuracy"],
                                      **{g: v["accuracy"] for g, v in r.by_slice["sex"].items()}}
                                  for k, r in acc.items()}}


def invoke(*args: str, cwd: Path):
    old = Path.cwd()
    os.chdir(cwd)
    try:  # in-process: no interpreter start per call; COLUMNS keeps rich tables from wrapping
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "220"})
    finally:
        os.chdir(old)


def gate_file(path: Path, gate: dict) -> Path:
    path.write_text(yaml.safe_dump(gate))
    return path


def test_gate_passes_with_exit_0_as_a_real_process(models: dict, tmp_path: Path) -> None:
    root, acc = models["root"], models["acc"]["gbm"]
    floor = min(acc.values()) - 0.01
    gate = gate_file(tmp_path / "gate.yaml", {"slices": ["sex"], "min_count": 5,
                                              "thresholds": {"accuracy": {"min": round(floor, 4)}}})
    exe = Path(sys.executable).parent / "modelyard"
    proc = subprocess.run([str(exe), "evaluate", str(root / "gbm.onnx"), "--data", str(root / "test.csv"),
                           "--gate", str(gate), "--out", "out"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "220"}, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "BLESSED: 3 of 3 checks passed" in proc.stdout
    doc = json.loads((tmp_path / "out" / "blessing.json").read_text())
    assert doc["blessed"] is True and [c["status"] for c in doc["checks"]] == ["pass"] * 3
    assert [c["value"] for c in doc["checks"]] == pytest.approx([acc["overall"], acc["F"], acc["M"]], abs=1e-12)
    assert doc["candidate"]["path"].endswith("gbm.onnx") and len(doc["candidate"]["sha256"]) == 64
    slices = json.loads((tmp_path / "out" / "slices.json").read_text())
    assert slices["candidate_metrics"]["by_slice"]["sex"]["F"]["accuracy"] == pytest.approx(acc["F"], abs=1e-12)


def test_gate_fails_with_exit_1_and_still_blesses(models: dict, tmp_path: Path) -> None:
    root, acc = models["root"], models["acc"]["gbm"]
    bar = sorted(acc.values())[1]  # between the lowest and the highest value: some checks fail, some pass
    gate_file(tmp_path / "gate.yaml", {"slices": ["sex"], "min_count": 5, "thresholds": {
        "accuracy": {"min": bar}, "demographic_parity_difference": {"max": 1.0}}})
    result = invoke("evaluate", str(root / "gbm.onnx"), "--data", str(root / "test.csv"), "--gate", "gate.yaml",
                    cwd=tmp_path)
    assert result.exit_code == 1, result.output
    doc = json.loads((tmp_path / "evaluation" / "blessing.json").read_text())
    assert doc["blessed"] is False
    expected = ["fail" if acc[k] < bar - 1e-12 else "pass" for k in ("overall", "F", "M")] + ["pass"]
    assert [c["status"] for c in doc["checks"]] == expected and "fail" in expected
    dpd = doc["checks"][3]
    rates = doc["fairness"]["candidate"]["groups"]["sex"]["0.5"]
    assert dpd["metric"] == "demographic_parity_difference" and dpd["value"] == pytest.approx(
        abs(rates["F"]["selection_rate"] - rates["M"]["selection_rate"]), abs=1e-15)
    assert "NOT BLESSED: 1 of 4 checks failed" in result.stdout
    assert "Fairness indicators (candidate)" in result.stdout
    assert "FAIL" in result.stdout and "is below the minimum" in result.stdout


def test_change_against_baseline_is_judged_per_slice(models: dict, tmp_path: Path) -> None:
    root, acc = models["root"], models["acc"]
    gate_file(tmp_path / "gate.yaml", {"slices": ["sex"], "min_count": 5, "change": {"accuracy": {"max_drop": 0.0}}})
    result = invoke("evaluate", str(root / "mlp.safetensors"), "--data", str(root / "test.csv"), "--baseline",
                    str(root / "gbm.onnx"), "--gate", "gate.yaml", "--slice", "group", cwd=tmp_path)
    doc = json.loads((tmp_path / "evaluation" / "blessing.json").read_text())
    checks = {(c["slice"], c["group"]): c for c in doc["checks"]}
    assert len(checks) == 1 + 2 + 4  # overall, sex F/M, group a/b/c/(missing)
    for key, group in (("overall", ("overall", None)), ("F", ("sex", "F")), ("M", ("sex", "M"))):
        c = checks[group]
        assert c["value"] == pytest.approx(acc["mlp"][key], abs=1e-12)
        assert c["baseline"] == pytest.approx(acc["gbm"][key], abs=1e-12)
        assert c["status"] == ("fail" if acc["mlp"][key] < acc["gbm"][key] - 1e-12 else "pass")
    blessed = all(c["status"] != "fail" for c in doc["checks"])
    assert doc["blessed"] is blessed and result.exit_code == (0 if blessed else 1), result.output
    assert doc["baseline"]["path"].endswith("gbm.onnx")
    assert "vs baseline gbm.onnx" in result.stdout


def test_help() -> None:
    result = CliRunner().invoke(app, ["evaluate", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for option in ("--data", "--target", "--slice", "--baseline", "--gate", "--out", "--bootstrap"):
        assert option in text
    assert "Exits 1 when the gate fails" in text


def test_run_folder_as_model(models: dict, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "20260101-000000-abcd"
    run.mkdir(parents=True)
    shutil.copyfile(models["root"] / "gbm.onnx", run / "model.onnx")
    result = invoke("evaluate", "runs/20260101-000000-abcd", "--data", str(models["root"] / "test.csv"),
                    "--slice", "sex,group", "--bootstrap", "20", "-o", "o", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "o" / "slices.json").read_text())
    assert doc["candidate"]["path"].endswith("model.onnx")
    assert "sex × group" in doc["candidate_metrics"]["by_slice"]
    assert doc["candidate_metrics"]["intervals"]["replicates"] == 20
    assert not (tmp_path / "o" / "blessing.json").exists()  # no gate, no blessing


@pytest.mark.parametrize(("extra", "gate", "code", "message"), [
    (["--slice", "nope"], None, 1,
     ("error: Slice column 'nope' (in slices[0]) does not exist. Columns are: ['age', 'income', 'group', 'sex', "
      "'label'].")),
    ([], {"thresholds": {"acuracy": {"min": 0.5}}}, 2, "thresholds: unknown metric 'acuracy'; known metrics: "),
    ([], {"change": {"accuracy": {"max_drop": 0.01}}}, 2, "change checks (accuracy) but no baseline model"),
    ([], {"thresholds": {"rmse": {"max": 1}}}, 2, "Gate metric 'rmse' does not fit a binary task"),
    (["--baseline", "{root}/other.onnx"], None, 1,
     "different input schema from the candidate: no input columns ['income']; extra input columns ['salary']"),
    (["--target", "outcome"], None, 1, "Target column 'outcome' is not in the data"),
    (["--baseline", "missing.onnx"], None, 1, "Model 'missing.onnx' does not exist"),
])
def test_bad_inputs_are_one_line_errors(models: dict, tmp_path: Path, extra: list[str], gate: dict | None,
                                        code: int, message: str) -> None:
    root = models["root"]
    args = ["evaluate", str(root / "gbm.onnx"), "--data", str(root / "test.csv"),
            *[a.format(root=root) for a in extra]]
    if gate is not None:
        args += ["--gate", str(gate_file(tmp_path / "gate.yaml", gate))]
    result = invoke(*args, cwd=tmp_path)
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not (tmp_path / "evaluation" / "blessing.json").exists()


def test_gate_in_pipeline_spec(models: dict, tmp_path: Path) -> None:
    from modelyard import pipeline
    from modelyard.pipeline import MetadataStore

    csv = make_csv(tmp_path / "people.csv", n=500)
    (tmp_path / "prod").mkdir()
    shutil.copy(models["root"] / "gbm.onnx", tmp_path / "prod" / "gbm.onnx")
    # a relative baseline is found beside the spec, whatever the working folder
    gate = {"baseline": "prod/gbm.onnx", "min_count": 5,
            "thresholds": {"accuracy": {"min": 0.99, "slices": "overall"},
                           "demographic_parity_difference": {"max": 1.0}},
            "change": {"accuracy": {"max_drop": 1.0}}}
    spec = write_spec(tmp_path / "spec.yaml", csv, train={"models": {"gbm": {"family": "gbm", "max_iter": 10}}},
                      evaluate={"slices": ["sex"], "gate": gate})
    store = f"sqlite:///{tmp_path / 'meta.db'}"
    result = pipeline.run(spec, runs_dir=tmp_path / "runs", store=store, quiet=True)
    doc = json.loads((result.root / "evaluate" / "blessing.json").read_text())
    assert doc["blessed"] is False and doc["split"] == "test" and doc["candidate"]["model"] == "gbm"
    assert doc["baseline"]["path"] == str((tmp_path / "prod" / "gbm.onnx").resolve())
    assert [(c["kind"], c["metric"], c["slice"], c["status"]) for c in doc["checks"]][:2] == [
        ("absolute", "accuracy", "overall", "fail"), ("absolute", "demographic_parity_difference", "sex", "pass")]
    assert {c["slice"] for c in doc["checks"] if c["kind"] == "change"} == {"overall", "sex"}  # the step's slices
    evaluation = json.loads((result.root / "evaluate" / "evaluation.json").read_text())
    assert evaluation["gate"]["blessed"] is False and evaluation["gate"]["counts"]["failed"] == 1
    with MetadataStore(store) as meta:
        figures = next(e.figures for e in meta.executions(result.run_id) if e.step == "evaluate")
    assert figures["blessed"] is False and figures["gate_failed"] == 1
    assert (result.root / "model.onnx").is_file()  # a failed gate is recorded; the run still finishes
    # The run's exported model, found by run id in the metadata store.
    by_id = invoke("evaluate", result.run_id, "--data", str(models["root"] / "test.csv"), "--store", store, "-o",
                   "by_id", cwd=tmp_path)
    assert by_id.exit_code == 0, by_id.output
    shown = json.loads((tmp_path / "by_id" / "slices.json").read_text())
    assert shown["candidate"]["path"] == str(result.root / "model.onnx")
    bad = write_spec(tmp_path / "bad.yaml", csv, evaluate={"gate": {"thresholds": {"acc": {"min": 0.5}}}})
    from modelyard.errors import SpecError

    with pytest.raises(SpecError, match=r"evaluate\.gate: thresholds: unknown metric 'acc'; known metrics"):
        pipeline.run(bad, runs_dir=tmp_path / "runs", store=store, quiet=True)
