"""The command line, run as a real process: help, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_tests._synthetic import make_csv, write_spec


def modelyard(*args: str, cwd: Path, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "modelyard"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "modelyard"]
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}  # rich tables wrap at 80 columns without a tty
    return subprocess.run(cmd + list(args), cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["runs", "list", "--help"],
                                  ["runs", "show", "--help"], ["lineage", "--help"]])
def test_every_command_explains_itself(tmp_path: Path, args: list[str]) -> None:
    proc = modelyard(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and len(proc.stdout) > 200


def test_version(tmp_path: Path) -> None:
    proc = modelyard("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("modelyard ")


def test_run_list_show_lineage(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", make_csv(tmp_path / "people.csv", n=500))
    proc = modelyard("run", "spec.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    root = Path(proc.stdout.strip().splitlines()[-1])
    assert (root / "report.html").is_file()
    assert "✓ data" in proc.stderr and "finished in" in proc.stderr
    again = modelyard("run", str(spec), cwd=tmp_path)
    assert again.returncode == 0
    assert again.stderr.count("cached (from run") == 6 and "6 of 6 steps reused from cache" in again.stderr

    listing = modelyard("runs", "list", cwd=tmp_path)
    assert listing.returncode == 0 and root.name in listing.stdout and "6 ran, 0 cached" in listing.stdout

    shown = modelyard("runs", "show", root.name[:17], "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert [s["step"] for s in detail["steps"]] == ["data", "train.mlp", "train.gbm", "evaluate", "export", "report"]
    assert modelyard("runs", "show", root.name, cwd=tmp_path).returncode == 0

    lineage = modelyard("lineage", str(root / "model.onnx"), cwd=tmp_path)
    assert lineage.returncode == 0, lineage.stderr
    from modelyard.data import sha256_file

    out = " ".join(lineage.stdout.split())
    assert f"people.csv sha256:{sha256_file(tmp_path / 'people.csv')}" in out
    assert "spec pipeline synthetic · sha256:" in out
    assert "steps data → train.mlp → train.gbm → evaluate → export" in out


def test_unknown_run_is_one_line(tmp_path: Path) -> None:
    proc = modelyard("runs", "show", "nope", cwd=tmp_path)
    assert proc.returncode == 1
    assert one_line_error(proc).startswith("error: No run 'nope' in sqlite:///.modelyard/metadata.db")


def _bad_run(tmp_path: Path, spec: Path) -> tuple[subprocess.CompletedProcess, str]:
    proc = modelyard("run", spec.name, cwd=tmp_path)
    assert proc.returncode != 0
    return proc, one_line_error(proc)


def test_missing_target_lists_columns(tmp_path: Path) -> None:
    csv = make_csv(tmp_path / "p.csv", n=100)
    spec = write_spec(tmp_path / "s.yaml", csv, data={"source": str(csv), "target": "income_class"})
    proc, err = _bad_run(tmp_path, spec)
    assert proc.returncode == 1
    assert err == ("error: Target column 'income_class' does not exist. Columns are: "
                   "['age', 'income', 'group', 'sex', 'label']. Set `target` to one of them.")


def test_single_class_target(tmp_path: Path) -> None:
    csv = tmp_path / "one.csv"
    csv.write_text("x,y\n" + "".join(f"{i},same\n" for i in range(50)))
    spec = write_spec(tmp_path / "s.yaml", csv, data={"source": str(csv), "target": "y"})
    _, err = _bad_run(tmp_path, spec)
    assert err.startswith("error: Target column 'y' has a single class ('same')")


def test_empty_and_unparsable_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _, err = _bad_run(tmp_path, write_spec(tmp_path / "s.yaml", empty, data={"source": str(empty), "target": "y"}))
    assert "empty.csv" in err and "empty" in err
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(bytes(range(256)) * 20)
    _, err = _bad_run(tmp_path, write_spec(tmp_path / "s.yaml", garbage, data={"source": str(garbage), "target": "y"}))
    assert "garbage.csv" in err


def test_spec_unknown_key_and_wrong_type(tmp_path: Path) -> None:
    csv = make_csv(tmp_path / "p.csv", n=100)
    spec = write_spec(tmp_path / "s.yaml", csv, evaluate={"slicez": ["sex"]})
    proc, err = _bad_run(tmp_path, spec)
    assert proc.returncode == 2
    assert err == ("error: Invalid spec 's.yaml': evaluate: unknown key 'slicez'; allowed keys: bootstrap, confidence, fairness, gate, metrics, slices.")
    assert not (tmp_path / "runs").exists()  # validated before anything runs: nothing written
    spec = write_spec(tmp_path / "s.yaml", csv, export={"atol": "tiny"})
    proc, err = _bad_run(tmp_path, spec)
    assert err == ("error: Invalid spec 's.yaml': export.atol: Input should be a valid number, unable to parse "
                   "string as a number (got \"tiny\").")


def test_debug_shows_traceback(tmp_path: Path) -> None:
    proc = modelyard("--debug", "runs", "show", "nope", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_search_command_with_two_workers(tmp_path: Path) -> None:
    import pandas as pd

    search = {"family": "gbm", "trials": 2, "strategy": "tpe", "base": {"max_iter": 20}}
    write_spec(tmp_path / "spec.yaml", make_csv(tmp_path / "p.csv", n=500), search=search)
    proc = modelyard("search", "spec.yaml", "--workers", "2", "--trials", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    root = Path(proc.stdout.strip().splitlines()[-1])
    trials = pd.read_csv(root / "search" / "trials.csv")
    assert len(trials) == 4 and set(trials["state"]) == {"COMPLETE"}  # exactly the trials asked for
    assert "Leaderboard" in proc.stdout
    assert not (root / "report.html").exists()  # only the data and search steps ran


def test_search_command_needs_a_search_section(tmp_path: Path) -> None:
    write_spec(tmp_path / "spec.yaml", make_csv(tmp_path / "p.csv", n=100))
    proc = modelyard("search", "spec.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert one_line_error(proc).startswith("error: The spec has no 'search' step")


def test_automl_command_end_to_end(tmp_path: Path) -> None:
    import pandas as pd

    from modelyard.models import OnnxPredictor

    make_csv(tmp_path / "people.csv", n=600)
    proc = modelyard("automl", "people.csv", "--target", "label", "--time-budget", "3", "--families", "linear,gbm",
                     "--ensemble", "weighted", "--out", "am", "--seed", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "am"
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert "Leaderboard" in proc.stdout and "ensemble (weighted" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["automl.json", "best_model.onnx", "ensemble.onnx",
                                                      "leaderboard.csv"]
    board = pd.read_csv(out / "leaderboard.csv")
    assert {"linear", "gbm", "ensemble"} == set(board["family"]) and board["rank"].tolist()[0] == 1
    summary = json.loads((out / "automl.json").read_text())
    assert summary["metric"] == "log_loss" and summary["seed"] == 1 and summary["files"]["model"] == "ensemble.onnx"
    served = OnnxPredictor(out / "ensemble.onnx")
    frame = pd.read_csv(tmp_path / "people.csv").head(20)
    assert served.predict_proba(frame).shape == (20, 2)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["missing.csv", "--target", "label"], 1, "error: Data file missing.csv does not exist"),
        (["people.csv", "--target", "income_class"], 1,
         "error: Target column 'income_class' does not exist. Columns are: ['age', 'income', 'group', 'sex', 'label']."),
        (["people.csv"], 2, "error: --target is required for a file (people.csv)"),
        (["people.csv", "--target", "label", "--families", "linear,xgb"], 2,
         "error: Unknown model family 'xgb' for automl; use one of ['linear', 'gbm', 'mlp']."),
        (["people.csv", "--target", "label", "--time-budget", "0"], 2,
         "error: The time budget (time_budget, --time-budget) must be a positive number of seconds; got 0.0."),
        (["nosuchset", "--target", "y"], 1, "error: 'nosuchset' is neither an existing file nor a built-in data set"),
    ],
)
def test_automl_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], code: int,
                                                         message: str) -> None:
    make_csv(tmp_path / "people.csv", n=100)
    proc = modelyard("automl", *args, "--out", "am", cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    assert one_line_error(proc).startswith(message)
    assert not (tmp_path / "am").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people.csv"]
