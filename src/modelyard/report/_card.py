"""The model card: a Markdown page following Mitchell et al. (2019).

Sections: model details, intended use, factors, metrics, evaluation data, training
data, quantitative analyses, ethical considerations, caveats and recommendations. The
card is filled from the run's summary (see :mod:`modelyard.report._html` for its shape);
the parts only a person can write (intended use, ethical considerations, caveats) come
from ``summary["card"]`` when given and are otherwise left as marked prompts beside
what the run measured.

Every value from data or spec is escaped for Markdown before it reaches the page: the
template engine passes each ``{{ }}`` through :func:`md_escape` (HTML specials become
entities, Markdown punctuation is backslash-escaped, ``|`` cannot split a table cell,
line breaks become spaces), so ``<script>`` or ``[x](javascript:...)`` in a column name
reads as text in any renderer.

References
----------
.. [MC] M. Mitchell et al., "Model Cards for Model Reporting", FAT* 2019,
   arXiv:1810.03993.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelyard.report._html import (
    SMALL_GROUP,
    atomic_write_text,
    fmt_bytes,
    fmt_int,
    fmt_metric,
    fmt_sci,
    fmt_seconds,
    metric_label,
    normalize_summary,
    _greater_is_better,
)

__all__ = ["render_model_card", "write_model_card", "md_escape"]

#: What each built-in metric means, as the card states it.
METRIC_DEFINITIONS = {
    "count": "Number of rows.",
    "accuracy": "Share of rows whose most probable class is the true class. Higher is better.",
    "auc": (
        "Area under the ROC curve: the probability that a random positive row scores above a random negative one "
        "(multiclass: one-vs-rest macro average). Undefined (—) for a group that holds a single class. "
        "Higher is better."
    ),
    "log_loss": (
        "Mean negative natural log of the probability given to the true class, probabilities clipped to "
        "[1e-15, 1 − 1e-15]. Lower is better."
    ),
    "rmse": "Root mean squared error. Lower is better.",
    "mae": "Mean absolute error. Lower is better.",
    "r2": (
        "Coefficient of determination, 1 − SS_res / SS_tot; undefined (—) when the target is constant. "
        "Higher is better."
    ),
}

_MD_PUNCT = re.compile(r"([\\`*_\[\]|$~#])")


def md_escape(value: Any) -> str:
    """Escape a value so Markdown (CommonMark/GFM) shows it as literal text.

    ``&``, ``<`` and ``>`` become HTML entities (no raw HTML, no autolinks); the
    Markdown punctuation ``\\ ` * _ [ ] | $ ~ #`` is backslash-escaped (no emphasis,
    links, table-cell breaks, math or headings); line breaks become spaces (no new
    block can start).
    """
    text = "" if value is None else str(value)
    text = re.sub(r"[\r\n]+", " ", text)
    text = _MD_PUNCT.sub(r"\\\1", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Trusted(str):
    """Markdown this module wrote itself; :func:`_finalize` passes it through unescaped."""


def _finalize(value: Any) -> str:
    if isinstance(value, _Trusted):
        return value
    if value is None:
        return "—"
    return md_escape(value)


_ENV: Any = None

#: Features listed in the card's importance table (the HTML report shows more).
TOP_FEATURES = 8


def _environment() -> Any:
    global _ENV
    if _ENV is None:
        import jinja2

        from modelyard.report._html import _TEMPLATES

        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
            autoescape=False,  # Markdown, not HTML: _finalize escapes every {{ }} for Markdown instead
            finalize=_finalize,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        env.filters.update(
            metric=fmt_metric, seconds=fmt_seconds, bytes=fmt_bytes, sci=fmt_sci, thousands=fmt_int, label=metric_label
        )
        _ENV = env
    return _ENV


def _card_context(summary: Mapping[str, Any]) -> dict[str, Any]:
    from modelyard import __version__
    from modelyard.report._html import _automl_section, _search_section

    view = normalize_summary(summary)
    models = view["models"]
    model = next((m for m in models if m["chosen"]), models[0] if models else None)
    sensitive = set(view["data"]["sensitive"])

    evaluation = None
    if model is not None:
        evaluation = model["test"] or model["valid"]
    split = ("test" if model["test"] else "valid") if evaluation else None

    # Slice specs (which columns each slice uses) come from SliceReport.to_dict()["slices"].
    raw_model = (summary.get("models") or {}).get(model["name"], {}) if model else {}
    raw_split = raw_model.get(split) if isinstance(raw_model, Mapping) and split else None
    slice_features: dict[str, list[str]] = {}
    if isinstance(raw_split, Mapping) and isinstance(raw_split.get("slices"), list):
        for sl in raw_split["slices"]:
            if isinstance(sl, Mapping) and isinstance(sl.get("features"), list):
                slice_features[str(sl.get("name"))] = [str(f) for f in sl["features"]]

    slices = []
    for sl in evaluation["slices"] if evaluation else []:
        metrics = evaluation["metrics"]
        features = slice_features.get(sl["name"], [sl["name"]])
        gaps = []
        for metric in metrics:
            if metric == "count":
                continue
            vals = [
                {"value": g["value"], "score": g["values"][metric], "n": g["values"].get("count")}
                for g in sl["groups"]
                if g["values"].get(metric) is not None
            ]
            if len(vals) < 2:
                continue
            direction = _greater_is_better(metric)
            hi = max(vals, key=lambda x: x["score"])
            lo = min(vals, key=lambda x: x["score"])
            best, worst = (hi, lo) if direction is not False else (lo, hi)
            gaps.append({"metric": metric, "gap": hi["score"] - lo["score"], "best": best, "worst": worst,
                         "known": direction is not None})
        small = [g for g in sl["groups"] if g["values"].get("count") is not None and g["values"]["count"] < SMALL_GROUP]
        undefined = [g["value"] for g in sl["groups"] if any(g["values"].get(m) is None for m in metrics)]
        slices.append(
            {
                "name": sl["name"],
                "features": features,
                "sensitive": bool(sensitive) and all(f in sensitive for f in features),
                "groups": sl["groups"],
                "metrics": metrics,
                "gaps": gaps,
                "small": small,
                "undefined": undefined,
            }
        )
    main_metric = None
    if evaluation:
        for candidate in ("accuracy", "rmse", "auc", "r2", "mae", "log_loss"):
            if candidate in evaluation["metrics"]:
                main_metric = candidate
                break
    all_metrics: list[str] = []
    for m in models:
        for rep in (m["test"], m["valid"]):
            for metric in rep["metrics"] if rep else []:
                if metric not in all_metrics:
                    all_metrics.append(metric)
    headline_metrics: list[str] = []
    for m in models:
        for metric in m["test"]["metrics"] if m["test"] else []:
            if metric not in headline_metrics:
                headline_metrics.append(metric)
    features = view["data"]["features"]
    return {
        **view,
        "model": model,
        "evaluation": evaluation,
        "split": split,
        "slices": slices,
        "main_metric": main_metric,
        "metric_rows": [
            {"name": metric, "label": metric_label(metric), "definition": METRIC_DEFINITIONS.get(metric)}
            for metric in all_metrics
        ],
        "headline_metrics": headline_metrics,
        "feature_step": _feature_step(summary.get("features")),
        "search": _search_section(summary.get("search"), plots=False),
        "automl": _automl_section(summary.get("automl")),
        "n_numeric": sum(1 for f in features if f["kind"] == "numeric"),
        "n_categorical": sum(1 for f in features if f["kind"] == "categorical"),
        "version": __version__,
        "small_group": SMALL_GROUP,
        "task_words": {
            "binary": "binary classification",
            "multiclass": "multiclass classification",
            "regression": "regression",
        }.get(view["data"]["task"], view["data"]["task"]),
    }


def _feature_step(features: Any) -> dict[str, Any] | None:
    """What the pipeline's features step did, for the training-data section (None without one)."""
    if not isinstance(features, Mapping):
        return None
    serving = features.get("serving") if isinstance(features.get("serving"), Mapping) else {}
    transform = serving.get("transform") if isinstance(serving.get("transform"), Mapping) else None
    return {
        "method": str(features.get("method") or ""),
        "extraction": features.get("family") == "extraction",
        "k": features.get("k"),
        "n_inputs": len(features.get("input_columns") or []),
        "selected": [str(c) for c in features.get("selected") or []],
        "reason": str(features.get("reason") or ""),
        "transform_path": str(transform.get("path") or "") if transform and not transform.get("composed") else "",
    }


def render_model_card(summary: Mapping[str, Any]) -> str:
    """Render the model card of the run's chosen model as Markdown.

    Parameters
    ----------
    summary : dict
        The run's ``metrics.json`` content (shape in :mod:`modelyard.report._html`).
        ``summary["card"]`` may hold owner-written ``intended_use``,
        ``out_of_scope``, ``ethical_considerations`` and ``caveats``.

    Returns
    -------
    str
        Markdown with the sections of Mitchell et al. (2019). Strings from data and spec
        are escaped (:func:`md_escape`).

    Raises
    ------
    TypeError
        If ``summary`` is not a dict or a part has the wrong type (the message names
        its path).
    """
    card = _environment().get_template("model_card.md.j2").render(**_card_context(summary))
    analysis = _analysis_markdown(summary)
    if analysis:  # fairness and gate results close the quantitative analyses
        marker = "## Ethical considerations"
        at = card.find(marker)
        card = card[:at] + analysis + card[at:] if at >= 0 else card + "\n" + analysis
    return card


#: The fairness and gate summary of the card; every {{ }} goes through md_escape like the template's.
_ANALYSIS = """\
{% if fairness %}
### Fairness indicators ({{ fairness.split }} split, threshold {{ fairness.threshold }})

Rates of {{ fairness.model or "the chosen model" }} per group of each sensitive feature{% if fairness.confidence %}, with {{ fairness.confidence | level }} bootstrap intervals in the HTML report{% endif %}. Differences are max − min over groups (0 is parity), ratios min / max (1 is parity).

| Sensitive feature |{% for c in fairness.columns %} {{ c.label }} |{% endfor %}

|---|{% for c in fairness.columns %}---:|{% endfor %}

{% for f in fairness.features %}
| {{ f.name }} |{% for c in fairness.columns %} {{ f.disparities.get(c.name) | metric }} |{% endfor %}

{% endfor %}

{% for f in fairness.features %}
{% set small = f.rows | selectattr("small") | list %}
{% if small %}
- Small groups of {{ f.name }} (noisy rates): {% for r in small %}{{ r.group }} ({{ r.count | thousands }}){% if not loop.last %}, {% endif %}{% endfor %}

{% endif %}
{% endfor %}

{% endif %}
{% if compress %}
### Compression ({{ compress.rows_measured | thousands }} {{ compress.split }} rows, ONNX Runtime)

{% if best_variant and not best_variant.reference %}
The served file is the **{{ best_variant.variant }}** variant of {{ compress.model }} (model.compressed.onnx): {{ best_variant.size | bytes }} against {{ reference.size | bytes }} uncompressed ({{ best_variant.size_ratio | ratio }}){% for b in compress.batch_sizes %}, p50 latency at batch {{ b }} {{ best_variant.latency[loop.index0][0] }} against {{ reference.latency[loop.index0][0] }}{% endfor %}; {{ compress.metric | label }} {{ best_variant.value | metric(compress.metric) }} against {{ reference.value | metric(compress.metric) }} ({{ best_variant.change | signed }}). The {{ compress.metric | label }} may drop by at most {{ compress.max_drop | metric }} on the validation split.
{% else %}
The uncompressed model is served. {{ compress.reason or "No variant was within the budget." }}
{% endif %}

| Variant | Size | {{ compress.metric | label }} | Change |{% for b in compress.batch_sizes %} p50 b{{ b }} |{% endfor %}

|---|---:|---:|---:|{% for b in compress.batch_sizes %}---:|{% endfor %}

{% for r in compress.rows %}
| {{ r.variant }}{% if r.best %} (served){% endif %}{% if r.error %} (failed: {{ r.error }}){% endif %} | {{ r.size | bytes }} | {{ r.value | metric(compress.metric) }} | {{ r.change | signed }} |{% for l in r.latency %} {{ l[0] }} |{% endfor %}

{% endfor %}

{% if compress.slices %}
Per-group {{ compress.metric | label }} of every variant is in the HTML report; a variant within the overall budget can still lose more in a small group.

{% endif %}
{% endif %}
{% if explain and explain.importance %}
### What drives the predictions ({{ explain.model }}, {{ explain.split }} split)

Permutation importance{% if explain.metric %} (drop of {{ explain.metric }} when the feature is shuffled{% if explain.n_repeats %}, {{ explain.n_repeats | thousands }} repeats{% endif %}{% if explain.perm_rows %} over {{ explain.perm_rows | thousands }} rows{% endif %}){% endif %}; the HTML report has {% for m in explain.methods %}{{ m }}{% if not loop.last %}, {% endif %}{% endfor %} plots. Importance describes the model, not causes in the world.

| Feature | Importance | Interval |
|---|---:|---|
{% for r in explain.importance[:top_features] %}
| {{ r.feature }} | {{ r.importance | metric }} | {% if r.low is not none and r.high is not none %}{{ r.low | metric }} to {{ r.high | metric }}{% else %}—{% endif %} |
{% endfor %}

{% endif %}
{% if gate %}
### Validation gate

**{{ "Blessed" if gate.blessed else "Not blessed" }}:** {{ gate.counts.passed | thousands }} of {{ gate.counts.checks | thousands }} checks passed, {{ gate.counts.failed | thousands }} failed, {{ gate.counts.skipped | thousands }} skipped (test split).

{% for c in gate.checks if c.status == "fail" %}
- Failed: {{ c.reason }}
{% endfor %}

{% endif %}
"""


def _analysis_markdown(summary: Mapping[str, Any]) -> str:
    """The card's fairness, compression, importance and gate subsections, or "" when the run has none."""
    from modelyard.report._html import (
        _compress_section, _explain_section, _fairness_section, _gate_section, _text, fmt_level,
    )

    fairness = _fairness_section(summary.get("fairness"), plots=False)
    gate = _gate_section(summary.get("gate"))
    compress = _compress_section(summary.get("compress"), plots=False)
    explain = _explain_section(summary.get("explain"), plots=False)
    if fairness is None and gate is None and compress is None and not (explain and explain["importance"]):
        return ""
    best_variant = reference = None
    if compress is not None:
        raw = summary["compress"]
        compress["split"] = _text(raw.get("measured_on")) or "test"
        reference = next((r for r in compress["rows"] if r["reference"]), None)
        best_variant = next((r for r in compress["rows"] if r["best"]), None)
        if reference is None:  # a table without its reference row cannot be compared
            compress = None
    env = _environment()
    env.filters.setdefault("level", fmt_level)
    env.filters.setdefault("ratio", lambda v: "—" if v is None else f"{v:.3g}×")
    env.filters.setdefault("signed", lambda v: "—" if v is None else f"{v:+.4f}")
    return env.from_string(_ANALYSIS).render(fairness=fairness, gate=gate, compress=compress, explain=explain,
                                             best_variant=best_variant, reference=reference,
                                             top_features=TOP_FEATURES)


def write_model_card(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render the model card and write it atomically (temporary file, then ``os.replace``).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return atomic_write_text(path, render_model_card(summary))
