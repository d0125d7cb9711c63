"""The report's analysis sections from a real pipeline run: slice intervals, fairness, the gate; data escaped."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pipeline_tests._synthetic import make_csv, write_spec

from modelyard.report import render_html, render_model_card
from modelyard.report._html import fmt_metric

from .conftest import DomSummary

EVIL = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
#: The gate: one check fails (accuracy 0.99 is out of reach), the others pass; a fairness bound on every feature.
GATE = {"min_count": 5, "thresholds": {"accuracy": {"min": 0.99, "slices": "overall"}, "auc": {"min": 0.5},
                                       "demographic_parity_difference": {"max": 1.0}}}
BOOTSTRAP = 120


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def _run(tmp: Path, *, sensitive: list[str], evaluate: dict[str, Any]) -> Path:
    from modelyard import pipeline

    csv = make_csv(tmp / "people.csv", n=600)
    frame = pd.read_csv(csv)
    frame["group"] = frame["group"].replace({"c": EVIL})  # a hostile group value, as a data file may hold
    frame.to_csv(csv, index=False)
    spec = write_spec(tmp / "spec.yaml", csv, train={"models": {"gbm": {"family": "gbm", "max_iter": 10}}},
                      data={"source": str(csv), "target": "label", "sensitive": sensitive,
                            "split": {"test": 0.3, "valid": 0.2}},
                      evaluate=evaluate)
    return pipeline.run(spec, runs_dir=tmp / "runs", store=f"sqlite:///{tmp / 'meta.db'}", quiet=True).root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run with two sensitive columns, a gate that fails one check, and bootstrap intervals."""
    root = _run(tmp_path_factory.mktemp("analysis"), sensitive=["sex", "group"],
                evaluate={"slices": ["sex", "group"], "gate": GATE, "bootstrap": BOOTSTRAP})
    read = lambda name: json.loads((root / name).read_text())
    return {"root": root, "html": (root / "report.html").read_text(), "card": (root / "model_card.md").read_text(),
            "evaluation": read("evaluate/evaluation.json"), "fairness": read("evaluate/fairness.json"),
            "blessing": read("evaluate/blessing.json"), "metrics": read("metrics.json")}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run without sensitive columns, gate or bootstrap."""
    root = _run(tmp_path_factory.mktemp("plain"), sensitive=[], evaluate={"slices": ["group"], "bootstrap": 0})
    return {"root": root, "html": (root / "report.html").read_text(), "card": (root / "model_card.md").read_text(),
            "evaluation": json.loads((root / "evaluate/evaluation.json").read_text())}


class _Tables(HTMLParser):
    """Every table of an HTML fragment: rows of (tr class, [cell text]), cells' text with the interval kept."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[dict[str, Any]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"id": a.get("id"), "class": a.get("class"), "rows": []})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"].append((a.get("class") or "", []))
        elif tag in ("td", "th") and self.tables and self.tables[-1]["rows"]:
            self._cell = []
        elif tag == "span" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1][1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    @classmethod
    def of(cls, html: str) -> list[dict[str, Any]]:
        p = cls()
        p.feed(html)
        return p.tables


def _section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}">')
    return html[start:html.index("</section>", start)]


def _pngs(fragment: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', fragment)]


def _cell(value: float | None, interval: list | None, metric: str = "") -> str:
    text = fmt_metric(value, metric)
    if interval is not None and interval[0] is not None and interval[1] is not None:
        text += f" [{fmt_metric(interval[0], metric)}, {fmt_metric(interval[1], metric)}]"
    return text


# -- the evaluate step's artifacts ----------------------------------------------------------
def test_evaluate_step_writes_intervals_fairness_and_blessing(run: dict[str, Any]) -> None:
    test = run["evaluation"]["models"]["gbm"]["test"]
    ci = test["intervals"]
    assert ci["replicates"] == BOOTSTRAP and ci["confidence"] == 0.95
    for s, table in test["by_slice"].items():
        for g in table:
            for m in ("accuracy", "auc", "log_loss"):
                lo, hi = ci["by_slice"][s][g][m]
                if lo is not None:
                    assert lo <= hi  # invariant of a percentile interval
    assert run["evaluation"]["fairness"] == run["fairness"]  # fairness.json, also carried in evaluation.json
    assert run["fairness"]["model"] == "gbm" and run["fairness"]["split"] == "test"
    assert run["fairness"]["features"] == ["sex", "group", "sex × group"]  # the columns and their cross
    assert run["fairness"]["replicates"] == BOOTSTRAP
    assert run["metrics"]["fairness"] == run["fairness"]
    assert run["metrics"]["gate"]["checks"] == run["blessing"]["checks"]
    assert run["blessing"]["blessed"] is False and run["blessing"]["counts"]["failed"] == 1


def test_fairness_matches_fairlearn_on_the_chosen_model(run: dict[str, Any]) -> None:
    """Independent reference: fairlearn's disparities of the chosen model's test predictions at 0.5."""
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        demographic_parity_ratio,
        equalized_odds_difference,
        true_positive_rate,
    )

    from modelyard.models import load_predictor

    root = run["root"]
    model = load_predictor(root / "train" / "gbm" / "model.onnx")
    test = pd.read_parquet(root / "data" / "test.parquet")
    y = (test["label"] == "yes").to_numpy().astype(int)
    pred = (model.predict_proba(test[list(model.feature_names)])[:, 1] > 0.5).astype(int)
    for feature in ("sex", "group"):
        groups = test[feature].astype(object).where(test[feature].notna(), "(missing)")
        got = run["fairness"]["disparities"][feature]["0.5"]
        # Same predictions and groups; the only difference is float summation order (1e-12).
        assert got["demographic_parity_difference"] == pytest.approx(
            demographic_parity_difference(y, pred, sensitive_features=groups), abs=1e-12)
        assert got["demographic_parity_ratio"] == pytest.approx(
            demographic_parity_ratio(y, pred, sensitive_features=groups), abs=1e-12)
        assert got["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(y, pred, sensitive_features=groups), abs=1e-12)
        tpr = MetricFrame(metrics=true_positive_rate, y_true=y, y_pred=pred, sensitive_features=groups)
        assert got["equal_opportunity_difference"] == pytest.approx(tpr.difference(), abs=1e-12)


# -- the report --------------------------------------------------------------------------------
def test_slice_tables_show_values_with_intervals_and_flag_small_groups(run: dict[str, Any]) -> None:
    html = run["html"]
    test = run["evaluation"]["models"]["gbm"]["test"]
    ci = test["intervals"]
    section = _section(html, "slices")
    tables = [t for t in _Tables.of(section) if t["class"] == "slice-table"]
    assert len(tables) == 2  # sex, group: one model
    checked = 0
    for name, table in zip(["sex", "group"], tables):
        header, *rows = table["rows"]
        metrics = test["metrics"]
        assert header[1][0] == name
        by_group = {cells[0]: (cls, cells) for cls, cells in rows}
        for group, values in test["by_slice"][name].items():
            cls, cells = by_group[group]
            assert cells[1] == fmt_metric(values["count"], "count")
            for j, m in enumerate([m for m in metrics if m != "count"]):
                assert cells[3 + j] == _cell(values[m], ci["by_slice"][name][group][m], m), (name, group, m)
                checked += 1
            assert ("small" in cls) == (group in test["small"].get(name, [])), (name, group)
        overall = by_group["Overall"][1]
        assert overall[3] == _cell(test["overall"]["accuracy"], ci["overall"]["accuracy"], "accuracy")
    assert checked >= 3 * 5
    assert any(test["small"].values())  # the (missing) group of `group` is under 30 rows and is flagged
    assert "95% Poisson-bootstrap interval" in section and f"({BOOTSTRAP} replicates)" in section


def test_metric_by_slice_charts_with_error_bars(run: dict[str, Any]) -> None:
    section = _section(run["html"], "slices")
    block = section[section.index('id="slice-intervals"'):section.index('<h3 id="slice-0"')]
    pngs = _pngs(block)
    assert len(pngs) == 3  # accuracy, AUC, log-loss: one chart per metric
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert block.count("<figcaption>Accuracy of <strong>gbm</strong>") == 1


def test_fairness_section(run: dict[str, Any]) -> None:
    fair = run["fairness"]
    section = _section(run["html"], "fairness")
    assert '<a href="#fairness">Fairness</a>' in run["html"]
    tables = _Tables.of(section)
    disparities = next(t for t in tables if t["id"] == "fairness-disparities")
    header, *rows = disparities["rows"]
    assert header[1] == ["Sensitive feature", "demographic parity difference", "demographic parity ratio",
                         "equalized odds difference", "equal opportunity difference"]
    assert [cells[0] for _, cells in rows] == fair["features"]
    for _, cells in rows:
        d = fair["disparities"][cells[0]]["0.5"]
        assert cells[1:] == [fmt_metric(d[k]) for k in ("demographic_parity_difference", "demographic_parity_ratio",
                                                        "equalized_odds_difference", "equal_opportunity_difference")]
    rates = [t for t in tables if t["class"] == "fairness-table"]
    assert len(rates) == len(fair["features"])
    for feature, table in zip(fair["features"], rates):
        header, *rows = table["rows"]
        assert header[1][2:] == [m.replace("_", " ") for m in fair["indicators"]]
        by_group = {cells[0]: (cls, cells) for cls, cells in rows}
        for group, values in fair["groups"][feature]["0.5"].items():
            cls, cells = by_group[group]
            assert cells[1] == fmt_metric(values["count"], "count")
            for j, m in enumerate(fair["indicators"]):
                assert cells[2 + j] == _cell(values[m], fair["intervals"][feature]["0.5"][group][m]), (group, m)
            assert ("small" in cls) == (group in fair["small"][feature])
    pngs = _pngs(section)
    assert len(pngs) == len(fair["features"])  # one rate chart per sensitive feature
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)


def test_gate_section_lists_every_check_failed_first(run: dict[str, Any]) -> None:
    blessing = run["blessing"]
    html = run["html"]
    section = _section(html, "gate")
    assert 'class="verdict rejected"' in section and "NOT BLESSED" in section
    n = blessing["counts"]
    assert f"{n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped of {n['checks']} checks" in section
    table = next(t for t in _Tables.of(section) if t["id"] == "gate-checks")
    header, *rows = table["rows"]
    assert header[1] == ["Metric", "Slice", "Group", "Value", "Baseline", "Threshold", "Status", "Reason"]
    expected = sorted(blessing["checks"], key=lambda c: c["status"] != "fail")  # stable: failed first
    assert len(rows) == len(expected) == n["checks"]
    for (cls, cells), c in zip(rows, expected):
        assert cells == [c["metric"], c["slice"], c["group"] or "—", fmt_metric(c["value"]),
                         fmt_metric(c["baseline"]), c["threshold"], c["status"], c["reason"]]
        assert (cls == "failed") == (c["status"] == "fail")
    assert rows[0][1][6] == "fail" and all(cells[6] != "fail" for _, cells in rows[1:])
    assert "Not blessed" in _section(html.replace('<div class="cards">', '<section id="cards">'), "cards")


def test_hostile_group_value_is_escaped(run: dict[str, Any], tmp_path: Path) -> None:
    html = run["html"]
    assert EVIL not in html
    for sid in ("slices", "fairness", "gate"):
        assert ESCAPED in _section(html, sid), sid
    dom = DomSummary.of(html)
    assert not dom.elements("script")
    assert all((img.get("src") or "").startswith("data:image/png;base64,") for img in dom.elements("img"))
    assert EVIL in dom.all_text  # shown as text
    card = run["card"]
    assert EVIL not in card and ESCAPED in card


def test_escaping_in_a_real_browser(run: dict[str, Any], dump_dom) -> None:
    dom_html = dump_dom(run["root"] / "report.html")
    dom = DomSummary.of(dom_html)
    assert not dom.elements("script")  # the browser built no script element from the hostile value
    assert EVIL in dom.all_text


def test_model_card_summarises_fairness_and_gate(run: dict[str, Any], plain: dict[str, Any]) -> None:
    card = run["card"]
    fairness = card[card.index("### Fairness indicators (test split, threshold 0.5)"):card.index("### Validation gate")]
    d = run["fairness"]["disparities"]["sex"]["0.5"]
    row = "| sex | " + " | ".join(fmt_metric(d[k]) for k in (
        "demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
        "equal_opportunity_difference")) + " |"
    assert row in fairness
    gate = card[card.index("### Validation gate"):card.index("## Ethical considerations")]
    n = run["blessing"]["counts"]
    assert f"**Not blessed:** {n['passed']} of {n['checks']} checks passed, {n['failed']} failed" in gate
    assert gate.count("- Failed: ") == n["failed"]
    assert "### Fairness indicators" not in plain["card"] and "### Validation gate" not in plain["card"]


def test_run_without_sensitive_columns_or_gate(plain: dict[str, Any]) -> None:
    root, html, evaluation = plain["root"], plain["html"], plain["evaluation"]
    assert not (root / "evaluate" / "fairness.json").exists() and not (root / "evaluate" / "blessing.json").exists()
    assert "fairness" not in evaluation and "gate" not in evaluation
    assert "intervals" not in evaluation["models"]["gbm"]["test"]  # bootstrap: 0
    for sid in ("fairness", "gate"):
        assert f'id="{sid}"' not in html and f"#{sid}" not in html
    assert 'id="slice-intervals"' not in html and 'class="ci"' not in html
    assert 'id="slices"' in html and len(_pngs(_section(html, "slices"))) == 1  # the plain slice chart only


def test_partial_and_malformed_parts_render() -> None:
    from ._summary import make_summary

    summary = make_summary(optional=False)
    summary["gate"] = {"blessed": True, "summary": "BLESSED: 1 of 1 checks passed", "counts": {"checks": 1},
                       "checks": ["junk", {"metric": "<b>m</b>", "status": "pass", "value": float("nan")}]}
    summary["fairness"] = {"groups": {"sex": {"0.5": {"F": {"count": 3, "selection_rate": 0.5}, "M": "junk"}}},
                           "thresholds": [0.5]}
    html = render_html(summary)
    gate = _section(html, "gate")
    assert 'class="verdict blessed"' in gate and "&lt;b&gt;m&lt;/b&gt;" in gate
    fairness = _section(html, "fairness")
    assert "0.5000" in fairness and len(_pngs(fairness)) == 1
    assert "### Validation gate" in render_model_card(summary)
    # No fairness or gate part: no section, and an empty groups part is no section either.
    summary.pop("gate")
    summary["fairness"] = {"groups": {}}
    html = render_html(summary)
    assert 'id="fairness"' not in html and 'id="gate"' not in html


@pytest.mark.parametrize(("field", "value", "message"), [
    ("bootstrap", -1, "evaluate.bootstrap"), ("confidence", 1.5, "evaluate.confidence"),
])
def test_spec_rejects_bad_interval_options(field: str, value: Any, message: str) -> None:
    from modelyard.errors import SpecError
    from modelyard.pipeline import parse_spec

    spec = {"name": "x", "data": {"source": "adult", "target": "income"}, "evaluate": {field: value}}
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec(spec)
    assert np.isfinite(parse_spec({**spec, "evaluate": {}}).evaluate.bootstrap)
