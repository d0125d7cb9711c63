"""The model card: Mitchell et al. sections, content from the summary, Markdown escaping."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from modelyard.report import render_model_card, write_model_card
from modelyard.report._card import md_escape

from ._summary import IMG_VALUE, MD_LINK, SCRIPT_COLUMN, make_summary
from .conftest import DomSummary

SECTIONS = [
    "Model details",
    "Intended use",
    "Factors",
    "Metrics",
    "Evaluation data",
    "Training data",
    "Quantitative analyses",
    "Ethical considerations",
    "Caveats and recommendations",
]


@pytest.fixture(scope="module")
def card() -> str:
    return render_model_card(make_summary(n_test=1500))


@pytest.fixture(scope="module")
def hostile_card() -> str:
    return render_model_card(make_summary(hostile=True, n_test=600))


def _h2(markdown: str) -> list[str]:
    return re.findall(r"^## (.+)$", markdown, flags=re.M)


def test_sections_in_order(card: str) -> None:
    assert card.startswith("# Model card: mlp\n")
    assert _h2(card) == SECTIONS


def test_content(card: str) -> None:
    assert "- **Model:** mlp (mlp)" in card
    assert "binary classification of the target income" in card
    assert "0 = &lt;=50K; 1 = &gt;50K (positive class for AUC: &gt;50K)" in card
    assert "best valid Accuracy among 2 candidates (mlp, gbdt)" in card
    assert "ONNX file model.onnx, 183.0 KB" in card
    assert "- **sex** (sensitive): 2 groups: Female, Male" in card
    assert "- **age**: 5 groups:" in card  # a slice that is not sensitive
    assert "| mlp (chosen) | 1,500 |" in card
    assert "### sex × race (sensitive)" in card
    assert "| 5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d |" in card
    assert re.search(r"- \*\*sex:\*\* (Fem|M)ale \(n=[\d,]+\) scores 0\.\d{4} against 0\.\d{4}", card)
    assert "**To complete:**" in card


def test_owner_text_is_used_and_escaped() -> None:
    summary = make_summary(optional=False, n_test=300)
    summary["card"] = {"intended_use": "Screening <b>only</b>\n# not a heading", "caveats": "Use with care."}
    card = render_model_card(summary)
    assert "Screening &lt;b&gt;only&lt;/b&gt; \\# not a heading" in card
    assert "Use with care." in card
    assert "**Out of scope (to complete):**" in card


def test_sparse_summaries() -> None:
    assert _h2(render_model_card({})) == SECTIONS
    card = render_model_card(make_summary(optional=False, n_test=300))
    assert _h2(card) == SECTIONS and "ONNX" not in card


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ("a | b", "a \\| b"),
        ("[x](javascript:alert(1))", "\\[x\\](javascript:alert(1))"),
        ("**bold** _it_ `code` ~~s~~ $m$", "\\*\\*bold\\*\\* \\_it\\_ \\`code\\` \\~\\~s\\~\\~ \\$m\\$"),
        ("line\nbreak\r\n# heading", "line break \\# heading"),
        ("a\\b & c", "a\\\\b &amp; c"),
        (None, ""),
        (0.5, "0.5"),
    ],
)
def test_md_escape(raw: object, escaped: str) -> None:
    assert md_escape(raw) == escaped


def test_injection_is_escaped(hostile_card: str) -> None:
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile_card
    assert "&lt;img src=x onerror=alert(1)&gt;" in hostile_card
    assert "<script" not in hostile_card and "<img" not in hostile_card and "<b>" not in hostile_card
    assert "\\[click\\](javascript:alert(1))" in hostile_card
    assert "plain \\| pipe" in hostile_card
    # Every table row has as many unescaped cell separators as its header.
    lines = hostile_card.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and not lines[i - 1].startswith("|"):
            width = len(re.findall(r"(?<!\\)\|", line))
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                assert len(re.findall(r"(?<!\\)\|", lines[j])) == width, lines[j]
                j += 1


def test_injection_renders_as_text_in_a_markdown_renderer(hostile_card: str) -> None:
    markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py (installed with rich) renders the card")
    # Raw HTML allowed, as in permissive renderers: escaping alone must keep the data inert.
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(hostile_card)
    dom = DomSummary.of(html)
    assert not dom.elements("script") and not dom.elements("img") and not dom.elements("b")
    assert not dom.elements("a"), "no link may be built from data"
    text = dom.all_text
    assert SCRIPT_COLUMN in text and IMG_VALUE in text and MD_LINK in text and "plain | pipe" in text
    assert len(dom.elements("h2")) == len(SECTIONS)
    # The hostile slice's table keeps its three groups as three rows.
    assert html.count("<td>plain | pipe</td>") == 1


def test_write_model_card_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = make_summary(optional=False, n_test=300)
    target = tmp_path / "model_card.md"
    write_model_card(summary, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_card.md"]
    assert target.read_text(encoding="utf-8") == render_model_card(summary)

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_model_card({}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_card.md"]


def test_card_states_the_served_compressed_variant_and_the_search() -> None:
    summary = make_summary(optional=False)
    row = {"size_bytes": 400_000, "gzip_bytes": 350_000, "p50_ms_b1": 0.05, "p99_ms_b1": 0.06, "p50_ms_b64": 1.0,
           "p99_ms_b64": 1.2, "accuracy": 0.86, "accuracy_change": 0.0, "valid_drop": 0.0, "within_budget": True}
    summary["compress"] = {
        "model": "mlp", "metric": "accuracy", "batch_sizes": [1, 64], "best": "static_int8", "measured_on": "test",
        "rows_measured": 1000, "max_accuracy_drop": 0.01, "reason": "smallest within budget",
        "table": [{**row, "variant": "uncompressed", "kind": "reference", "size_ratio": 1.0},
                  {**row, "variant": "static_int8", "size_bytes": 100_000, "size_ratio": 0.25, "p50_ms_b64": 0.25,
                   "accuracy": 0.855, "accuracy_change": -0.005}],
    }
    summary["search"] = {"family": "mlp", "strategy": "auto", "objectives": ["accuracy"], "trials_count": 12,
                         "best_value": 0.861, "best_trial": 7, "trials": []}
    card = render_model_card(summary)
    assert ("served file is the **static\\_int8** variant of mlp (model.compressed.onnx): 97.7 KB against "
            "390.6 KB uncompressed (0.25×)") in card
    assert "p50 latency at batch 64 0.25 ms against 1 ms" in card and "(-0.0050)" in card
    assert "| static\\_int8 (served) |" in card and "| uncompressed |" in card
    assert "**Hyperparameter search:** mlp by auto over 12 trials" in card and "best 0.8610 at trial 7" in card
