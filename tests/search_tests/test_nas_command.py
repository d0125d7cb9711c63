"""`modelyard nas`: a real process searching CNN cells on a small Fashion-MNIST subset."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from test_cli import modelyard, one_line_error

pytestmark = pytest.mark.skipif(
    not (Path(__file__).resolve().parents[3] / "shared" / "data").is_dir(),
    reason="needs ../shared/data (Fashion-MNIST) beside the checkout",
)


def test_nas_command_writes_the_leaderboard_and_the_best_cell(tmp_path: Path) -> None:
    proc = modelyard("nas", "fashion_mnist", "--strategy", "random", "--models", "3", "--blocks", "1",
                     "--train-size", "128", "--valid-size", "64", "--channels", "4", "--out", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert "NAS leaderboard (random" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["history.png", "leaderboard.csv", "nas.json"]
    summary = json.loads((out / "nas.json").read_text())
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(summary["records"]) == len(board) == 3
    # the leaderboard is sorted by accuracy and its top row is the recorded best model
    assert board["accuracy"].is_monotonic_decreasing
    assert summary["best"]["accuracy"] == board["accuracy"].iloc[0] == max(r["accuracy"] for r in summary["records"])
    assert summary["best"]["genotype"] is not None and summary["settings"]["train_size"] == 128
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "hillclimb"], "error: Unknown NAS strategy 'hillclimb'; use one of"),
        (["adult"], "error: 'adult' is a tabular data set; nas searches CNNs"),
        (["no_such_set"], "error: 'no_such_set' is not a built-in data set; built-ins:"),
    ],
)
def test_nas_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    proc = modelyard("nas", *args, "--models", "1", "--out", "out", cwd=tmp_path)
    assert proc.returncode != 0
    assert one_line_error(proc).startswith(message), proc.stderr
    assert not (tmp_path / "out").exists()
