"""The report's Explanations section: importances, SHAP, PDP/ICE, per-row tables, IG heatmaps; data escaped."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pipeline_tests._synthetic import make_csv

from modelyard import data as mydata
from modelyard.explain._step import ExplainOptions, explain_model, explanation_figures
from modelyard.errors import DataError
from modelyard.report import render_html

from ._summary import SCRIPT_COLUMN, make_summary
from .conftest import DomSummary

EVIL_FEATURE = SCRIPT_COLUMN + "$x^2$"  # HTML in the report, mathtext in the plots: both must print as text


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


@pytest.fixture(scope="module")
def explained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An explain result of a small gradient-boosting model whose categorical column has a hostile name."""
    from modelyard.models import GBMConfig, fit_gbm

    tmp = tmp_path_factory.mktemp("report_explain")
    csv = make_csv(tmp / "p.csv", n=400, columns={"group": EVIL_FEATURE})
    data = mydata.from_csv(csv, target="label", sensitive=["sex"], test=0.25, valid=0.2)
    model = fit_gbm(data.train, data.valid, GBMConfig(max_iter=10))
    options = ExplainOptions(methods=("permutation", "shap", "pdp", "lime"), rows=(0, 3), max_rows=80, shap_rows=20,
                             top_k=2)
    return explain_model(model, data.test.frame, train=data.train.frame, options=options, model="gbm", family="gbm")


def _section(html: str) -> str:
    start = html.index('<section id="explain">')
    return html[start:html.index("</section>", start)]


def test_sections_and_charts(explained: dict[str, Any]) -> None:
    summary = make_summary()
    summary["explain"] = explained
    html = render_html(summary)
    assert '<a href="#explain">Explain</a>' in html
    section = _section(html)
    for anchor in ("explain-importance", "explain-shap", "explain-pdp", "explain-rows"):
        assert f'id="{anchor}"' in section, anchor
    pngs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', section)
    assert len(pngs) == len(explanation_figures(explained))  # every plot the step writes is in the report
    assert all(base64.b64decode(p)[:4] == b"\x89PNG" for p in pngs)
    # Per-row tables: the chosen rows, each method, the base value and the prediction.
    assert section.count("<caption>Row 0 · predicted") == 2 and section.count("<caption>Row 3 · predicted") == 2
    assert "shap of yes" in section and "lime of yes" in section
    importance = section[section.index('id="explain-importance"'):section.index("</table>")]
    assert importance.count('<td class="name">') == 4  # one row per feature, with its interval
    assert all(f'<td class="name">{f}</td>' in importance for f in ("age", "income", "sex"))


def test_hostile_feature_name_is_escaped(explained: dict[str, Any]) -> None:
    summary = make_summary()
    summary["explain"] = explained
    html = render_html(summary)
    section = _section(html)
    assert "<script>" not in html
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;$x^2$"
    assert escaped in section  # in the importance table and the per-row tables, as text
    dom = DomSummary.of(html)
    assert not dom.elements("script")
    assert all((img.get("src") or "").startswith("data:image/png;base64,") for img in dom.elements("img"))
    assert EVIL_FEATURE in dom.all_text


def test_no_section_without_an_explain_step() -> None:
    html = render_html(make_summary())
    assert 'id="explain"' not in html and "#explain" not in html


def test_partial_and_malformed_explain_parts_render() -> None:
    summary = make_summary()
    summary["explain"] = {"model": "m", "methods": ["ig"], "rows": ["junk", {"row": 1, "explanations": {"x": 3}}],
                          "skipped": [{"method": "ig", "reason": "<b>no gradients</b>"}]}
    section = _section(render_html(summary))
    assert "Skipped ig: &lt;b&gt;no gradients&lt;/b&gt;" in section
    assert "<img" not in section


def test_image_model_integrated_gradients_heatmaps(tmp_path: Path) -> None:
    from modelyard.data._image import ImageSplit
    from modelyard.explain import integrated_gradients
    from modelyard.models import ImageNetConfig
    from modelyard.train import fit_image

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 1, 8, 8), dtype=np.uint8)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)  # top half brighter
    model = fit_image(ImageSplit(x[:40], y[:40]), ImageSplit(x[40:], y[40:]),
                      ImageNetConfig(arch="mlp", hidden_sizes=(8,), max_epochs=1), classes=["dark", "bright"])
    result = explain_model(model, (x[40:], y[40:]), options=ExplainOptions(rows=(0, 2), ig_steps=16), model="img")
    ig = result["ig"]
    ref = integrated_gradients(model, x[40:][[0, 2]], steps=16)
    # Same batch, same quadrature: equal up to float32 rounding of the JSON round trip (exact here).
    np.testing.assert_allclose(ig["heatmaps"], ref.heatmap(), rtol=0, atol=1e-7)
    # Completeness per image: the heatmap sums to F(x) - F(black) up to the recorded gap.
    total = np.asarray(ig["heatmaps"]).sum(axis=(1, 2))
    np.testing.assert_allclose(total - (np.array(ig["predictions"]) - np.array(ig["base_values"])), ig["delta"],
                               rtol=0, atol=1e-5)
    names = [name for name, _, _ in explanation_figures(result)]
    assert names == ["image_row_0.png", "image_row_2.png"]  # one figure per image, a panel per method
    assert result["methods"] == ["ig", "saliency", "lime"]
    summary = make_summary()
    summary["explain"] = result
    section = _section(render_html(summary))
    assert 'id="explain-ig"' in section and len(re.findall(r'<img src="data:image/png', section)) == 2
    assert "Per-row explanations" not in section  # image rows have heatmaps, no tables

    # Without gradients (the ONNX export) the gradient methods are skipped with the reason; LIME still runs.
    from modelyard.compress import export_onnx
    from modelyard.models import load_predictor

    onnx = load_predictor(export_onnx(model, tmp_path / "m.onnx", sample=x[:4]).path)
    result = explain_model(onnx, (x[40:], y[40:]), options=ExplainOptions(rows=(0,), lime_samples=200), model="img")
    assert result["methods"] == ["lime"] and [s["method"] for s in result["skipped"]] == ["ig", "saliency"]
    with pytest.raises(DataError, match=r"\['shap'\] explain table columns.*ig, saliency, lime"):
        explain_model(model, (x, y), options=ExplainOptions(methods=("shap",)), model="img")


def test_model_card_lists_the_top_permutation_importances(explained: dict[str, Any]) -> None:
    from modelyard.report import render_model_card
    from modelyard.report._card import TOP_FEATURES, md_escape

    summary = make_summary(optional=False)
    summary["explain"] = explained
    card = render_model_card(summary)
    section = card[card.index("### What drives the predictions"):]
    section = section[:section.index("\n## ")]
    table = explained["permutation"]["table"][:TOP_FEATURES]
    at = [section.index(f"| {md_escape(r['feature'])} |") for r in table]
    assert at == sorted(at)  # in the step's order: most important first
    assert SCRIPT_COLUMN not in card  # the hostile column name is escaped
    assert "### What drives the predictions" not in render_model_card(make_summary(optional=False))
