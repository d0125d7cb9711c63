"""The HTML report: renders for realistic and sparse summaries, is self-contained, escapes data."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.evaluate import SliceReport
from modelyard.report import render_html, write_html

from ._summary import IMG_VALUE, MD_LINK, SCRIPT_COLUMN, make_summary
from .conftest import DomSummary


@pytest.fixture(scope="module")
def realistic() -> str:
    return render_html(make_summary())


@pytest.fixture(scope="module")
def hostile_summary() -> dict:
    return make_summary(hostile=True, n_test=600)


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_realistic_binary_report(realistic: str) -> None:
    dom = DomSummary.of(realistic)
    ids = {a.get("id") for _, a in dom.tags}
    assert {"data", "models", "slices", "export", "steps", "sources", "spec"} <= ids
    text = dom.all_text
    # header, data summary
    assert "adult-income" in text and "20260509-0735-3f9c2a" in text and "2026-05-09 07:35 UTC" in text
    assert "train 29,304 · valid 1,500 · test 3,000" in " ".join(text.split())
    # headline table: both models, the chosen one marked
    chosen_rows = [a for t, a in dom.tags if t == "tr" and a.get("class") == "is-chosen"]
    assert len(chosen_rows) == 1
    chosen = re.search(r'<tr class="is-chosen">\s*<td class="name">mlp <span class="badge chosen">', realistic)
    assert chosen
    assert "hist-gradient-boosting" in text
    # per-slice tables for each model, with count / accuracy / AUC / log-loss columns
    for name in ("sex", "race", "sex × race", "age"):
        assert f">{name}</h3>" in realistic
    assert realistic.count('class="slice-table"') == 4 * 2
    for header in (">n<", ">Accuracy<", ">AUC<", ">Log-loss<"):
        assert header in realistic
    assert "[25, 45)" in text and "(missing)" in text
    # plots: one chart per slice plus the ROC curves, all real PNGs
    pngs = _pngs(realistic)
    assert len(pngs) == 4 + 1
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert "ROC curves on the test split" in text
    # export, steps, sources
    assert "183.0 KB" in text and "3.10e-07" in text and "model.onnx" in text
    assert text.count("cached") >= 1 and text.count("ran") >= 4
    assert "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d" in text


def test_report_without_optional_parts() -> None:
    html = render_html(make_summary(optional=False, n_test=600))
    dom = DomSummary.of(html)
    ids = {a.get("id") for _, a in dom.tags}
    assert {"data", "models", "slices"} <= ids
    assert not ids & {"export", "steps", "sources", "spec"}
    assert "ROC curves" not in html
    assert len(_pngs(html)) == 4  # slice charts only


@pytest.mark.parametrize(
    "summary",
    [
        {},
        {"run_id": "r1"},
        {"models": {"m": {}}},
        {"models": {"m": {"test": {"overall": {"accuracy": 0.5}}}}, "chosen": {"model": "m"}},
        {"data": {"rows": {"test": 10}}, "steps": [{"name": "data"}]},
    ],
    ids=["empty", "run-id-only", "model-without-metrics", "overall-only", "partial-data"],
)
def test_sparse_summaries_render(summary: dict) -> None:
    html = render_html(summary)
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")


def _regression_summary() -> dict:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"region": rng.choice(["north", "south", "east"], size=400)})
    y = rng.normal(200, 50, size=400)
    models = {}
    for name, noise in (("ridge", 30.0), ("mlp", 20.0)):
        rep = SliceReport(
            y_true=y, y_score=y + rng.normal(0, noise, size=400), frame=frame, slices=["region"], task="regression"
        ).to_dict()
        models[name] = {"family": name, "fit_seconds": 1.0, "valid": rep, "test": rep}
    return {"pipeline": "housing", "data": {"task": "regression", "target": "price"}, "models": models,
            "chosen": {"model": "mlp", "metric": "rmse", "split": "valid"}}


def test_regression_report() -> None:
    html = render_html(_regression_summary())
    assert ">RMSE<" in html and ">R²<" in html and "Accuracy" not in html
    assert len(_pngs(html)) == 1
    # Lower RMSE is better: the mlp's is bold in the headline table.
    assert re.search(r'<td class="num best">[0-9.]+</td>', html)


def test_many_groups_and_math_text_in_labels() -> None:
    rng = np.random.default_rng(1)
    values = [f"$x^{i}$ cost $5" for i in range(45)]  # matplotlib would parse these as math text
    frame = pd.DataFrame({"city": rng.choice(values, size=2000)})
    y = rng.integers(0, 2, size=2000)
    rep = SliceReport(y_true=y, y_score=rng.random(2000), frame=frame, slices=["city"], task="binary").to_dict()
    html = render_html({"models": {"m": {"test": rep}}, "chosen": {"model": "m"}})
    assert len(_pngs(html)) == 1
    assert html.count("$x^") == 45  # every group still listed in the table


def test_self_contained(realistic: str) -> None:
    refs = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]*)', realistic, flags=re.I)
    assert refs, "expected some references (images, anchors)"
    assert not [r for r in refs if re.match(r"(?i)\s*(https?:|//|ftp:|file:)", r)], refs
    assert all(r.startswith(("data:image/png;base64,", "#")) for r in refs), [r[:40] for r in refs]
    assert "http://" not in realistic and "https://" not in realistic
    assert "<script" not in realistic.lower()
    assert "@import" not in realistic and "url(" not in realistic
    assert "default-src 'none'" in realistic  # CSP: even an escaping bug could not run a script or fetch


def test_escaping_in_raw_html(hostile_summary: dict) -> None:
    html = render_html(hostile_summary)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "adult &lt;b&gt;income&lt;/b&gt;" in html
    assert "&lt;script&gt;x&lt;/script&gt;.csv" in html
    assert "<script" not in html.lower()
    assert "<img src=x" not in html and "<b>income" not in html
    dom = DomSummary.of(html)
    assert not dom.elements("script") and not dom.elements("b")
    assert all(a.get("src", "").startswith("data:image/png;base64,") for a in dom.elements("img"))
    assert SCRIPT_COLUMN in dom.all_text and IMG_VALUE in dom.all_text and MD_LINK in dom.all_text


@pytest.mark.browser
def test_escaping_in_a_real_browser(hostile_summary: dict, tmp_path: Path, dump_dom) -> None:
    path = write_html(hostile_summary, tmp_path / "report.html")
    dom_html = dump_dom(path)
    dom = DomSummary.of(dom_html)
    assert not dom.elements("script"), "the browser built a <script> element from data"
    assert not [a for a in dom.elements("img") if a.get("src") == "x"], "the browser built <img src=x>"
    assert '<img src="x"' not in dom_html
    assert not [a for a in dom.elements("img") if "onerror" in a]
    text = dom.all_text
    assert SCRIPT_COLUMN in text and IMG_VALUE in text and "adult <b>income</b>" in text
    assert len(dom.elements("img")) >= 5  # the charts did load as images


def test_wrong_types_name_their_path() -> None:
    summary = make_summary(optional=False, n_test=300)
    summary["models"]["gbdt"]["test"] = [1, 2]
    with pytest.raises(TypeError, match=r"summary\['models'\]\['gbdt'\]\['test'\] must be a dict"):
        render_html(summary)
    with pytest.raises(TypeError, match=r"summary\['steps'\] must be a list; got dict"):
        render_html({"steps": {"a": 1}})
    with pytest.raises(TypeError, match=r"summary must be a dict"):
        render_html([])  # type: ignore[arg-type]


def test_write_html_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = make_summary(optional=False, n_test=300)
    target = tmp_path / "report.html"
    assert write_html(summary, target) == target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    first = target.read_text(encoding="utf-8")
    assert first == render_html(summary)
    assert oct(target.stat().st_mode & 0o777) == "0o644"

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_html({"pipeline": "second"}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temp file left behind
    assert target.read_text(encoding="utf-8") == first  # the old report is intact
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match=r"folder .* does not exist"):
        write_html(summary, tmp_path / "missing" / "report.html")


def test_pipeline_shaped_summary() -> None:
    """As the pipeline's report step builds it: valid scored without slices, extra keys, no steps."""
    summary = make_summary(n_test=600)
    for entry in summary["models"].values():
        entry["valid"] = {**entry["valid"], "slices": [], "by_slice": {}}
        entry["roc"].pop("split")
    summary["chosen"].update(mode="max", value=0.91, family="mlp")
    summary["chosen"]["onnx"]["parity_rows"] = 256
    del summary["steps"]
    html = render_html(summary)
    text = " ".join(DomSummary.of(html).all_text.split())
    assert "over 256 test rows" in text
    assert html.count('class="slice-table"') == 4 * 2  # slice tables come from the test split
    assert 'id="steps"' not in html and "ROC curves;" in text
