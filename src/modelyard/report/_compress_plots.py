"""Plots of feature selection and extraction: explained variance, accuracy per number of
features or components, and the size-accuracy trade-off.

Each plot comes twice: ``*_figure`` returns the matplotlib ``Figure`` (object-oriented
API, Agg canvas, pyplot never touched), ``*_chart`` renders it to a base64 PNG
``data:`` URI for the HTML report, as :mod:`modelyard.report._plots` does. Both draw
inside the report's style context, where math parsing is off, so a ``$`` in a method
or column name prints as itself; the report escapes the URI's surroundings as usual.

They take plain numbers, not result objects, so the report does not depend on how a
stage stores them. From :func:`modelyard.compress.select_features` and
:func:`modelyard.compress.reduce_features` results::

    explained_variance_chart(t.explained_variance_ratio, chosen=t.n_components, threshold=t.variance)
    feature_curve_chart({r.method: ([p.k for p in r.curve], [p.score for p in r.curve]) for r in results},
                        chosen={r.method: r.k for r in results}, baseline=results[0].baseline.score)
    size_accuracy_chart({r.method: ([p.model_bytes for p in r.curve], [p.score for p in r.curve]) for r in results},
                        chosen={r.method: (r.chosen.model_bytes, r.chosen.score) for r in results},
                        baseline=(b.model_bytes, b.score))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelyard.report._plots import (
    _GRID,
    _INK,
    _MUTED,
    PALETTE,
    _finite,
    _shorten,
    _style,
    _to_data_uri,
)

__all__ = [
    "explained_variance_chart",
    "explained_variance_figure",
    "feature_curve_chart",
    "feature_curve_figure",
    "size_accuracy_chart",
    "size_accuracy_figure",
]

#: At most this many components get a bar; the cumulative line always covers them all.
MAX_BARS = 150


def _axes(figsize: tuple[float, float]) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(color=_GRID, zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def explained_variance_figure(
    ratios: Sequence[float],
    *,
    chosen: int | None = None,
    threshold: float | None = None,
    title: str = "Explained variance",
) -> Any:
    """Bars of each component's explained-variance ratio and a line of their cumulative sum.

    Parameters
    ----------
    ratios : sequence of float
        Explained-variance ratio per component, largest first (``FeatureTransform.explained_variance_ratio``).
    chosen : int or None
        Components kept, drawn as a vertical dashed line (the kept bars are coloured, the rest muted).
    threshold : float or None
        The variance threshold, drawn as a horizontal dotted line.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    values = [float(v) if _finite(v) else 0.0 for v in ratios]
    cumulative, total = [], 0.0
    for v in values:
        total += v
        cumulative.append(total)
    with matplotlib.rc_context(_style()):
        fig, ax = _axes((6.4, 3.6))
        ax.spines["right"].set_visible(True)
        cum_ax = ax.twinx()  # per-component ratios are small: they get their own scale on the left
        cum_ax.spines["top"].set_visible(False)
        xs = list(range(1, len(values) + 1))
        shown = xs[:MAX_BARS]
        colors = [PALETTE[0] if chosen is None or x <= chosen else _MUTED for x in shown]
        handles = []
        if shown:
            handles.append(ax.bar(shown, values[: len(shown)], color=colors, width=0.8, zorder=2,
                                  label="per component (left)"))
            handles += cum_ax.plot(xs, cumulative, "-", color=PALETTE[1], linewidth=1.6, zorder=3,
                                   label="cumulative (right)")
        if threshold is not None and _finite(threshold):
            cum_ax.axhline(float(threshold), color=_INK, linestyle=":", linewidth=1, zorder=3)
            cum_ax.text(len(values) + 0.5 if values else 1, float(threshold), f"{float(threshold):g} ", va="bottom",
                        ha="right", fontsize=7, color=_INK)
        if chosen is not None and 1 <= chosen <= len(values):
            cum_ax.axvline(chosen + 0.5, color=_INK, linestyle=(0, (4, 3)), linewidth=1, zorder=3)
            cum_ax.text(chosen + 0.5, 0.02, f" k={chosen} ({cumulative[chosen - 1]:.3f})", va="bottom",
                        ha="left" if chosen < 0.8 * len(values) else "right", fontsize=7, color=_INK)
        ax.set_xlim(0.3, len(values) + 0.7 if values else 1)
        ax.set_ylim(0, max(values[: len(shown)], default=0) * 1.1 or 1)
        cum_ax.set_ylim(0, 1.02)
        ax.set_xlabel("component" + (f"  (bars: first {MAX_BARS} of {len(values)})" if len(values) > MAX_BARS
                                     else ""))
        ax.set_ylabel("share of variance, per component")
        cum_ax.set_ylabel("cumulative share")
        cum_ax.tick_params(axis="y", colors=_INK)
        ax.set_title(_shorten(title, 60), loc="left")
        if handles:
            cum_ax.legend(handles=handles, loc="center right", frameon=False, fontsize=8)
    return fig


def feature_curve_figure(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    *,
    chosen: Mapping[str, int] | None = None,
    baseline: float | None = None,
    metric_label: str = "validation accuracy",
    xlabel: str = "features kept",
    title: str = "Accuracy against the number of features",
) -> Any:
    """One line per method: validation score against the number of features (or components).

    Parameters
    ----------
    curves : mapping of str to (ks, scores)
        Per method (or model), the ``k`` values and the validation scores.
    chosen : mapping of str to int or None
        Per method, the chosen ``k``: marked with a larger ring.
    baseline : float or None
        The score with every feature, a dashed horizontal line.
    metric_label, xlabel, title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    chosen = dict(chosen or {})
    with matplotlib.rc_context(_style()):
        fig, ax = _axes((6.4, 4.0))
        for j, (name, (ks, scores)) in enumerate(curves.items()):
            pts = sorted((int(k), float(s)) for k, s in zip(ks, scores, strict=False) if _finite(s))
            if not pts:
                continue
            color = PALETTE[j % len(PALETTE)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, markersize=3.5, linewidth=1.4,
                    label=_shorten(str(name), 28), zorder=3)
            pick = chosen.get(name)
            hit = [s for k, s in pts if k == pick]
            if hit:
                ax.scatter([pick], hit, s=90, facecolors="none", edgecolors=color, linewidths=1.6, zorder=4)
        if baseline is not None and _finite(baseline):
            ax.axhline(float(baseline), color=_INK, linestyle=(0, (4, 3)), linewidth=1, zorder=2,
                       label=f"all features ({float(baseline):.3f})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric_label)
        ax.set_title(_shorten(title, 70), loc="left")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if curves:
            ax.legend(loc="lower right", frameon=True, framealpha=0.9, edgecolor=_GRID, fontsize=8)
        if chosen:
            fig.text(0.99, 0.005, "ring: chosen k", ha="right", va="bottom", fontsize=7, color=_MUTED)
    return fig


def size_accuracy_figure(
    points: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    chosen: Mapping[str, tuple[float, float]] | None = None,
    baseline: tuple[float, float] | None = None,
    size_label: str = "downstream MLP weights (bytes, log scale)",
    metric_label: str = "validation accuracy",
    title: str = "Model size against accuracy",
) -> Any:
    """Validation score against model size, one series per method, size on a log axis.

    Parameters
    ----------
    points : mapping of str to (sizes, scores)
        Per method, the model size (bytes) and the validation score of each curve point.
    chosen : mapping of str to (size, score) or None
        Per method, the chosen point, drawn as a filled star.
    baseline : (size, score) or None
        The model on every feature, a black diamond.
    size_label, metric_label, title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    with matplotlib.rc_context(_style()):
        fig, ax = _axes((6.4, 4.0))
        any_point = False
        for j, (name, (sizes, scores)) in enumerate(points.items()):
            pts = sorted((float(b), float(s)) for b, s in zip(sizes, scores, strict=False)
                         if _finite(b) and _finite(s) and b > 0)
            if not pts:
                continue
            any_point = True
            color = PALETTE[j % len(PALETTE)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, markersize=3.5, linewidth=1.2,
                    label=_shorten(str(name), 28), zorder=3, alpha=0.9)
            pick = (chosen or {}).get(name)
            if pick is not None and _finite(pick[0]) and _finite(pick[1]) and pick[0] > 0:
                ax.scatter([pick[0]], [pick[1]], marker="*", s=140, color=color, edgecolors=_INK, linewidths=0.6,
                           zorder=5)
        if baseline is not None and _finite(baseline[0]) and _finite(baseline[1]) and baseline[0] > 0:
            any_point = True
            ax.scatter([baseline[0]], [baseline[1]], marker="D", s=40, color=_INK, zorder=5,
                       label=f"all features ({_bytes(baseline[0])})")
        if any_point:
            ax.set_xscale("log")
            # The default log tick labels are mathtext ("$10^{4}$"), which prints literally with
            # math parsing off: label the ticks as byte counts instead.
            ax.xaxis.set_major_formatter(_byte_log_formatter(labelOnlyBase=False))
            ax.xaxis.set_minor_formatter(_byte_log_formatter(labelOnlyBase=False))
            ax.legend(loc="lower right", frameon=True, framealpha=0.9, edgecolor=_GRID, fontsize=8)
        ax.set_xlabel(size_label)
        ax.set_ylabel(metric_label)
        ax.set_title(_shorten(title, 70), loc="left")
        if chosen:
            fig.text(0.99, 0.005, "star: chosen k", ha="right", va="bottom", fontsize=7, color=_MUTED)
    return fig


def _byte_log_formatter(**kwargs: Any) -> Any:
    """A log-axis tick formatter that picks ticks as matplotlib does and writes them with :func:`_bytes`."""
    from matplotlib.ticker import LogFormatter

    class _ByteLogFormatter(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return _bytes(x)

    return _ByteLogFormatter(**kwargs)


def _bytes(n: float) -> str:
    """A byte count in B, kB, MB or GB (powers of 1000)."""
    if abs(n) < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB"):
        n /= 1000.0
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000.0:.1f} GB"


def _render(fig: Any) -> str:
    import matplotlib

    with matplotlib.rc_context(_style()):
        return _to_data_uri(fig)


def explained_variance_chart(ratios: Sequence[float], **kwargs: Any) -> str:
    """:func:`explained_variance_figure` as a ``data:image/png;base64,...`` URI."""
    return _render(explained_variance_figure(ratios, **kwargs))


def feature_curve_chart(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], **kwargs: Any) -> str:
    """:func:`feature_curve_figure` as a ``data:image/png;base64,...`` URI."""
    return _render(feature_curve_figure(curves, **kwargs))


def size_accuracy_chart(points: Mapping[str, tuple[Sequence[float], Sequence[float]]], **kwargs: Any) -> str:
    """:func:`size_accuracy_figure` as a ``data:image/png;base64,...`` URI."""
    return _render(size_accuracy_figure(points, **kwargs))

