"""``modelyard explain RUN``: per-row tables, importances, plots, and clear errors with non-zero exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
import yaml
from pipeline_tests._synthetic import make_csv, write_spec

from modelyard import pipeline
from modelyard.cli import main

EVIL = "[red]grp[/red]<b>"  # rich markup and HTML in a column name must print as text


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("COLUMNS", "200")  # rich tables wrap at 80 columns without a tty
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two finished runs: one whose chosen model is an MLP (torch), one a gradient-boosting model (ONNX)."""
    tmp = tmp_path_factory.mktemp("cli_explain")
    store = f"sqlite:///{tmp / 'metadata.db'}"
    csv = make_csv(tmp / "p.csv", n=400, columns={"group": EVIL})
    mlp = write_spec(tmp / "mlp.yaml", csv)
    spec = yaml.safe_load(mlp.read_text())
    spec["train"]["models"] = {"mlp": {"family": "mlp", "max_epochs": 2, "hidden_sizes": [8]}}
    mlp.write_text(yaml.safe_dump(spec))
    gbm = tmp / "gbm.yaml"
    spec["train"]["models"] = {"gbm": {"family": "gbm", "max_iter": 10}}
    gbm.write_text(yaml.safe_dump(spec))
    kw = {"store": store, "runs_dir": tmp / "runs", "quiet": True}
    return {"tmp": tmp, "store": store, "mlp": pipeline.run(mlp, **kw), "gbm": pipeline.run(gbm, **kw)}


def explain(runs: dict[str, Any], *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["explain", *args, "--store", runs["store"]])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_shap_rows_print_tables_and_write_plots(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    run = runs["mlp"]
    out_dir = runs["tmp"] / "out_shap"
    code, out, err = explain(runs, run.run_id, "--rows", "0,5,9", "--out", str(out_dir), capsys=capsys)
    assert code == 0, err
    for r in (0, 5, 9):
        assert f"Row {r} · predicted" in out
    assert "feature" in out and "value" in out and "contribution" in out and "Top importances (mean |shap|" in out
    assert EVIL in out  # printed as text, not as rich markup
    result = json.loads((out_dir / "explain.json").read_text())
    assert result["shap"]["method"] == "exact" and [r["row"] for r in result["rows"]] == [0, 5, 9]
    for entry in result["rows"]:
        part = entry["explanations"]["shap"]
        # Shapley efficiency on the printed numbers (float32 model outputs: 1e-6).
        assert part["base_value"] + sum(c["contribution"] for c in part["contributions"]) == pytest.approx(
            part["prediction"], abs=1e-6)
    test = pd.read_parquet(run.root / "data" / "test.parquet")
    assert result["rows"][1]["explanations"]["shap"]["contributions"]  # the row's own values are shown
    ages = {c["feature"]: c["value"] for c in result["rows"][1]["explanations"]["shap"]["contributions"]}
    assert ages["age"] == test.loc[5, "age"]
    for name in ("shap_summary.png", "shap_importance.png", "row_0_shap.png", "row_9_shap.png"):
        assert (out_dir / name).read_bytes()[:4] == b"\x89PNG", name
    assert out.strip().splitlines()[-1] == str(out_dir.resolve())


def test_lime_ig_and_permutation(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    run = runs["mlp"]
    code, out, err = explain(runs, run.run_id[:-2], "--rows", "2", "--method", "lime", "--out",
                             str(runs["tmp"] / "lime"), capsys=capsys)
    assert code == 0, err
    assert "Row 2 · predicted" in out and "lime of yes" in out
    code, out, err = explain(runs, run.run_id, "--rows", "1,3", "--method", "ig", "--out", str(runs["tmp"] / "ig"),
                             capsys=capsys)
    assert code == 0, err
    assert "ig of p(yes)" in out and (runs["tmp"] / "ig" / "row_3_ig.png").is_file()
    code, out, err = explain(runs, run.run_id, "--method", "permutation", "--out", str(runs["tmp"] / "perm"),
                             capsys=capsys)
    assert code == 0, err
    assert "Top importances (permutation: drop in accuracy" in out and "95% interval" in out, out
    assert "does not explain single rows" in out
    assert (runs["tmp"] / "perm" / "importance.png").is_file()


def test_unknown_run_lists_recent_runs(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = explain(runs, "nope-123", capsys=capsys)
    assert code == 1
    assert err.startswith("error: No run 'nope-123'") and "Recent runs:" in err
    assert runs["mlp"].run_id in err and runs["gbm"].run_id in err
    assert "Traceback" not in err


def test_ambiguous_prefix_says_so(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = explain(runs, "2", capsys=capsys)  # both run ids start with the year
    assert code == 1 and "ambiguous; give more characters" in err


def test_row_out_of_range_names_the_valid_range(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    n = len(pd.read_parquet(runs["gbm"].root / "data" / "test.parquet"))
    code, _, err = explain(runs, runs["gbm"].run_id, "--rows", f"0,{n}", "--out", str(runs["tmp"] / "x"),
                           capsys=capsys)
    assert code == 1
    assert f"Row {n} is out of range: the test split has {n} rows (valid rows: 0..{n - 1})" in err
    assert not (runs["tmp"] / "x").exists()  # nothing written on bad input


@pytest.mark.parametrize(("args", "message"), [
    (["--method", "magic"], "Unknown --method 'magic'; known methods: ig, lime, permutation, shap (tables), ig, saliency, lime (images)."),
    (["--rows", "a,b"], "--rows must be comma-separated row positions such as 0,5,9; got 'a,b'."),
    (["--split", "train"], "Unknown --split 'train'; use test or valid."),
    (["--method", "ig"], "--method ig needs a differentiable (torch) model"),
    (["--method", "saliency"], "--method 'saliency' draws image heatmaps, and run"),
])
def test_bad_input_exits_2_with_one_line(runs: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                         args: list[str], message: str) -> None:
    code, _, err = explain(runs, runs["gbm"].run_id, *args, capsys=capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_gbm_run_uses_tree_shap(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = runs["tmp"] / "gbm_out"
    code, out, err = explain(runs, runs["gbm"].run_id, "--rows", "4", "--out", str(out_dir), capsys=capsys)
    assert code == 0, err
    assert "shap of log-odds(yes)" in out
    result = json.loads((out_dir / "explain.json").read_text())
    assert result["shap"]["method"] == "tree_interventional"


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--rows" in text and "--method" in text and "--out" in text
