"""Plots of attributions: SHAP summary (beeswarm), dependence, mean-|value| bars, image heatmaps.

Each function draws on a given matplotlib ``Axes`` (or a new figure) and returns the
``Figure``, so the report can save it. They take an
:class:`~modelyard.explain.Explanation` (Shapley values or LIME coefficients) or, for
images, an image and a heatmap (:class:`~modelyard.explain.ImageExplanation`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from modelyard.explain._explanation import Explanation

__all__ = ["plot_beeswarm", "plot_dependence", "plot_image_heatmap", "plot_importance"]


def _axes(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    """``(figure, axes)``: the given axes, or a new pyplot-free figure (saves without a display)."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.add_subplot(1, 1, 1)


def _numeric_position(column: pd.Series) -> tuple[np.ndarray, list[str] | None]:
    """Numbers for a column: its values, or category ranks (with the category names)."""
    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.notna().sum() >= max(1, column.notna().sum()) and pd.api.types.is_numeric_dtype(column):
        return numbers.to_numpy(dtype=np.float64), None
    labels = sorted({str(v) for v in column.dropna()})
    lookup = {v: i for i, v in enumerate(labels)}
    return np.array([lookup.get(str(v), np.nan) if pd.notna(v) else np.nan for v in column], dtype=np.float64), labels


def plot_importance(explanation: Explanation, *, output: int | str | None = None, max_display: int = 15,
                    ax: Any = None) -> Any:
    """Horizontal bars of the mean absolute attribution per feature, largest on top."""
    table = explanation.importance(output).head(max_display).iloc[::-1]
    fig, ax = _axes(ax, (6, 0.35 * len(table) + 1))
    ax.barh(table["feature"], table["importance"], color="#1f77b4")
    ax.set_xlabel("mean |attribution|")
    ax.set_title(f"{explanation.method}: {explanation.output_names[explanation._output_index(output) or 0]}")
    fig.tight_layout()
    return fig


def plot_beeswarm(explanation: Explanation, *, output: int | str | None = None, max_display: int = 15,
                  ax: Any = None, random_state: int = 0) -> Any:
    """SHAP summary plot: one dot per row and feature at its attribution, coloured by the feature's value.

    Features are ordered by mean absolute attribution; dots of one feature are spread
    vertically where they are dense. Colour runs from low (blue) to high (red) feature
    values (for a categorical feature, by the alphabetical rank of its category).
    """
    values, _ = explanation.select(output)
    order = np.argsort(-np.abs(values).mean(axis=0), kind="stable")[:max_display][::-1]
    fig, ax = _axes(ax, (7, 0.4 * len(order) + 1.2))
    rng = np.random.default_rng(random_state)
    scatter = None
    for pos, j in enumerate(order):
        phi = values[:, j]
        colour, _ = _numeric_position(explanation.data[explanation.feature_names[j]])
        finite = np.isfinite(colour)
        if finite.any():
            lo, hi = np.nanpercentile(colour[finite], [5, 95])
            colour = np.clip((colour - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
        # jitter proportional to the local density of attributions
        bins = np.histogram(phi, bins=50)[0]
        density = bins[np.clip(np.digitize(phi, np.histogram_bin_edges(phi, bins=50)) - 1, 0, 49)]
        spread = 0.4 * density / max(1, density.max())
        y = pos + rng.uniform(-1, 1, len(phi)) * spread
        scatter = ax.scatter(phi, y, c=np.where(finite, colour, 0.5), cmap="coolwarm", vmin=0, vmax=1, s=10,
                             alpha=0.8, linewidths=0)
    ax.axvline(0, color="#999999", lw=0.8)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([explanation.feature_names[j] for j in order])
    ax.set_xlabel(f"attribution to {explanation.output_names[explanation._output_index(output) or 0]}")
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=ax, ticks=[0, 1], fraction=0.03)
        bar.ax.set_yticklabels(["low", "high"])
        bar.set_label("feature value")
    fig.tight_layout()
    return fig


def plot_dependence(explanation: Explanation, feature: str, *, output: int | str | None = None,
                    color_by: str | None = None, ax: Any = None) -> Any:
    """Dependence plot: a feature's value against its attribution, one dot per row.

    Parameters
    ----------
    explanation : Explanation
    feature : str
    output : int, str or None
    color_by : str or None
        Another feature whose value colours the dots (shows interactions).
    ax : matplotlib Axes or None
    """
    if feature not in explanation.feature_names:
        raise ValueError(f"Unknown feature {feature!r}; the explanation has {explanation.feature_names}.")
    values, _ = explanation.select(output)
    x, labels = _numeric_position(explanation.data[feature])
    phi = values[:, explanation.feature_names.index(feature)]
    fig, ax = _axes(ax, (6, 4))
    if labels is not None:  # categories: jitter horizontally
        x = x + np.random.default_rng(0).uniform(-0.2, 0.2, len(x))
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=45, ha="right")
    if color_by is not None:
        c, _ = _numeric_position(explanation.data[color_by])
        points = ax.scatter(x, phi, c=c, cmap="coolwarm", s=12, alpha=0.8, linewidths=0)
        fig.colorbar(points, ax=ax, label=color_by)
    else:
        ax.scatter(x, phi, s=12, alpha=0.8, linewidths=0)
    ax.axhline(0, color="#999999", lw=0.8)
    ax.set_xlabel(feature)
    ax.set_ylabel(f"attribution of {feature}")
    fig.tight_layout()
    return fig


def plot_image_heatmap(image: np.ndarray, heatmap: np.ndarray, *, ax: Any = None, alpha: float = 0.6) -> Any:
    """An image (``(C, H, W)`` or ``(H, W)``) with a signed heatmap ``(H, W)`` over it (red: for, blue: against)."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    if img.max() > 1.0:
        img = img / 255.0
    fig, ax = _axes(ax, (4, 4))
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
    bound = float(np.abs(heatmap).max()) or 1.0
    shown = ax.imshow(heatmap, cmap="bwr", vmin=-bound, vmax=bound, alpha=alpha)
    fig.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_axis_off()
    return fig
