"""Plots for the HTML report, returned as base64 PNG ``data:`` URIs.

matplotlib is imported inside the functions (``import modelyard`` stays fast) and only
its object-oriented API is used: a ``Figure`` drawn by the Agg canvas. pyplot is never
touched, so making a report neither switches the user's backend nor leaks figures.

Text from data (slice values, model names) is drawn with math parsing off, so a ``$``
in a value prints as itself instead of starting LaTeX.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["slice_metric_chart", "roc_chart", "search_history_chart", "pareto_chart", "importance_chart", "PALETTE"]

#: Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
_INK = "#1f2933"
_MUTED = "#6b7785"
_GRID = "#e4e7eb"
_DPI = 110

#: A slice with more groups than this is drawn with its largest groups only.
MAX_GROUPS = 30


def _style() -> dict[str, Any]:
    return {
        "text.parse_math": False,  # data strings may hold "$"
        "font.family": "DejaVu Sans",  # ships with matplotlib: same look everywhere, has "×"
        "font.size": 9,
        "axes.edgecolor": _GRID,
        "axes.labelcolor": _INK,
        "axes.titlesize": 10,
        "xtick.color": _MUTED,
        "ytick.color": _INK,
        "svg.fonttype": "none",
    }


def _to_data_uri(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from font", category=UserWarning)
        fig.savefig(buf, format="png", dpi=_DPI, facecolor="white", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _shorten(text: str, width: int = 42) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def slice_metric_chart(
    *,
    groups: Sequence[str],
    counts: Sequence[int | None],
    values: Mapping[str, Sequence[float | None]],
    overall: Mapping[str, float | None],
    metric_label: str,
    bounded: bool,
    chosen: str | None = None,
    small_group: int = 30,
) -> str:
    """Horizontal grouped bars: one row per group of a slice, one bar per model.

    Parameters
    ----------
    groups : sequence of str
        Group labels, in report order.
    counts : sequence of int or None
        Rows per group, shown beside the label (``n=``).
    values : mapping of str to sequence of float or None
        ``{model: [value per group]}``; ``None``/NaN draws no bar.
    overall : mapping of str to float or None
        ``{model: overall value}``, drawn as a dashed line per model.
    metric_label : str
        Axis label.
    bounded : bool
        The metric lies in ``[0, 1]`` (accuracy, AUC): the axis shows all of it, so
        gaps are not exaggerated.
    chosen : str or None
        The chosen model, drawn first and named "(chosen)" in the legend.
    small_group : int, default=30
        Groups with fewer rows get a muted, italic label.

    Returns
    -------
    str
        A ``data:image/png;base64,...`` URI.
    """
    import matplotlib
    from matplotlib.figure import Figure

    groups = list(groups)
    counts = list(counts)
    note = ""
    if len(groups) > MAX_GROUPS:  # keep the largest groups, in their original order
        ranked = sorted(range(len(groups)), key=lambda i: -(counts[i] or 0))[:MAX_GROUPS]
        keep = sorted(ranked)
        note = f"{MAX_GROUPS} largest of {len(groups)} groups shown"
        groups = [groups[i] for i in keep]
        counts = [counts[i] for i in keep]
        values = {m: [list(v)[i] for i in keep] for m, v in values.items()}
    models = list(values)
    if chosen in models:
        models.remove(chosen)
        models.insert(0, chosen)
    n_models = max(len(models), 1)
    bar_h = 0.72 / n_models  # in data units: the bars of a group fill 72% of the space between groups
    per_group = 0.15 * n_models + 0.2  # inches
    height = 0.75 + len(groups) * per_group + (0.25 if n_models > 1 else 0)

    with matplotlib.rc_context(_style()):
        fig = Figure(figsize=(9.4, max(height, 1.5)), layout="constrained")
        ax = fig.add_subplot()
        labels = [
            f"{_shorten(g)}  (n={c:,})" if isinstance(c, int) else _shorten(g) for g, c in zip(groups, counts)
        ]
        ys = range(len(groups))
        annotate = n_models <= 3 and len(groups) <= 20
        finite = [float(v) for m in models for v in values[m] if _finite(v)]
        lo, hi = min(0.0, *finite), max(0.0, *finite)  # R² can be negative; errors cannot
        nudge = 0.004 * (1.0 if bounded else (hi - lo) or 1.0)  # gap between a bar's end and its label
        for j, model in enumerate(models):
            color = PALETTE[j % len(PALETTE)]
            offset = (j - (n_models - 1) / 2) * bar_h
            row = [float(v) if _finite(v) else math.nan for v in values[model]]
            name = f"{_shorten(model, 30)} (chosen)" if model == chosen and n_models > 1 else _shorten(model, 30)
            ax.barh([y + offset for y in ys], [0 if math.isnan(v) else v for v in row], height=bar_h * 0.92,
                    color=color, label=name, zorder=2)
            for y, v in zip(ys, row):
                if math.isnan(v):
                    ax.text(0, y + offset, "  n/a", va="center", ha="left", fontsize=7, color=_MUTED)
                elif annotate:
                    ax.text(v + nudge, y + offset, f"{v:.3f}", va="center", ha="left", fontsize=7, color=_INK,
                            zorder=4,
                            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85})
            ov = overall.get(model)
            if _finite(ov):
                ax.axvline(float(ov), color=color, linestyle=(0, (4, 3)), linewidth=1.1, zorder=3)
        ax.set_yticks(list(ys), labels)
        for tick, c in zip(ax.get_yticklabels(), counts):
            if isinstance(c, int) and c < small_group:  # few rows: noisy, drawn muted
                tick.set_color(_MUTED)
                tick.set_fontstyle("italic")
        ax.invert_yaxis()
        if bounded:
            ax.set_xlim(0, 1.08 if annotate else 1.0)
        else:
            ax.set_xlim(lo * 1.1, (hi * (1.18 if annotate else 1.05)) or 1.0)
        ax.set_xlabel(f"{metric_label}  (dashed: overall)")
        ax.grid(axis="x", color=_GRID, zorder=0)
        ax.tick_params(axis="y", length=0)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        if n_models > 1:
            ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(n_models, 4), frameon=False,
                      fontsize=8)
        if note:
            fig.text(0.99, 0.005, note, ha="right", va="bottom", fontsize=7, color=_MUTED)
        return _to_data_uri(fig)


def roc_chart(curves: Mapping[str, tuple[Sequence[float], Sequence[float], float | None]], chosen: str | None) -> str:
    """ROC curves of several models on one plot.

    Parameters
    ----------
    curves : mapping of str to (fpr, tpr, auc)
        One curve per model; ``auc`` (or None) is shown in the legend.
    chosen : str or None
        Drawn thicker and named "(chosen)".

    Returns
    -------
    str
        A ``data:image/png;base64,...`` URI.
    """
    import matplotlib
    from matplotlib.figure import Figure

    models = list(curves)
    if chosen in models:
        models.remove(chosen)
        models.insert(0, chosen)
    with matplotlib.rc_context(_style()):
        fig = Figure(figsize=(5.2, 4.6), layout="constrained")
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], color=_MUTED, linestyle=":", linewidth=1, label="chance")
        for j, model in enumerate(models):
            fpr, tpr, area = curves[model]
            name = _shorten(model, 30) + (" (chosen)" if model == chosen and len(models) > 1 else "")
            if _finite(area):
                name += f"  AUC {float(area):.3f}"
            ax.plot(list(fpr), list(tpr), color=PALETTE[j % len(PALETTE)], linewidth=2.2 if model == chosen else 1.5,
                    label=name, drawstyle="default")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.grid(color=_GRID)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.legend(loc="lower right", frameon=True, framealpha=0.9, edgecolor=_GRID, fontsize=8)
        return _to_data_uri(fig)


def _axes(figsize: tuple[float, float]) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(color=_GRID)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def search_history_chart(numbers: Sequence[int], values: Sequence[float], *, objective: str, maximize: bool) -> str:
    """Optimization history: each finished trial's value and the best so far."""
    import matplotlib

    pairs = sorted((int(n), float(v)) for n, v in zip(numbers, values) if _finite(v))
    with matplotlib.rc_context(_style()):
        fig, ax = _axes((6.4, 3.4))
        if pairs:
            xs, ys = zip(*pairs)
            best, running = [], None
            for y in ys:
                running = y if running is None else (max(running, y) if maximize else min(running, y))
                best.append(running)
            ax.scatter(xs, ys, s=22, color=PALETTE[0], alpha=0.8, label="trial", zorder=3)
            ax.step(xs, best, where="post", color=PALETTE[1], linewidth=2, label="best so far")
            ax.legend(loc="best", frameon=True, framealpha=0.9, edgecolor=_GRID, fontsize=8)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Trial")
        ax.set_ylabel(_shorten(objective, 30))
        return _to_data_uri(fig)


def pareto_chart(points: Sequence[Sequence[float]], front: Sequence[Sequence[float]], *, objectives: Sequence[str]) -> str:
    """All trials of a two-objective search, with the Pareto front highlighted."""
    import matplotlib

    with matplotlib.rc_context(_style()):
        fig, ax = _axes((5.6, 4.0))
        pts = [p for p in points if len(p) >= 2 and _finite(p[0]) and _finite(p[1])]
        fr = sorted(p for p in front if len(p) >= 2 and _finite(p[0]) and _finite(p[1]))
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, color=_MUTED, alpha=0.6, label="trial")
        if fr:
            ax.plot([p[0] for p in fr], [p[1] for p in fr], "o-", color=PALETTE[0], markersize=5, label="Pareto front")
        ax.set_xlabel(_shorten(objectives[0], 30))
        ax.set_ylabel(_shorten(objectives[1], 30) if len(objectives) > 1 else "")
        ax.legend(loc="best", frameon=True, framealpha=0.9, edgecolor=_GRID, fontsize=8)
        return _to_data_uri(fig)


def importance_chart(importances: Mapping[str, float]) -> str:
    """Hyperparameter importances (fANOVA), largest on top."""
    import matplotlib

    items = sorted(((str(k), float(v)) for k, v in importances.items() if _finite(v)), key=lambda kv: kv[1])
    with matplotlib.rc_context(_style()):
        fig, ax = _axes((5.6, 0.6 + 0.32 * max(len(items), 1)))
        if items:
            ax.barh([_shorten(k, 30) for k, _ in items], [v for _, v in items], color=PALETTE[2])
        ax.set_xlabel("Importance (share of the objective's variance)")
        ax.grid(axis="y", visible=False)
        return _to_data_uri(fig)
