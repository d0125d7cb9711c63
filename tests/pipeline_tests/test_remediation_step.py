"""The remediation step in a pipeline: its figures are remediate()'s, its section is validated, the report shows it."""

from __future__ import annotations

import csv
import inspect
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from modelyard import pipeline
from modelyard.data import Schema, TabularSplit
from modelyard.errors import DataError, SpecError
from modelyard.evaluate import (
    REMEDIATION_METHODS,
    LearnedFairRepresentation,
    MinDiffPenalty,
    remediate,
)
from modelyard.evaluate._remediation_threshold import CONSTRAINTS
from modelyard.pipeline import parse_spec
from modelyard.pipeline._spec import (
    REMEDIATION_CONSTRAINTS,
    LFROptions,
    MinDiffOptions,
)
from modelyard.pipeline._spec import REMEDIATION_METHODS as SPEC_METHODS
from modelyard.report import render_html

FIGURES = ("accuracy", "demographic_parity_difference", "equalized_odds_difference")
FAST = {"train": {"models": {"gbm": {"family": "gbm", "max_iter": 20}}}, "evaluate": {"bootstrap": 0}}


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _biased_csv(path: Path, *, n: int = 1600, seed: int = 0, classes: int = 2) -> Path:
    """A label that depends strongly on the group: the base model selects group A far more often."""
    rng = np.random.default_rng(seed)
    group = rng.choice(["<i>A</i>", "B & co"], n, p=[0.55, 0.45])
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    logit = 1.2 * x1 + 0.5 * x2 + np.where(group == "<i>A</i>", 1.2, -1.2)
    p = 1 / (1 + np.exp(-logit))
    y = (rng.random(n) < p).astype(int) if classes == 2 else np.digitize(p, [0.33, 0.66])
    pd.DataFrame({"x1": x1, "x2": x2, "grp": group, "label": np.array(["no", "yes", "maybe"])[y]}).to_csv(
        path, index=False)
    return path


def _spec(path: Path, data: dict, remediation: dict) -> Path:
    path.write_text(yaml.safe_dump({"name": "remediation", "data": data, **FAST, "remediation": remediation},
                                   sort_keys=False))
    return path


def _splits(root: Path) -> tuple[TabularSplit, TabularSplit, TabularSplit]:
    """The data step's splits, read back from the run folder (not through the step)."""
    schema = Schema.from_dict(json.loads((root / "data" / "schema.json").read_text())["schema"])
    return tuple(TabularSplit(pd.read_parquet(root / "data" / f"{s}.parquet"), schema)
                 for s in ("train", "valid", "test"))  # type: ignore[return-value]


@pytest.mark.skipif(not os.environ.get("MODELYARD_DATA_DIR"), reason="needs the Adult files: set MODELYARD_DATA_DIR")
def test_adult_remediation_step_matches_remediate(workdir: Path, sqlite_url: str) -> None:
    data = {"source": "adult", "subsample": {"train": 1500, "valid": 600, "test": 1000}}
    remediation = {"sensitive": "sex", "methods": ["threshold", "reweighing"], "base_params": {"max_iter": 60}}
    spec = _spec(workdir / "adult.yaml", data, remediation)
    result = pipeline.run(spec, store=sqlite_url, quiet=True)
    names = [s.name for s in result.steps]
    assert names.index("export") < names.index("remediation") == names.index("report") - 1
    folder = result.root / "remediation"
    doc = json.loads((folder / "remediation.json").read_text())
    assert doc["methods"] == ["threshold", "reweighing"] and doc["sensitive"] == "sex"
    assert doc["rows"] == {"train": 1500, "valid": 600, "test": 1000}
    assert (folder / "remediation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The independent path: remediate() on the same splits with the same settings gives the same figures.
    # Same rows, same seed and a single-threaded fit: equal up to float rounding (1e-12).
    train, valid, test = _splits(result.root)
    table = {row["method"]: row for row in doc["table"]}
    for method in ("threshold", "reweighing"):
        ref = remediate(method, train, valid, test, sensitive="sex", base="gbm", seed=0, base_params={"max_iter": 60})
        for f in FIGURES:
            assert doc["results"][method]["after"][f] == pytest.approx(getattr(ref.after, f), abs=1e-12), (method, f)
            assert doc["results"][method]["before"][f] == pytest.approx(getattr(ref.before, f), abs=1e-12)
            assert table[method][f] == pytest.approx(getattr(ref.after, f), abs=1e-12)
            assert doc["before"][f] == pytest.approx(getattr(ref.before, f), abs=1e-12)
        assert table[method]["accuracy_cost"] == pytest.approx(ref.accuracy_cost, abs=1e-12)

    # remediation.csv holds the same table: the before row, then one row per method.
    with open(folder / "remediation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["before", "threshold", "reweighing"]
    for r in rows:
        for f in (*FIGURES, "accuracy_cost"):
            assert float(r[f]) == pytest.approx(table[r["method"]][f], abs=1e-15)  # repr round trip
    assert rows[0]["fit_time_s"] == "" and float(rows[1]["fit_time_s"]) > 0

    # Key figures recorded in the metadata store, and the report's section.
    figures = next(s.figures for s in result.steps if s.name == "remediation")
    assert figures["threshold_dpd"] == table["threshold"]["demographic_parity_difference"]
    assert figures["before_accuracy"] == doc["before"]["accuracy"]
    assert figures["reweighing_accuracy_cost"] == table["reweighing"]["accuracy_cost"]
    metrics = json.loads((result.root / "metrics.json").read_text())
    assert metrics["remediation"]["table"] == doc["table"]
    html = (result.root / "report.html").read_text()
    section = html[html.index('<section id="remediation">'):]
    section = section[:section.index("</section>")]
    assert "Fairness remediation" in section and 'href="#remediation"' in html
    assert f"{table['threshold']['demographic_parity_difference']:.4f}" in section
    assert "data:image/png;base64," in section

    again = pipeline.run(spec, store=sqlite_url, quiet=True)
    assert again.all_cached


def test_threshold_reduces_dpd_on_a_biased_set_and_the_report_escapes_groups(workdir: Path, sqlite_url: str) -> None:
    csv_path = _biased_csv(workdir / "biased.csv")
    data = {"source": str(csv_path), "target": "label", "sensitive": ["grp"], "split": {"test": 0.3, "valid": 0.2}}
    spec = _spec(workdir / "s.yaml", data, {"methods": ["threshold"], "base_params": {"max_iter": 60}})
    result = pipeline.run(spec, store=sqlite_url, quiet=True)
    doc = json.loads((result.root / "remediation" / "remediation.json").read_text())
    assert doc["sensitive"] == "grp"  # the default: the data's first sensitive column
    before, after = doc["before"], doc["results"]["threshold"]["after"]
    # The base model follows the label's dependence on the group; per-group thresholds chosen for
    # demographic parity on the validation rows close most of the gap on the test rows (about 480 rows:
    # sampling noise on a selection rate is about 0.03 per group, far below half the gap).
    assert before["demographic_parity_difference"] > 0.3
    assert after["demographic_parity_difference"] < 0.5 * before["demographic_parity_difference"]
    html = (result.root / "report.html").read_text()
    section = html[html.index('<section id="remediation">'):]
    section = section[:section.index("</section>")]
    assert "&lt;i&gt;A&lt;/i&gt;" in section and "B &amp; co" in section
    assert "<i>A</i>" not in section


def test_a_target_that_is_not_binary_fails_when_the_step_runs(workdir: Path, sqlite_url: str) -> None:
    csv_path = _biased_csv(workdir / "three.csv", n=400, classes=3)
    data = {"source": str(csv_path), "target": "label", "sensitive": ["grp"], "split": {"test": 0.3, "valid": 0.2}}
    spec = _spec(workdir / "s.yaml", data, {"methods": ["threshold"]})
    with pytest.raises(DataError) as info:
        pipeline.run(spec, store=sqlite_url, quiet=True)
    assert str(info.value) == ("Fairness remediation needs a binary target; 'label' is multiclass (3 classes). Remove "
                               "the remediation section from the spec, or give a binary target (data.target, "
                               "data.task: binary).")


def test_an_unknown_sensitive_column_lists_the_columns(workdir: Path, sqlite_url: str) -> None:
    csv_path = _biased_csv(workdir / "b.csv", n=400)
    data = {"source": str(csv_path), "target": "label", "sensitive": ["grp"], "split": {"test": 0.3, "valid": 0.2}}
    spec = _spec(workdir / "s.yaml", data, {"sensitive": "gender", "methods": ["threshold"]})
    with pytest.raises(DataError) as info:
        pipeline.run(spec, store=sqlite_url, quiet=True)
    assert str(info.value) == ("remediation.sensitive: sensitive column 'gender' is not in the data; columns are "
                               "['x1', 'x2', 'grp', 'label'].")
    assert not list(workdir.glob("runs/*/remediation/remediation.*"))  # the step wrote nothing


BASE = {"name": "t", "data": {"source": "adult"}}


@pytest.mark.parametrize(
    ("data", "section", "message"),
    [
        ({"source": "fashion_mnist"}, {},
         ("Invalid spec: remediation: fairness remediation needs tabular rows with a sensitive column, and data.source "
         "'fashion_mnist' is an image data set; remove remediation, or use a tabular data set (adult, compas, or a "
         "CSV/Parquet file).")),
        ({"source": "people.csv", "target": "y", "task": "regression"}, {},
         ("Invalid spec: remediation: needs a binary target, and data.task is 'regression'; remove remediation, or give "
         "a binary task.")),
        (None, {"methods": ["threshold", "fairlearn"]},
         ("Invalid spec: remediation.methods: unknown remediation method(s) ['fairlearn']; known: reweighing, mindiff, "
         "threshold, lfr (got [\"threshold\", \"fairlearn\"]).")),
        (None, {"methods": "threshold"},
         "Invalid spec: remediation.methods: must be a list of methods, e.g. [threshold] (got \"threshold\")."),
        (None, {"methods": ["threshold", "threshold"]},
         ("Invalid spec: remediation.methods: names a method twice; give each method once (got [\"threshold\", "
         "\"threshold\"]).")),
        (None, {"methods": ["mindiff"]},
         ("Invalid spec: remediation.methods: mindiff is a penalty in the torch MLP's training loss; set "
         "the base to mlp or remove mindiff (got [\"mindiff\"]).")),
        (None, {"base": "xgb"}, "Invalid spec: remediation.base: Input should be 'gbm' or 'mlp' (got \"xgb\")."),
        (None, {"constraint": "parity"},
         ("Invalid spec: remediation.constraint: Input should be 'demographic_parity', 'equalized_odds', "
         "'true_positive_rate_parity' or 'false_positive_rate_parity' (got \"parity\").")),
        (None, {"tolerance": -0.1}, ("Invalid spec: remediation.tolerance: Input should be greater than or equal to 0 "
         "(got -0.1).")),
        (None, {"sensitve": "sex"}, ("Invalid spec: remediation: unknown key 'sensitve'; allowed keys: base, "
         "base_params, constraint, methods, options, seed, sensitive, tolerance.")),
        (None, {"options": {"threshold": {}}}, ("Invalid spec: remediation.options: unknown key 'threshold'; allowed "
         "keys: lfr, mindiff.")),
        (None, {"base": "mlp", "options": {"mindiff": {"wieght": 2}}}, ("Invalid spec: remediation.options.mindiff: "
         "unknown key 'wieght'; allowed keys: bandwidth, label, weight.")),
        (None, {"methods": ["lfr"], "options": {"lfr": {"n_prototypes": 1}}}, ("Invalid spec: "
         "remediation.options.lfr.n_prototypes: Input should be greater than or equal to 2 (got 1).")),
        (None, {"base_params": {"max_iters": 5}}, ("Invalid spec: remediation.base_params: unknown key 'max_iters'; "
         "allowed keys: categorical, early_stopping, l2_regularization, learning_rate, max_bins, max_depth, "
         "max_features, max_iter, max_leaf_nodes, min_samples_leaf, n_iter_no_change, seed.")),
    ],
)
def test_spec_errors_name_the_field_and_the_fix(data: dict | None, section: dict, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, **({"data": data} if data else {}), "remediation": section})
    assert str(info.value) == message


def test_options_of_a_method_not_run_are_refused() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, "remediation": {"methods": ["threshold"], "options": {"lfr": {"max_iter": 10}}}})
    assert str(info.value).startswith("Invalid spec: remediation: options.lfr is given but lfr is not among the "
                                      "methods ['threshold']; add it to methods or remove options.lfr")


def test_default_methods_are_those_of_the_base_and_are_in_the_resolved_spec() -> None:
    gbm = parse_spec({**BASE, "remediation": {}}).resolved()["remediation"]
    assert gbm["methods"] == ["reweighing", "threshold", "lfr"] and gbm["base"] == "gbm"
    mlp = parse_spec({**BASE, "remediation": {"base": "mlp"}}).resolved()["remediation"]
    assert mlp["methods"] == ["reweighing", "mindiff", "threshold", "lfr"]
    assert parse_spec(BASE).remediation is None  # optional: no step without the section


def test_spec_names_match_the_evaluate_package() -> None:
    # The spec keeps its own copies (it imports no numpy); they must not drift.
    assert SPEC_METHODS == REMEDIATION_METHODS
    assert REMEDIATION_CONSTRAINTS == CONSTRAINTS
    assert set(MinDiffOptions.model_fields) <= set(inspect.signature(MinDiffPenalty).parameters)
    assert set(LFROptions.model_fields) <= set(inspect.signature(LearnedFairRepresentation).parameters)


def test_report_section_escapes_strings_from_data() -> None:
    doc = {"sensitive": "<script>alert(1)</script>", "base": "gbm", "constraint": "demographic_parity",
           "tolerance": 0.0, "groups": ["<b>x</b>", "y"], "rows": {"test": 10},
           "table": [{"method": "before", "accuracy": 0.9, "demographic_parity_difference": 0.3,
                      "equalized_odds_difference": 0.2, "accuracy_cost": 0.0, "fit_time_s": None},
                     {"method": "<img src=x>", "accuracy": 0.85, "demographic_parity_difference": 0.01,
                      "equalized_odds_difference": 0.25, "accuracy_cost": 0.05, "fit_time_s": 0.5}]}
    html = render_html({"remediation": doc})
    section = html[html.index('<section id="remediation">'):]
    section = section[:section.index("</section>")]
    assert "<script>" not in section and "&lt;script&gt;alert(1)&lt;/script&gt;" in section
    assert "<img src=x>" not in section and "&lt;img src=x&gt;" in section
    assert "&lt;b&gt;x&lt;/b&gt;" in section
    assert "0.0100" in section and "0.0500" in section  # the method's DPD and accuracy cost
    assert "data:image/png;base64," in section
