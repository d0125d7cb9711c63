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

__all__ = ["slice_metric_chart", "roc_chart", "search_history_chart", "pareto_chart", "importance_chart",
           "slice_interval_chart", "fairness_rates_chart", "PALETTE"]

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


def _keep_largest(n_rows: int, counts: Sequence[int | None]) -> tuple[list[int], str]:
    """Indices of the rows to draw (all, or the MAX_GROUPS largest in their order) and a note."""
    if n_rows <= MAX_GROUPS:
        return list(range(n_rows)), ""
    ranked = sorted(range(n_rows), key=lambda i: -(counts[i] or 0))[:MAX_GROUPS]
    return sorted(ranked), f"{MAX_GROUPS} largest of {n_rows} groups shown"


def _interval_error(values: Sequence[float], lows: Sequence[float | None], highs: Sequence[float | None]
                    ) -> list[list[float]]:
    """matplotlib's ``xerr``: distances below and above each value (0 where no interval)."""
    below, above = [], []
    for v, lo, hi in zip(values, lows, highs):
        ok = _finite(v) and _finite(lo) and _finite(hi)
        below.append(max(float(v) - float(lo), 0.0) if ok else 0.0)  # a percentile interval may sit off the point
        above.append(max(float(hi) - float(v), 0.0) if ok else 0.0)
    return [below, above]


def slice_interval_chart(
    *,
    labels: Sequence[str],
    counts: Sequence[int | None],
    values: Sequence[float | None],
    lows: Sequence[float | None],
    highs: Sequence[float | None],
    small: Sequence[bool],
    breaks: Sequence[int] = (),
    overall: float | None = None,
    overall_interval: tuple[float | None, float | None] | None = None,
    metric_label: str,
    bounded: bool,
    confidence: float | None = None,
) -> str:
    """One metric of one model on every group of every slice, each with its interval.

    A dot per group with a horizontal error bar from the bootstrap interval's low to its
    high end; the overall value is a dashed reference line and its interval a shaded band.
    Small groups (``small``) are drawn hollow with a muted, italic label.

    Parameters
    ----------
    labels : sequence of str
        One label per row (``"sex = F"``), in report order.
    counts : sequence of int or None
        Rows per group, shown beside the label (``n=``).
    values, lows, highs : sequences of float or None
        The metric and its interval per group; ``None`` draws "n/a" (value) or no bar (interval).
    small : sequence of bool
        Groups flagged as too small to trust.
    breaks : sequence of int
        Row indices where a new slice starts: a thin line is drawn above them.
    overall : float or None
        The overall value (reference line).
    overall_interval : (low, high) or None
        Its interval (shaded band).
    metric_label : str
        Axis label.
    bounded : bool
        The metric lies in ``[0, 1]``: the axis is clipped to it.
    confidence : float or None
        The intervals' level, named in the axis label.

    Returns
    -------
    str
        A ``data:image/png;base64,...`` URI.
    """
    import matplotlib
    from matplotlib.figure import Figure

    counts = list(counts)
    keep, note = _keep_largest(len(labels), counts)
    breaks = {keep.index(b) for b in breaks if b in keep and keep.index(b) > 0}
    labels = [labels[i] for i in keep]
    counts = [counts[i] for i in keep]
    vals = [float(values[i]) if _finite(values[i]) else math.nan for i in keep]
    lo = [lows[i] for i in keep]
    hi = [highs[i] for i in keep]
    flags = [bool(small[i]) for i in keep]

    with matplotlib.rc_context(_style()):
        fig = Figure(figsize=(8.6, max(0.9 + 0.27 * len(labels), 1.6)), layout="constrained")
        ax = fig.add_subplot()
        ys = list(range(len(labels)))
        if overall_interval is not None and _finite(overall_interval[0]) and _finite(overall_interval[1]):
            ax.axvspan(float(overall_interval[0]), float(overall_interval[1]), color=PALETTE[4], alpha=0.15, lw=0,
                       zorder=1)
        if _finite(overall):
            ax.axvline(float(overall), color=_INK, linestyle=(0, (4, 3)), linewidth=1.1, zorder=2)
        err = _interval_error(vals, lo, hi)
        drawn = [i for i, v in enumerate(vals) if not math.isnan(v)]
        for hollow in (False, True):
            idx = [i for i in drawn if flags[i] == hollow]
            if not idx:
                continue
            ax.errorbar([vals[i] for i in idx], [ys[i] for i in idx],
                        xerr=[[err[0][i] for i in idx], [err[1][i] for i in idx]], fmt="o", markersize=5,
                        color=PALETTE[0], ecolor=PALETTE[0], elinewidth=1.4, capsize=3, zorder=3,
                        markerfacecolor="white" if hollow else PALETTE[0])
        finite = [v for v in vals if not math.isnan(v)]
        finite += [float(x) for x in lo + hi if _finite(x)]
        if _finite(overall):
            finite.append(float(overall))
        left, right = (min(finite), max(finite)) if finite else (0.0, 1.0)
        pad = 0.06 * ((right - left) or 1.0)
        left, right = left - pad, right + pad
        if bounded:
            left, right = max(left, 0.0), min(right, 1.0)
        if right <= left:
            left, right = left - 0.5, right + 0.5
        for i, v in enumerate(vals):
            if math.isnan(v):
                ax.text(left, ys[i], "  n/a", va="center", ha="left", fontsize=7, color=_MUTED)
        for b in breaks:
            ax.axhline(b - 0.5, color=_GRID, linewidth=1.0, zorder=0)
        ax.set_xlim(left, right)
        ax.set_yticks(ys, [f"{_shorten(t)}  (n={c:,})" if isinstance(c, int) else _shorten(t)
                           for t, c in zip(labels, counts)])
        for tick, flag in zip(ax.get_yticklabels(), flags):
            if flag:
                tick.set_color(_MUTED)
                tick.set_fontstyle("italic")
        ax.set_ylim(len(labels) - 0.5, -0.5)
        level = f"{confidence * 100:g}% interval" if _finite(confidence) else "interval"
        ax.set_xlabel(f"{metric_label}  (bars: {level}; dashed: overall, band: its interval)")
        ax.grid(axis="x", color=_GRID, zorder=0)
        ax.tick_params(axis="y", length=0)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        if note:
            fig.text(0.99, 0.005, note, ha="right", va="bottom", fontsize=7, color=_MUTED)
        return _to_data_uri(fig)


def fairness_rates_chart(
    *,
    groups: Sequence[str],
    counts: Sequence[int | None],
    rates: Mapping[str, Sequence[float | None]],
    intervals: Mapping[str, tuple[Sequence[float | None], Sequence[float | None]]] | None = None,
    overall: Mapping[str, float | None] | None = None,
    small: Sequence[bool] = (),
    labels: Mapping[str, str] | None = None,
) -> str:
    """Rates per group of one sensitive feature (selection rate, TPR, FPR), bars with error bars.

    Parameters
    ----------
    groups : sequence of str
        The feature's groups, in report order.
    counts : sequence of int or None
        Rows per group, shown beside the label.
    rates : mapping of str to sequence of float or None
        ``{indicator: [value per group]}``, one bar colour per indicator.
    intervals : mapping or None
        ``{indicator: ([low per group], [high per group])}``: the error bars.
    overall : mapping or None
        ``{indicator: overall value}``: a dashed line in the indicator's colour.
    small : sequence of bool
        Groups flagged as too small to trust (muted, italic label).
    labels : mapping or None
        Legend names of the indicators.

    Returns
    -------
    str
        A ``data:image/png;base64,...`` URI.
    """
    import matplotlib
    from matplotlib.figure import Figure

    counts = list(counts)
    keep, note = _keep_largest(len(groups), counts)
    groups = [groups[i] for i in keep]
    counts = [counts[i] for i in keep]
    flags = [bool(small[i]) if i < len(small) else False for i in keep]
    names = list(rates)
    n = max(len(names), 1)
    bar_h = 0.78 / n
    with matplotlib.rc_context(_style()):
        fig = Figure(figsize=(8.6, max(0.9 + len(groups) * (0.16 * n + 0.2), 1.6)), layout="constrained")
        ax = fig.add_subplot()
        ys = list(range(len(groups)))
        for j, name in enumerate(names):
            color = PALETTE[j % len(PALETTE)]
            offset = (j - (n - 1) / 2) * bar_h
            row = [float(rates[name][i]) if _finite(rates[name][i]) else math.nan for i in keep]
            xerr = None
            if intervals is not None and name in intervals:
                lows, highs = intervals[name]
                xerr = _interval_error(row, [lows[i] for i in keep], [highs[i] for i in keep])
            label = (labels or {}).get(name, name)
            ax.barh([y + offset for y in ys], [0 if math.isnan(v) else v for v in row], height=bar_h * 0.9,
                    color=color, label=label, zorder=2, xerr=xerr,
                    error_kw={"ecolor": _INK, "elinewidth": 1.0, "capsize": 2.5, "zorder": 4})
            for y, v in zip(ys, row):
                if math.isnan(v):
                    ax.text(0.005, y + offset, "n/a", va="center", ha="left", fontsize=7, color=_MUTED)
            ov = (overall or {}).get(name)
            if _finite(ov):
                ax.axvline(float(ov), color=color, linestyle=(0, (4, 3)), linewidth=1.1, zorder=3)
        ax.set_yticks(ys, [f"{_shorten(g)}  (n={c:,})" if isinstance(c, int) else _shorten(g)
                           for g, c in zip(groups, counts)])
        for tick, flag in zip(ax.get_yticklabels(), flags):
            if flag:
                tick.set_color(_MUTED)
                tick.set_fontstyle("italic")
        ax.set_ylim(len(groups) - 0.5, -0.5)
        ax.set_xlim(0, 1.03)  # room for the caps of error bars that end at 1
        ax.set_xlabel("rate  (error bars: bootstrap interval; dashed: overall)" if intervals else
                      "rate  (dashed: overall)")
        ax.grid(axis="x", color=_GRID, zorder=0)
        ax.tick_params(axis="y", length=0)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(n, 4), frameon=False, fontsize=8)
        if note:
            fig.text(0.99, 0.005, note, ha="right", va="bottom", fontsize=7, color=_MUTED)
        return _to_data_uri(fig)
