"""The run's self-contained HTML report.

:func:`render_html` turns the run's ``metrics.json`` content (the *summary*) into one
HTML page: inline CSS, plots as base64 PNG ``data:`` URIs, no JavaScript, no external
URL, and a Content-Security-Policy that forbids scripts and network requests. Every
string from data or spec goes through Jinja2 autoescaping (the template never marks data
``|safe``), so a column named ``<script>`` renders as text.

Summary shape
-------------
Every key is optional except that ``summary`` must be a dict; a missing part leaves its
section out or shows "—"::

    {
      "run_id": str, "pipeline": str, "created_at": ISO 8601 str,
      "spec": {...the resolved spec...},
      "data": {
        "name": str, "target": str, "task": "binary" | "multiclass" | "regression",
        "classes": [label, ...], "sensitive": [column, ...],
        "rows": {"train": int, "valid": int, "test": int},
        "features": [{"name": str, "kind": "numeric" | "categorical"}, ...],
        "sources": {file name: sha256 hex},
      },
      "models": {
        "<model name>": {
          "family": str, "fit_seconds": float,
          "valid": SliceReport.to_dict(), "test": SliceReport.to_dict(),
          "roc": {"fpr": [...], "tpr": [...], "split": "test"},   # optional; binary only
          "nas": {"strategy", "budget", "trained", "epochs", "best", "leaderboard_top",
                  "history": [[index, accuracy], ...], ...},      # optional; the nas step's model
        },
      },
      "chosen": {"model": str, "metric": str, "split": "valid",
                 "onnx": {"path": str, "bytes": int, "max_abs_diff": float,
                          "parity_rows": int,                          # parity_rows optional
                          "inputs": "raw" | "components",             # optional, after a features step
                          "transform": {"method", "composed", "path"} | None}},
      "features": {                                                   # optional: the features step
        "family": "selection" | "extraction", "method": str, "kind": str, "metric": "accuracy" | "r2",
        "k": int, "reason": str, "selected": [column or component, ...], "input_columns": [column, ...],
        "curve": [{"k", "score", "n_params", "model_bytes", "columns"}, ...], "baseline": {...} | None,
        "chosen": {...one curve point...},
        "scores": {column: float}, "ranking": [column, ...],            # selection
        "explained_variance_ratio": [float, ...], "variance": float,    # extraction
        "variance_kept": float, "target_size": int | None,
        "serving": {"inputs": "raw" | "components", "transform": {"method", "composed", "path"} | None},
      },
      "fairness": {"model", "split", **FairnessReport.to_dict()},    # optional: evaluate/fairness.json
      "gate": {"blessed": bool, "summary": str, "counts": {...},     # optional: the verdict and checks
               "checks": [Check.to_dict(), ...]},                     # of evaluate/blessing.json
      "remediation": {"sensitive": str, "base": str, "constraint": str,  # optional: remediation.json
                      "tolerance": float, "methods": [str, ...], "rows": {...},
                      "table": [{"method", "accuracy", "demographic_parity_difference",
                                 "equalized_odds_difference", "accuracy_cost", "fit_time_s"}, ...]},
      "steps": [{"name": str, "status": "ran" | "cached", "seconds": float}, ...],
      "card": {"intended_use": str, "out_of_scope": str,              # model card only:
               "ethical_considerations": str, "caveats": str},        # owner-written text
    }

``SliceReport.to_dict()`` is ``{"task", "n_rows", "metrics", "slices", "overall",
"by_slice"}`` (see :meth:`modelyard.evaluate.SliceReport.to_dict`); the report reads
``overall`` and ``by_slice`` and takes the metric order from ``metrics``; with a
bootstrap it also shows ``intervals`` (value [low, high]) and flags the groups in
``small``. A value that
is present but of the wrong type raises ``TypeError`` naming its path, e.g.
``summary['models']['mlp']['test']['by_slice']``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelyard._atomic import atomic_path

__all__ = ["render_html", "write_html"]

_TEMPLATES = Path(__file__).resolve().parent / "templates"

#: How metric names are shown; unknown names are shown as given.
METRIC_LABELS = {
    "count": "n",
    "accuracy": "Accuracy",
    "auc": "AUC",
    "log_loss": "Log-loss",
    "rmse": "RMSE",
    "mae": "MAE",
    "r2": "R²",
}
#: Owner-written model-card text that ``summary["card"]`` may hold.
CARD_FIELDS = ("intended_use", "out_of_scope", "ethical_considerations", "caveats")
#: Groups with fewer rows than this are flagged: their metrics are noisy.
SMALL_GROUP = 30


# -- reading the summary defensively -------------------------------------------------------
_TYPE_NAMES = {dict: "a dict", list: "a list", str: "a string"}


def _get(d: Mapping[str, Any], key: str, kind: type, path: str, default: Any = None) -> Any:
    """``d[key]`` if present and not None, checked against ``kind``; else ``default``."""
    v = d.get(key)
    if v is None:
        return default
    if not isinstance(v, Mapping if kind is dict else kind):
        want = _TYPE_NAMES.get(kind, kind.__name__)
        raise TypeError(f"{path}[{key!r}] must be {want}; got {type(v).__name__} {_short(v)}.")
    return v


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _num(v: Any) -> float | None:
    """A finite number, else None (missing, NaN, or not a number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    return float(v) if math.isfinite(v) else None


def _text(v: Any) -> str:
    return "" if v is None else str(v)


def _greater_is_better(metric: str) -> bool | None:
    from modelyard.evaluate import METRICS

    if metric in METRICS:
        return getattr(METRICS.get(metric), "greater_is_better", None)
    return None


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _split_report(d: Any, path: str) -> dict[str, Any] | None:
    """Normalise one ``SliceReport.to_dict()``: metrics, overall and slices with their groups."""
    if d is None:
        return None
    if not isinstance(d, Mapping):
        raise TypeError(f"{path} must be a dict (SliceReport.to_dict()); got {type(d).__name__} {_short(d)}.")
    overall = dict(_get(d, "overall", dict, path, {}))
    by_slice = _get(d, "by_slice", dict, path, {})
    metrics = [str(m) for m in _get(d, "metrics", list, path, [])]
    seen = set(metrics)
    for values in [overall, *(g for t in by_slice.values() if isinstance(t, Mapping) for g in t.values())]:
        if isinstance(values, Mapping):
            for m in values:
                if m not in seen:
                    seen.add(m)
                    metrics.append(str(m))
    if "count" in metrics:  # count first, as SliceReport orders it
        metrics.remove("count")
        metrics.insert(0, "count")
    # Bootstrap intervals (SliceReport.to_dict()["intervals"]) and the report's own small-group flags.
    ci = d.get("intervals") if isinstance(d.get("intervals"), Mapping) else {}
    ci_slices = ci.get("by_slice") if isinstance(ci.get("by_slice"), Mapping) else {}
    small = d.get("small") if isinstance(d.get("small"), Mapping) else {}
    slices = []
    # The spec's slice order (SliceReport.to_dict()["slices"]), which a JSON file with sorted keys loses.
    spec_order = [str(s.get("name")) for s in d.get("slices") or [] if isinstance(s, Mapping)]
    ordered = sorted(by_slice, key=lambda n: spec_order.index(n) if n in spec_order else len(spec_order))
    for name in ordered:
        table = by_slice[name]
        if not isinstance(table, Mapping):
            raise TypeError(f"{path}['by_slice'][{name!r}] must be a dict of groups; got {type(table).__name__}.")
        groups = []
        ci_table = ci_slices.get(name) if isinstance(ci_slices.get(name), Mapping) else {}
        flagged = {str(g) for g in small.get(name) or []} if isinstance(small.get(name), list) else set()
        for value, values in table.items():
            if not isinstance(values, Mapping):
                raise TypeError(f"{path}['by_slice'][{name!r}][{value!r}] must be a dict of metric values.")
            groups.append({"value": str(value), "values": {m: _num(values.get(m)) for m in metrics},
                           "intervals": _pairs(ci_table.get(value), metrics), "flagged": str(value) in flagged})
        slices.append({"name": str(name), "groups": groups})
    return {
        "metrics": metrics,
        "overall": {m: _num(overall.get(m)) for m in metrics},
        "n_rows": _num(d.get("n_rows")) or _num(overall.get("count")),
        "slices": slices,
        "intervals": _pairs(ci.get("overall"), metrics),
        "confidence": _num(ci.get("confidence")),
        "replicates": _num(ci.get("replicates")),
        "min_count": _num(d.get("min_count")),
    }


def _pairs(d: Any, names: list[str]) -> dict[str, tuple[float, float]]:
    """``{name: (low, high)}`` for the names whose interval is two finite numbers; others left out."""
    out: dict[str, tuple[float, float]] = {}
    if not isinstance(d, Mapping):
        return out
    for m in names:
        v = d.get(m)
        if isinstance(v, (list, tuple)) and len(v) == 2:
            lo, hi = _num(v[0]), _num(v[1])
            if lo is not None and hi is not None:
                out[m] = (lo, hi)
    return out


def _created(value: Any) -> str:
    if not value:
        return ""
    text = str(value)
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    out = t.strftime("%Y-%m-%d %H:%M")
    if t.tzinfo is not None:
        offset = t.utcoffset()
        out += " UTC" if offset == _dt.timedelta(0) else t.strftime(" %z")
    return out


def normalize_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Read a summary into plain, complete structures the templates can rely on.

    Shared by the HTML report and the model card. Missing parts get empty defaults;
    present parts of the wrong type raise ``TypeError`` naming their path.
    """
    if not isinstance(summary, Mapping):
        raise TypeError(f"summary must be a dict (the run's metrics.json); got {type(summary).__name__}.")
    s = "summary"
    data = _get(summary, "data", dict, s, {})
    ds = f"{s}['data']"
    rows = {str(k): _num(v) for k, v in _get(data, "rows", dict, ds, {}).items()}
    features = []
    for i, f in enumerate(_get(data, "features", list, ds, [])):
        if isinstance(f, Mapping):
            features.append({"name": _text(f.get("name")), "kind": _text(f.get("kind"))})
        elif isinstance(f, str):
            features.append({"name": f, "kind": ""})
        else:
            raise TypeError(f"{ds}['features'][{i}] must be a dict with 'name' and 'kind'; got {_short(f)}.")
    sources = [
        {"file": str(k), "sha256": _text(v)} for k, v in _get(data, "sources", dict, ds, {}).items()
    ]
    spec = _get(summary, "spec", dict, s, None)
    sensitive = [str(c) for c in _get(data, "sensitive", list, ds, [])]
    if not sensitive and spec is not None and isinstance(spec.get("data"), Mapping):
        spec_sensitive = spec["data"].get("sensitive")
        if isinstance(spec_sensitive, list):
            sensitive = [str(c) for c in spec_sensitive]

    chosen_d = _get(summary, "chosen", dict, s, {})
    cs = f"{s}['chosen']"
    chosen_name = _get(chosen_d, "model", str, cs, None)
    onnx_d = _get(chosen_d, "onnx", dict, cs, None)
    onnx = None
    if onnx_d is not None:
        onnx = {
            "path": _text(onnx_d.get("path")),
            "bytes": _num(onnx_d.get("bytes")),
            "max_abs_diff": _num(onnx_d.get("max_abs_diff")),
            "parity_rows": _num(onnx_d.get("parity_rows")),
            "inputs": _text(onnx_d.get("inputs")),
        }
        if onnx["inputs"] == "image":  # an image model takes one `image` tensor: no raw columns or components
            onnx["inputs"] = ""
        transform_d = _get(onnx_d, "transform", dict, f"{cs}['onnx']", None)
        onnx.update(composed=bool(transform_d and transform_d.get("composed")),
                    transform_method=_text(transform_d.get("method")) if transform_d else "",
                    transform_path=_text(transform_d.get("path")) if transform_d else "")

    models = []
    task = _text(data.get("task"))
    for name, m in _get(summary, "models", dict, s, {}).items():
        ms = f"{s}['models'][{name!r}]"
        if not isinstance(m, Mapping):
            raise TypeError(f"{ms} must be a dict; got {type(m).__name__} {_short(m)}.")
        test = _split_report(m.get("test"), f"{ms}['test']")
        valid = _split_report(m.get("valid"), f"{ms}['valid']")
        roc = None
        roc_d = _get(m, "roc", dict, ms, None)
        if roc_d is not None:
            fpr, tpr = roc_d.get("fpr"), roc_d.get("tpr")
            if isinstance(fpr, list) and isinstance(tpr, list) and len(fpr) == len(tpr) and len(fpr) >= 2:
                pts = [(_num(a), _num(b)) for a, b in zip(fpr, tpr)]
                if all(a is not None and b is not None for a, b in pts):
                    roc = {"fpr": [a for a, _ in pts], "tpr": [b for _, b in pts], "split": _text(roc_d.get("split"))}
            if roc is None:
                raise TypeError(f"{ms}['roc'] must hold equal-length lists 'fpr' and 'tpr' of numbers (2 or more).")
        if not task:
            for part in (m.get("test"), m.get("valid")):
                if isinstance(part, Mapping) and part.get("task"):
                    task = str(part["task"])
                    break
        models.append(
            {
                "name": str(name),
                "family": _text(m.get("family")),
                "fit_seconds": _num(m.get("fit_seconds")),
                "test": test,
                "valid": valid,
                "roc": roc,
                "chosen": str(name) == chosen_name,
            }
        )
    models.sort(key=lambda m: not m["chosen"])  # chosen first, others in summary order

    steps = []
    for i, st in enumerate(_get(summary, "steps", list, s, [])):
        if not isinstance(st, Mapping):
            raise TypeError(f"{s}['steps'][{i}] must be a dict with 'name', 'status' and 'seconds'; got {_short(st)}.")
        steps.append(
            {"name": _text(st.get("name")), "status": _text(st.get("status")), "seconds": _num(st.get("seconds"))}
        )

    card = _get(summary, "card", dict, s, {})
    return {
        "run_id": _text(summary.get("run_id")),
        "pipeline": _text(summary.get("pipeline")),
        "created_at": _created(summary.get("created_at")),
        "created_at_raw": _text(summary.get("created_at")),
        "spec": spec,
        "data": {
            "name": _text(data.get("name")),
            "target": _text(data.get("target")),
            "task": task,
            "classes": [str(c) for c in _get(data, "classes", list, ds, [])],
            "rows": rows,
            "features": features,
            "sources": sources,
            "sensitive": sensitive,
        },
        "models": models,
        "chosen": {
            "model": chosen_name,
            "metric": _get(chosen_d, "metric", str, cs, None),
            "split": _get(chosen_d, "split", str, cs, None),
            "onnx": onnx,
        } if chosen_d else None,
        "steps": steps,
        "card": {k: _text(card.get(k)) for k in CARD_FIELDS},
    }


# -- formatting ------------------------------------------------------------------------------
def fmt_metric(value: float | None, metric: str = "") -> str:
    """``0.8512``; counts as ``12,345``; missing or undefined as ``—``."""
    if value is None:
        return "—"
    if metric == "count":
        return f"{int(round(value)):,}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:.4f}"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 0.1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    minutes, sec = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size):,} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover


def fmt_share(value: float | None) -> str:
    """A fraction as a percentage: ``12.5%``; a tiny but nonzero share as ``<0.1%``."""
    if value is None:
        return "—"
    if 0 < value < 0.001:
        return "<0.1%"
    return f"{value * 100:.1f}%"


def fmt_level(value: float | None) -> str:
    """A confidence level as a percentage without trailing zeros: ``95%``, ``99.5%``."""
    return "—" if value is None else f"{value * 100:g}%"


def fmt_sci(value: float | None) -> str:
    if value is None:
        return "—"
    return "0" if value == 0 else f"{value:.2e}"


def fmt_int(value: float | None) -> str:
    return "—" if value is None else f"{int(round(value)):,}"


# -- building the page -------------------------------------------------------------------------
def _metric_columns(models: list[dict[str, Any]], split: str) -> list[str]:
    cols: list[str] = []
    for m in models:
        rep = m[split]
        for metric in rep["metrics"] if rep else []:
            if metric not in cols:
                cols.append(metric)
    return cols


def _best(models: list[dict[str, Any]], metric: str) -> set[str]:
    """Names of the models with the best test value of ``metric`` (none if direction unknown)."""
    direction = _greater_is_better(metric)
    scored = [(m["name"], m["test"]["overall"].get(metric)) for m in models if m["test"]]
    scored = [(n, v) for n, v in scored if v is not None]
    if direction is None or len(scored) < 2:
        return set()
    target = max(v for _, v in scored) if direction else min(v for _, v in scored)
    return {n for n, v in scored if v == target}


def _plot_metric(task: str, metrics: list[str]) -> str | None:
    for candidate in ("accuracy", "auc") if task != "regression" else ("rmse", "mae", "r2"):
        if candidate in metrics:
            return candidate
    return next((m for m in metrics if m != "count"), None)


def _slice_sections(view: dict[str, Any], *, plots: bool) -> list[dict[str, Any]]:
    """One section per slice: the chart of all models and a table per model."""
    from modelyard.report import _plots

    models = [m for m in view["models"] if m["test"] or m["valid"]]
    names: list[str] = []
    for m in models:
        for sl in (m["test"] or m["valid"])["slices"]:
            if sl["name"] not in names:
                names.append(sl["name"])
    all_metrics = _metric_columns([m for m in models if m["test"]], "test") or _metric_columns(models, "valid")
    plot_metric = _plot_metric(view["data"]["task"], all_metrics)
    sections = []
    for index, name in enumerate(names):
        tables = []
        for m in models:
            split = "test" if m["test"] else "valid"
            rep = m[split]
            sl = next((x for x in rep["slices"] if x["name"] == name), None)
            if sl is None:
                continue
            metrics = rep["metrics"]
            counts = {g["value"]: g["values"].get("count") for g in sl["groups"]}
            total = sum(c or 0 for c in counts.values()) or None
            gaps, worst = {}, {}
            for metric in metrics:
                if metric == "count":
                    continue
                vals = [(g["value"], g["values"].get(metric)) for g in sl["groups"]]
                vals = [(g, v) for g, v in vals if v is not None]
                if len(vals) >= 2:
                    gaps[metric] = max(v for _, v in vals) - min(v for _, v in vals)
                # The worst group is marked among groups large enough to trust (small ones are flagged apart).
                large = [(g, v) for g, v in vals if (counts.get(g) or 0) >= SMALL_GROUP]
                direction = _greater_is_better(metric)
                if len(large) >= 2 and direction is not None:
                    lo, hi = min(v for _, v in large), max(v for _, v in large)
                    if lo != hi:
                        target = lo if direction else hi
                        worst[metric] = {g for g, v in large if v == target}
            rows = []
            for g in sl["groups"]:
                n = g["values"].get("count")
                rows.append(
                    {
                        "value": g["value"],
                        "values": g["values"],
                        "intervals": g.get("intervals") or {},
                        "share": (n / total) if (n is not None and total) else None,
                        "small": (n is not None and n < SMALL_GROUP) or bool(g.get("flagged")),
                        "worst": {metric for metric, groups in worst.items() if g["value"] in groups},
                    }
                )
            tables.append(
                {"model": m["name"], "chosen": m["chosen"], "split": split, "metrics": metrics, "rows": rows,
                 "gaps": gaps, "overall": rep["overall"], "has_small": any(r["small"] for r in rows),
                 "overall_intervals": rep.get("intervals") or {}, "confidence": rep.get("confidence")}
            )
        chart = None
        if plots and plot_metric is not None and tables:
            groups: list[str] = []
            for t in tables:
                for r in t["rows"]:
                    if r["value"] not in groups:
                        groups.append(r["value"])
            ref = tables[0]["rows"]
            counts = {r["value"]: r["values"].get("count") for r in ref}
            by_model = {t["model"]: {r["value"]: r["values"].get(plot_metric) for r in t["rows"]} for t in tables}
            values = {model: [row.get(g) for g in groups] for model, row in by_model.items()}
            chart = _plots.slice_metric_chart(
                groups=groups,
                counts=[int(counts[g]) if counts.get(g) is not None else None for g in groups],
                values=values,
                overall={t["model"]: t["overall"].get(plot_metric) for t in tables},
                metric_label=metric_label(plot_metric),
                bounded=plot_metric in ("accuracy", "auc"),
                chosen=view["chosen"]["model"] if view["chosen"] else None,
                small_group=SMALL_GROUP,
            )
        sections.append(
            {"id": f"slice-{index}", "name": name, "tables": tables, "chart": chart,
             "plot_metric": metric_label(plot_metric) if plot_metric else None}
        )
    return sections


def _interval_charts(view: dict[str, Any], *, plots: bool) -> dict[str, Any] | None:
    """The chosen model's test metrics on every group of every slice, one chart per metric, with intervals.

    ``None`` unless the chosen model's test report has bootstrap intervals (the evaluate
    step's ``bootstrap``) and at least one slice.
    """
    from modelyard.report import _plots

    model = next((m for m in view["models"] if m["chosen"]), None)
    rep = model["test"] if model else None
    has_ci = rep is not None and (rep["intervals"] or any(g["intervals"] for s in rep["slices"] for g in s["groups"]))
    if not has_ci or not rep["slices"]:
        return None
    labels, counts, small, breaks, cells = [], [], [], [], []
    for sl in rep["slices"]:
        breaks.append(len(labels))
        for g in sl["groups"]:
            n = g["values"].get("count")
            labels.append(f"{sl['name']} = {g['value']}")
            counts.append(int(n) if n is not None else None)
            small.append((n is not None and n < SMALL_GROUP) or bool(g.get("flagged")))
            cells.append(g)
    charts = []
    for metric in rep["metrics"]:
        if metric == "count":
            continue
        src = None
        if plots:
            ci = [g["intervals"].get(metric) for g in cells]
            src = _plots.slice_interval_chart(
                labels=labels, counts=counts, values=[g["values"].get(metric) for g in cells],
                lows=[c[0] if c else None for c in ci], highs=[c[1] if c else None for c in ci], small=small,
                breaks=breaks, overall=rep["overall"].get(metric), overall_interval=rep["intervals"].get(metric),
                metric_label=metric_label(metric), bounded=metric in ("accuracy", "auc"),
                confidence=rep["confidence"])
        charts.append({"metric": metric, "label": metric_label(metric), "src": src})
    return {"model": model["name"], "confidence": rep["confidence"], "replicates": rep["replicates"],
            "charts": charts}


#: The disparities the fairness table shows, in order (every one is in fairness.json).
FAIRNESS_DISPARITIES = ("demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference",
                        "equal_opportunity_difference")
#: Rates drawn per group in the fairness charts, with their labels.
FAIRNESS_RATES = {"selection_rate": "Selection rate", "tpr": "TPR", "fpr": "FPR"}


def _fairness_section(fairness: Any, *, plots: bool) -> dict[str, Any] | None:
    """The optional ``fairness`` part (``FairnessReport.to_dict()`` plus ``model``, ``split``).

    At the report's first decision threshold: per sensitive feature, the rates per group
    with their intervals (table and bar chart with error bars) and the disparities.
    """
    if not isinstance(fairness, Mapping) or not isinstance(fairness.get("groups"), Mapping):
        return None
    from modelyard.evaluate import DISPARITIES
    from modelyard.report import _plots

    thresholds = [t for t in (_num(t) for t in fairness.get("thresholds") or []) if t is not None]
    t = thresholds[0] if thresholds else 0.5
    key = f"{t:g}"
    indicators = [str(i) for i in fairness.get("indicators") or FAIRNESS_RATES]
    intervals = fairness.get("intervals") if isinstance(fairness.get("intervals"), Mapping) else {}
    small = fairness.get("small") if isinstance(fairness.get("small"), Mapping) else {}
    overall_d = fairness.get("overall") if isinstance(fairness.get("overall"), Mapping) else {}
    overall_t = overall_d.get(key) if isinstance(overall_d.get(key), Mapping) else {}
    overall = {m: _num(overall_t.get(m)) for m in indicators}
    disparities = fairness.get("disparities") if isinstance(fairness.get("disparities"), Mapping) else {}
    features = []
    order = [str(f) for f in fairness.get("features") or [] if str(f) in fairness["groups"]]
    order += [str(f) for f in fairness["groups"] if str(f) not in order]  # the report's order, then any others
    for index, feature in enumerate(order):
        by_t = fairness["groups"][feature]
        table = by_t.get(key) if isinstance(by_t, Mapping) else None
        if not isinstance(table, Mapping):
            continue
        ci_f = intervals.get(feature) if isinstance(intervals.get(feature), Mapping) else {}
        ci_t = ci_f.get(key) if isinstance(ci_f.get(key), Mapping) else {}
        flagged = {str(g) for g in small.get(feature) or []} if isinstance(small.get(feature), list) else set()
        rows = []
        for group, values in table.items():
            if not isinstance(values, Mapping):
                continue
            n = _num(values.get("count"))
            rows.append({"group": str(group), "count": n,
                         "small": str(group) in flagged or (n is not None and n < SMALL_GROUP),
                         "values": {m: _num(values.get(m)) for m in indicators},
                         "intervals": _pairs(ci_t.get(group), indicators)})
        disp_f = disparities.get(feature) if isinstance(disparities.get(feature), Mapping) else {}
        disp_t = disp_f.get(key) if isinstance(disp_f.get(key), Mapping) else {}
        chart = None
        if plots and rows:
            shown = [m for m in FAIRNESS_RATES if m in indicators]
            chart = _plots.fairness_rates_chart(
                groups=[r["group"] for r in rows],
                counts=[int(r["count"]) if r["count"] is not None else None for r in rows],
                rates={m: [r["values"][m] for r in rows] for m in shown},
                intervals={m: ([r["intervals"][m][0] if m in r["intervals"] else None for r in rows],
                               [r["intervals"][m][1] if m in r["intervals"] else None for r in rows])
                           for m in shown} if ci_t else None,
                overall={m: overall.get(m) for m in shown}, small=[r["small"] for r in rows],
                labels=FAIRNESS_RATES)
        features.append({"id": f"fairness-{index}", "name": str(feature), "rows": rows, "chart": chart,
                          "disparities": {d: _num(disp_t.get(d)) for d in DISPARITIES}})
    if not features:
        return None
    return {
        "model": _text(fairness.get("model")), "split": _text(fairness.get("split")) or "test", "threshold": t,
        "thresholds": thresholds, "indicators": indicators, "overall": overall,
        "confidence": _num(fairness.get("confidence")), "replicates": _num(fairness.get("replicates")),
        "min_count": _num(fairness.get("min_count")), "features": features,
        "columns": [{"name": d, "label": d.replace("_", " "), "definition": DISPARITIES.get(d, "")}
                    for d in FAIRNESS_DISPARITIES],
    }


def _gate_section(gate: Any) -> dict[str, Any] | None:
    """The optional ``gate`` part (the verdict and checks of ``blessing.json``): failed checks first."""
    if not isinstance(gate, Mapping) or "blessed" not in gate:
        return None
    checks = []
    for c in gate.get("checks") or []:
        if not isinstance(c, Mapping):
            continue
        checks.append({"kind": _text(c.get("kind")), "metric": _text(c.get("metric")), "slice": _text(c.get("slice")),
                       "group": _text(c.get("group")), "value": _num(c.get("value")),
                       "baseline": _num(c.get("baseline")), "delta": _num(c.get("delta")),
                       "threshold": _text(c.get("threshold")), "status": _text(c.get("status")),
                       "reason": _text(c.get("reason")), "count": _num(c.get("count"))})
    order = {"fail": 0, "skipped": 1}
    checks.sort(key=lambda c: order.get(c["status"], 2))  # stable: the gate's order within a status
    counts = gate.get("counts") if isinstance(gate.get("counts"), Mapping) else {}
    summary = _text(gate.get("summary"))
    for prefix in ("NOT BLESSED: ", "BLESSED: "):  # the banner states the verdict already
        summary = summary.removeprefix(prefix)
    return {"blessed": gate.get("blessed") is True, "summary": summary, "checks": checks,
            "counts": {k: _num(counts.get(k)) for k in ("checks", "passed", "failed", "skipped")},
            "has_baseline": any(c["baseline"] is not None for c in checks)}


def _search_section(search: Any, *, plots: bool) -> dict[str, Any] | None:
    """The optional ``search`` part: best trial or Pareto front, history, importances."""
    from modelyard.report import _plots

    if not isinstance(search, Mapping):
        return None
    objectives = [str(o) for o in search.get("objectives") or []]
    trials = [t for t in search.get("trials") or [] if isinstance(t, Mapping)]
    out: dict[str, Any] = {
        "family": search.get("family"), "strategy": search.get("strategy"), "objectives": objectives,
        "n_trials": search.get("trials_count", len(trials)),
        "best_value": search.get("best_value"), "best_trial": search.get("best_trial"),
        "best_params": sorted((str(k), f"{v:.4g}" if isinstance(v, float) else v)
                              for k, v in (search.get("best_params") or {}).items()),
        "front": [f for f in search.get("pareto_front") or [] if isinstance(f, Mapping)],
        "history_chart": None, "pareto_chart": None, "importance_chart": None,
    }
    if plots and trials and len(objectives) == 1:
        out["history_chart"] = _plots.search_history_chart(
            [t.get("number", i) for i, t in enumerate(trials)], [t.get("values", [None])[0] for t in trials],
            objective=objectives[0], maximize=bool(search.get("maximize", [True])[0]))
    if plots and len(objectives) == 2 and out["front"]:
        points = [t.get("values", []) for t in trials]
        front = [[f["values"].get(o) for o in objectives] for f in out["front"] if isinstance(f.get("values"), Mapping)]
        out["pareto_chart"] = _plots.pareto_chart(points, front, objectives=objectives)
    if plots and search.get("importances"):
        out["importance_chart"] = _plots.importance_chart(search["importances"])
    return out


def _automl_section(automl: Any) -> dict[str, Any] | None:
    """The optional ``automl`` part: budget, families and the top of the leaderboard."""
    if not isinstance(automl, Mapping):
        return None
    metric = str(automl.get("metric") or "")
    rows = []
    for row in automl.get("leaderboard_top") or []:
        if not isinstance(row, Mapping):
            continue
        params = str(row.get("params") or "")
        rows.append({"rank": row.get("rank"), "model": str(row.get("model")), "family": str(row.get("family")),
                     "valid": _num(row.get(f"valid_{metric}")), "fit_seconds": _num(row.get("fit_seconds")),
                     "params": params if len(params) <= 90 else params[:87] + "..."})
    families = automl.get("families") if isinstance(automl.get("families"), Mapping) else {}
    ensemble = automl.get("ensemble") if isinstance(automl.get("ensemble"), Mapping) else None
    return {
        "metric": metric, "budget": _num(automl.get("time_budget_s")), "strategy": automl.get("strategy"),
        "families": [{"name": str(k), "trials": v.get("trials"), "completed": v.get("completed"),
                      "seconds": _num(v.get("seconds"))}
                     for k, v in families.items() if isinstance(v, Mapping)],
        "model": automl.get("model"), "method": ensemble.get("method") if ensemble else "none",
        "valid_note": ensemble.get("valid_note") if ensemble else None, "rows": rows,
    }


def _nas_section(summary: Mapping[str, Any], *, plots: bool) -> dict[str, Any] | None:
    """The optional ``nas`` part: strategy, budget, the best network, history and the top of the leaderboard.

    The nas step's summary travels with its model's entry in ``evaluation.json``
    (``models.<name>.nas``); a top-level ``summary["nas"]`` is read first if present.
    """
    from modelyard.report import _plots

    nas, model = summary.get("nas"), "nas"
    if not isinstance(nas, Mapping):
        models = summary.get("models") if isinstance(summary.get("models"), Mapping) else {}
        found = [(str(k), v["nas"]) for k, v in models.items()
                 if isinstance(v, Mapping) and isinstance(v.get("nas"), Mapping)]
        if not found:
            return None
        model, nas = found[0]
    best = nas.get("best") if isinstance(nas.get("best"), Mapping) else {}
    rows = [{"index": _num(r.get("index")), "description": _text(r.get("description")),
             "accuracy": _num(r.get("accuracy")), "params": _num(r.get("params")),
             "mflops": "—" if _num(r.get("flops")) is None else f"{_num(r.get('flops')) / 1e6:.2f}",
             "seconds": _num(r.get("seconds"))}
            for r in nas.get("leaderboard_top") or [] if isinstance(r, Mapping)]
    history = [h for h in nas.get("history") or [] if isinstance(h, (list, tuple)) and len(h) == 2]
    out: dict[str, Any] = {
        "model": model, "strategy": _text(nas.get("strategy")), "budget": _num(nas.get("budget")),
        "trained": _num(nas.get("trained")), "epochs": _num(nas.get("epochs")),
        "train_size": _num(nas.get("train_size")), "valid_size": _num(nas.get("valid_size")),
        "seconds": _num(nas.get("seconds")), "retrained": nas.get("retrained") is True,
        "best": {"index": _num(best.get("index")), "description": _text(best.get("description")),
                 "accuracy": _num(best.get("accuracy")), "params": _num(best.get("params"))},
        "rows": rows, "history_chart": None,
    }
    if plots and history:
        out["history_chart"] = _plots.search_history_chart([h[0] for h in history], [h[1] for h in history],
                                                           objective="validation accuracy", maximize=True)
    return out


def _curve_points(raw: Any) -> list[dict[str, Any]]:
    """Curve points with a finite k, score and size, in k order."""
    points = []
    for p in raw if isinstance(raw, list) else []:
        if not isinstance(p, Mapping):
            continue
        k, score, size = _num(p.get("k")), _num(p.get("score")), _num(p.get("model_bytes"))
        if k is not None and score is not None:
            points.append({"k": int(k), "score": score, "bytes": size})
    return sorted(points, key=lambda p: p["k"])


def _features_section(features: Any, *, plots: bool) -> dict[str, Any] | None:
    """The optional ``features`` part: the chosen k and why, the curves, the kept columns."""
    from modelyard.report import _compress_plots

    if not isinstance(features, Mapping):
        return None
    extraction = features.get("family") == "extraction"
    method = _text(features.get("method")) or "features"
    metric = _text(features.get("metric")) or "accuracy"
    short = "accuracy" if metric == "accuracy" else metric_label(metric)
    label = f"validation {short}"
    k = _num(features.get("k"))
    k = None if k is None else int(k)
    curve = _curve_points(features.get("curve"))
    baseline_d = features.get("baseline") if isinstance(features.get("baseline"), Mapping) else {}
    baseline = {"score": _num(baseline_d.get("score")), "bytes": _num(baseline_d.get("model_bytes")),
                "k": _num(baseline_d.get("k"))}
    chosen = next((p for p in curve if p["k"] == k), None)
    inputs = [str(c) for c in features.get("input_columns") or []]
    selected = [str(c) for c in features.get("selected") or []]
    scores = features.get("scores") if isinstance(features.get("scores"), Mapping) else {}
    ranking = [str(c) for c in features.get("ranking") or []] or list(map(str, scores))
    kept = set(selected)
    ranked = [{"rank": i + 1, "name": c, "score": _num(scores.get(c)), "kept": c in kept}
              for i, c in enumerate(ranking)]
    ratios = [v for v in (_num(r) for r in features.get("explained_variance_ratio") or []) if v is not None]
    variance = _num(features.get("variance"))
    serving = features.get("serving") if isinstance(features.get("serving"), Mapping) else {}
    transform = serving.get("transform") if isinstance(serving.get("transform"), Mapping) else None
    out: dict[str, Any] = {
        "extraction": extraction, "method": method, "kind": _text(features.get("kind")),
        "model": _text(features.get("model")),
        "metric": metric_label(metric), "k": k, "n_inputs": len(inputs), "reason": _text(features.get("reason")),
        "selected": selected, "inputs": inputs, "ranked": ranked,
        "score": chosen["score"] if chosen else None, "bytes": chosen["bytes"] if chosen else None,
        "baseline": baseline, "tolerance": _num(features.get("tolerance")), "variance": variance,
        "variance_kept": _num(features.get("variance_kept")), "target_size": _num(features.get("target_size")),
        "converged": features.get("converged", True) is not False,
        "serving_inputs": _text(serving.get("inputs")),
        "transform_path": _text(transform.get("path")) if transform else "",
        "composed": bool(transform.get("composed")) if transform else False,
        "variance_chart": None, "curve_chart": None, "size_chart": None,
    }
    if not plots:
        return out
    unit = "components" if extraction else "features"
    if extraction and ratios:
        out["variance_chart"] = _compress_plots.explained_variance_chart(
            ratios, chosen=k, threshold=variance, title=f"Explained variance ({method.upper()} spectrum)")
    if curve:
        out["curve_chart"] = _compress_plots.feature_curve_chart(
            {method: ([p["k"] for p in curve], [p["score"] for p in curve])},
            chosen={method: k} if k is not None else None, baseline=baseline["score"], metric_label=label,
            xlabel=f"{unit} kept", title=f"Validation {short} against the number of {unit}")
        sized = [p for p in curve if p["bytes"] is not None]
        if sized:
            size_label = ("served model parameters: MLP + transform (bytes, log scale)" if extraction
                          else "downstream MLP weights (bytes, log scale)")
            out["size_chart"] = _compress_plots.size_accuracy_chart(
                {method: ([p["bytes"] for p in sized], [p["score"] for p in sized])},
                chosen={method: (chosen["bytes"], chosen["score"])} if chosen and chosen["bytes"] else None,
                baseline=(baseline["bytes"], baseline["score"])
                if baseline["bytes"] is not None and baseline["score"] is not None else None,
                size_label=size_label, metric_label=label, title=f"Model size against validation {short}")
    return out


def _explain_section(explain: Any, *, plots: bool) -> dict[str, Any] | None:
    """The optional ``explain`` part: importances, SHAP, PDP/ICE, per-row explanations, IG heatmaps.

    The charts are drawn from the step's numbers by
    :func:`modelyard.explain._step.explanation_figures` (the same drawings as its PNG
    files); the tables hold the same numbers as text. Strings are escaped by the template.
    """
    if not isinstance(explain, Mapping):
        return None
    perm = explain.get("permutation") if isinstance(explain.get("permutation"), Mapping) else None
    importance = []
    if perm:
        for r in list(perm.get("table") or [])[:15]:
            if isinstance(r, Mapping):
                importance.append({"feature": _text(r.get("feature")), "importance": _num(r.get("importance")),
                                   "low": _num(r.get("low")), "high": _num(r.get("high"))})
    shap = explain.get("shap") if isinstance(explain.get("shap"), Mapping) else None
    rows = []
    for r in explain.get("rows") or []:
        if not isinstance(r, Mapping):
            continue
        parts = []
        for method, part in (r.get("explanations") or {}).items():
            if not isinstance(part, Mapping):
                continue
            contribs = [{"feature": _text(c.get("feature")), "value": _text(c.get("value")),
                         "contribution": _num(c.get("contribution"))}
                        for c in list(part.get("contributions") or [])[:12] if isinstance(c, Mapping)]
            parts.append({"method": _text(method), "output": _text(part.get("output")),
                          "base_value": _num(part.get("base_value")), "prediction": _num(part.get("prediction")),
                          "delta": _num(part.get("delta")), "contributions": contribs})
        if parts:  # image rows carry heatmaps (charts), not tables
            rows.append({"row": _text(r.get("row")), "predicted": _text(r.get("predicted")), "parts": parts})
    out: dict[str, Any] = {
        "model": _text(explain.get("model")), "family": _text(explain.get("family")),
        "split": _text(explain.get("split")) or "test", "methods": [_text(m) for m in explain.get("methods") or []],
        "skipped": [{"method": _text(s.get("method")), "reason": _text(s.get("reason"))}
                    for s in explain.get("skipped") or [] if isinstance(s, Mapping)],
        "metric": metric_label(_text(perm.get("metric"))) if perm else None,
        "perm_rows": _num(perm.get("rows")) if perm else None, "n_repeats": _num(perm.get("n_repeats")) if perm else None,
        "importance": importance,
        "shap_method": _text(shap.get("method")) if shap else None,
        "shap_rows": len(shap.get("rows") or []) if shap else 0,
        "shap_output": _text((shap.get("output_names") or [""])[0]) if shap else None,
        "rows": rows, "charts": {}, "image": isinstance(explain.get("image"), Mapping),
    }
    if plots:
        from modelyard.explain._step import explanation_figures
        from modelyard.report._plots import _to_data_uri

        charts: dict[str, list[dict[str, str]]] = {}
        for name, caption, fig in explanation_figures(explain):
            group = ("importance" if name in ("importance.png", "shap_importance.png") else
                     "summary" if name == "shap_summary.png" else
                     "dependence" if name.startswith("dependence_") else
                     "pdp" if name.startswith("pdp_") else
                     "rows" if name.startswith("row_") else "ig")
            charts.setdefault(group, []).append({"src": _to_data_uri(fig), "caption": caption})
        out["charts"] = charts
    return out


def _compress_section(compress: Any, *, plots: bool) -> dict[str, Any] | None:
    """The optional ``compress`` part (``compress.json``): the variants table, the best one, two plots, slices."""
    if not isinstance(compress, Mapping) or not isinstance(compress.get("table"), list):
        return None
    metric = _text(compress.get("metric")) or "accuracy"
    batches = [int(b) for b in compress.get("batch_sizes") or [] if isinstance(b, (int, float))]
    best = _text(compress.get("best"))

    def ms(v: Any) -> str:
        x = _num(v)
        return "—" if x is None else (f"{x:.3g} ms" if x < 100 else f"{x:,.0f} ms")

    rows = []
    for r in compress["table"]:
        if not isinstance(r, Mapping):
            continue
        rows.append({
            "variant": _text(r.get("variant")), "reference": r.get("kind") == "reference",
            "best": _text(r.get("variant")) == best, "error": _text(r.get("error")),
            "size": _num(r.get("size_bytes")), "gzip": _num(r.get("gzip_bytes")),
            "size_ratio": _num(r.get("size_ratio")),
            "latency": [(ms(r.get(f"p50_ms_b{b}")), ms(r.get(f"p99_ms_b{b}"))) for b in batches],
            "value": _num(r.get(metric)), "change": _num(r.get(f"{metric}_change")),
            "valid_drop": _num(r.get("valid_drop")), "within": r.get("within_budget") is True,
        })
        row = rows[-1]
        sparsity, flops = _num(r.get("weight_sparsity")), _num(r.get("flops_ratio"))
        row["note"] = [n for n in (
            "reference" if row["reference"] else "best" if row["best"] else "over budget" if not row["within"] else "",
            f"{fmt_share(sparsity)} zero weights" if sparsity is not None else "",
            f"{fmt_share(flops)} of the FLOPs" if flops is not None else "") if n]
    # Per-slice values of the budget metric: slice -> group -> {variant: value}.
    slices: dict[str, dict[str, dict[str, float | None]]] = {}
    measurements = compress.get("measurements") if isinstance(compress.get("measurements"), Mapping) else {}
    for variant, m in measurements.items():
        by_slice = m.get("by_slice") if isinstance(m, Mapping) and isinstance(m.get("by_slice"), Mapping) else {}
        for slice_name, groups in by_slice.items():
            if not isinstance(groups, Mapping):
                continue
            for group, values in groups.items():
                if isinstance(values, Mapping):
                    slices.setdefault(str(slice_name), {}).setdefault(str(group), {})[str(variant)] = _num(
                        values.get(metric))
    names = [r["variant"] for r in rows if not r["error"]]
    out: dict[str, Any] = {
        "model": _text(compress.get("model")), "metric": metric, "batch_sizes": batches, "best": best,
        "reason": _text(compress.get("reason")), "max_drop": _num(compress.get("max_accuracy_drop")),
        "prefer": _text(compress.get("prefer")), "rows_measured": compress.get("rows_measured"),
        "rows": rows, "names": names,
        "slices": [{"name": s, "groups": [{"group": g, "cells": [v.get(n) for n in names]} for g, v in groups.items()]}
                   for s, groups in slices.items()],
        "size_chart": None, "latency_chart": None,
    }
    if plots and rows:
        import matplotlib
        import pandas as pd

        from modelyard.compress._step import compress_figures
        from modelyard.report import _plots

        table = pd.DataFrame(compress["table"])
        with matplotlib.rc_context(_plots._style()):
            figures = compress_figures(table, metric=metric, best=best, batch_size=max(batches) if batches else None)
            out["size_chart"] = _plots._to_data_uri(figures["size_accuracy"])
            out["latency_chart"] = _plots._to_data_uri(figures["latency_accuracy"])
    return out


#: Figures of the remediation table and plot: key in remediation.json, short label.
REMEDIATION_GAPS = {"demographic_parity_difference": "DPD", "equalized_odds_difference": "EOD"}


def remediation_figure(rows: list[Mapping[str, Any]], *, sensitive: str | None = None) -> Any:
    """The remediation trade-off plot: test accuracy against DPD (left) and against EOD (right).

    ``rows`` are ``remediation.json``'s ``table``: the ``before`` row (the base model, a
    black diamond) and one row per method (a coloured point). Drawn on a
    :class:`matplotlib.figure.Figure` (Agg, no pyplot state); math text is off, so labels
    from data print as given.
    """
    import matplotlib
    from matplotlib.figure import Figure

    palette = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")
    with matplotlib.rc_context({"text.parse_math": False}):
        fig = Figure(figsize=(9.0, 3.6), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        for ax, (key, label) in zip(axes, REMEDIATION_GAPS.items()):
            ax.grid(color="#e4e7eb", zorder=0)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            j = 0
            for row in rows:
                x, y = _num(row.get(key)), _num(row.get("accuracy"))
                if x is None or y is None:
                    continue
                name = str(row.get("method"))
                if name == "before":
                    ax.scatter([x], [y], marker="D", s=45, color="#1f2933", zorder=5, label="before (base model)")
                    continue
                ax.scatter([x], [y], marker="o", s=50, color=palette[j % len(palette)], edgecolors="#1f2933",
                           linewidths=0.6, zorder=4, label=name[:40])
                j += 1
            ax.margins(0.12)
            ax.set_xlim(left=0)
            ax.set_xlabel(f"{label} on the test split (0 is parity)")
            ax.set_title(f"Accuracy against {label}" + (f" over {sensitive}"[:60] if sensitive else ""), loc="left")
        axes[0].set_ylabel("test accuracy")
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside right upper", frameon=False, fontsize=7)
    return fig


def _remediation_section(remediation: Any, *, plots: bool) -> dict[str, Any] | None:
    """The optional ``remediation`` part (``remediation.json``): the before/after table and the trade-off plot."""
    if not isinstance(remediation, Mapping) or not isinstance(remediation.get("table"), list):
        return None
    rows = [r for r in remediation["table"] if isinstance(r, Mapping)]
    if not rows:
        return None
    table = [{"method": _text(r.get("method")), "before": r.get("method") == "before",
              "accuracy": _num(r.get("accuracy")), "cost": _num(r.get("accuracy_cost")),
              "gaps": [_num(r.get(k)) for k in REMEDIATION_GAPS], "seconds": _num(r.get("fit_time_s"))}
             for r in rows]
    counts = remediation.get("rows") if isinstance(remediation.get("rows"), Mapping) else {}
    out: dict[str, Any] = {
        "sensitive": _text(remediation.get("sensitive")), "base": _text(remediation.get("base")),
        "constraint": _text(remediation.get("constraint")), "tolerance": _num(remediation.get("tolerance")),
        "groups": [_text(g) for g in remediation.get("groups") or []], "test_rows": _num(counts.get("test")),
        "gaps": list(REMEDIATION_GAPS.values()), "rows": table, "chart": None,
        "threshold": any(r["method"] == "threshold" for r in table),
    }
    if plots:
        import matplotlib

        from modelyard.report import _plots

        with matplotlib.rc_context(_plots._style()):
            out["chart"] = _plots._to_data_uri(remediation_figure(rows, sensitive=out["sensitive"]))
    return out


def _context(summary: Mapping[str, Any], *, plots: bool = True) -> dict[str, Any]:
    from modelyard import __version__
    from modelyard.report import _plots

    view = normalize_summary(summary)
    models = view["models"]
    chosen = view["chosen"]
    headline_metrics = _metric_columns(models, "test")
    selection_metric = chosen["metric"] if chosen and chosen["metric"] else None
    roc = None
    curves = {m["name"]: (m["roc"]["fpr"], m["roc"]["tpr"], m["test"]["overall"].get("auc") if m["test"] else None)
              for m in models if m["roc"]}
    if plots and curves:
        roc = _plots.roc_chart(curves, chosen["model"] if chosen else None)
    roc_splits = sorted({m["roc"]["split"] for m in models if m["roc"] and m["roc"]["split"]})
    chosen_model = next((m for m in models if m["chosen"]), None)
    headline = None
    if chosen_model and chosen_model["test"]:
        metric = _plot_metric(view["data"]["task"], chosen_model["test"]["metrics"])
        if metric:
            headline = {"label": metric_label(metric), "value": chosen_model["test"]["overall"].get(metric)}
    step_seconds = [st["seconds"] for st in view["steps"] if st["seconds"] is not None]
    spec_json = None
    if view["spec"] is not None:
        spec_json = json.dumps(view["spec"], indent=2, ensure_ascii=False, default=str)
    return {
        **view,
        "search": _search_section(summary.get("search"), plots=plots),
        "automl": _automl_section(summary.get("automl")),
        "nas": _nas_section(summary, plots=plots),
        "features": _features_section(summary.get("features"), plots=plots),
        "explain": _explain_section(summary.get("explain"), plots=plots),
        "compress": _compress_section(summary.get("compress"), plots=plots),
        "intervals": _interval_charts(view, plots=plots),
        "fairness": _fairness_section(summary.get("fairness"), plots=plots),
        "gate": _gate_section(summary.get("gate")),
        "remediation": _remediation_section(summary.get("remediation"), plots=plots),
        "title": view["pipeline"] or "modelyard run",
        "headline_metrics": headline_metrics,
        "best": {metric: _best(models, metric) for metric in headline_metrics},
        "selection_metric": selection_metric,
        "roc_chart": roc,
        "roc_split": roc_splits[0] if len(roc_splits) == 1 else None,
        "slices": _slice_sections(view, plots=plots),
        "headline": headline,
        "chosen_model": chosen_model,
        "total_rows": sum(v for v in view["data"]["rows"].values() if v is not None) or None,
        "total_seconds": sum(step_seconds) if step_seconds else None,
        "n_cached": sum(1 for st in view["steps"] if st["status"] == "cached"),
        "spec_json": spec_json,
        "version": __version__,
        "small_group": SMALL_GROUP,
    }


_ENV: Any = None


def _environment() -> Any:
    global _ENV
    if _ENV is None:
        import jinja2

        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
            autoescape=True,  # every {{ }} is HTML-escaped; the templates never use |safe on data
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        env.filters.update(
            metric=fmt_metric, seconds=fmt_seconds, bytes=fmt_bytes, sci=fmt_sci, thousands=fmt_int, label=metric_label,
            share=fmt_share, level=fmt_level,
        )
        _ENV = env
    return _ENV


def render_html(summary: Mapping[str, Any]) -> str:
    """Render the run's report as one self-contained HTML page.

    Parameters
    ----------
    summary : dict
        The run's ``metrics.json`` content; see the module docstring for its shape.
        Every part is optional.

    Returns
    -------
    str
        The page: inline CSS, plots as base64 PNG ``data:`` URIs, no script and no
        external reference. Strings from the summary are HTML-escaped.

    Raises
    ------
    TypeError
        If ``summary`` is not a dict, or a part of it has the wrong type (the message
        names its path).
    """
    return _environment().get_template("report.html.j2").render(**_context(summary))


def write_html(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render the report and write it atomically to ``path``.

    The page is written to a temporary file beside ``path`` and renamed over it, so a
    reader never sees half a report and a failure leaves no temporary file behind.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return atomic_write_text(path, render_html(summary))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`modelyard._atomic.atomic_path`)."""
    target = Path(path)
    if not target.parent.is_dir():
        raise FileNotFoundError(f"Cannot write {str(target)!r}: folder {str(target.parent)!r} does not exist.")
    with atomic_path(target) as tmp:
        tmp.write_bytes(text.encode("utf-8"))
    return target
