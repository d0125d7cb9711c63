"""Partial dependence (Friedman 2001) and individual conditional expectation (Goldstein et al. 2015), 1D and 2D.

For a feature ``j`` and a grid value ``v``, ICE of row ``i`` is the model's output on
row ``i`` with ``x_j`` set to ``v``; the partial dependence is the mean of ICE over the
rows. Centered ICE subtracts each curve's value at the first grid point, so curves that
differ only by a level line up and interactions show as diverging shapes.

The grid follows scikit-learn's ``partial_dependence``: the unique values when a feature
is categorical or has fewer than ``grid_resolution`` of them, else ``grid_resolution``
equally spaced points between the ``percentiles`` of the column (``scipy.stats.mstats.mquantiles``,
as scikit-learn); missing values are left out of the grid. With the same grid the
values equal scikit-learn's brute method; all grid points go to the model in few large
``predict`` calls instead of one per point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from modelyard.explain._fast import encoded_view

__all__ = ["PartialDependence", "feature_grid", "partial_dependence"]


@dataclass
class PartialDependence:
    """Partial dependence and ICE of one feature or a pair.

    Attributes
    ----------
    features : tuple of str
        One name (1D) or two (2D).
    grid : list of ndarray
        The grid values of each feature.
    average : ndarray
        Partial dependence: shape ``(n_outputs, *grid_shape)``. Outputs: the positive
        class's probability (binary), every class's probability (multiclass) or the
        prediction (regression).
    individual : ndarray or None
        ICE curves ``(n_outputs, n_rows, *grid_shape)`` (1D only, when asked for).
    outputs : list of str
        What each output is (class names or ``prediction``).
    """

    features: tuple[str, ...]
    grid: list[np.ndarray]
    average: np.ndarray
    individual: np.ndarray | None
    outputs: list[str]

    def centered(self) -> np.ndarray:
        """Centered ICE: each curve minus its value at the first grid point (1D only)."""
        if self.individual is None:
            raise ValueError("No ICE curves were computed; call partial_dependence(..., kind='both' or 'individual').")
        return self.individual - self.individual[..., :1]

    def to_frame(self, output: int = 0) -> pd.DataFrame:
        """The partial dependence of one output as a long table (``<feature>..., value``)."""
        mesh = np.meshgrid(*self.grid, indexing="ij")
        data = {f: m.reshape(-1) for f, m in zip(self.features, mesh, strict=True)}
        data["value"] = self.average[output].reshape(-1)
        return pd.DataFrame(data)


def feature_grid(
    column: pd.Series,
    *,
    categorical: bool,
    grid_resolution: int = 100,
    percentiles: tuple[float, float] = (0.05, 0.95),
) -> np.ndarray:
    """The grid of one raw column (see the module docstring).

    Raises
    ------
    ValueError
        Percentiles out of order or too close to span a grid; no non-missing values.
    """
    if not (len(percentiles) == 2 and 0 <= percentiles[0] < percentiles[1] <= 1):
        raise ValueError(f"percentiles must be two increasing numbers in [0, 1]; got {percentiles!r}.")
    if grid_resolution < 2:
        raise ValueError(f"grid_resolution must be at least 2; got {grid_resolution!r}.")
    values = column.dropna()
    if values.empty:
        raise ValueError(f"Feature {column.name!r} has no non-missing values to build a grid from.")
    if categorical:
        return np.asarray(sorted(values.astype(str).unique()), dtype=object)
    numbers = values.to_numpy(dtype=np.float64)
    uniques = np.unique(numbers)
    if len(uniques) < grid_resolution:
        return uniques
    from scipy.stats.mstats import mquantiles

    low, high = mquantiles(numbers, prob=percentiles)
    if np.allclose(low, high):
        raise ValueError(
            f"The {percentiles} percentiles of {column.name!r} are equal; choose percentiles further apart."
        )
    return np.linspace(low, high, num=grid_resolution, endpoint=True)


def partial_dependence(
    predictor: Any,
    X: pd.DataFrame,
    features: str | Sequence[str],
    *,
    kind: str = "average",
    grid_resolution: int = 100,
    percentiles: tuple[float, float] = (0.05, 0.95),
    grid: Sequence[Any] | None = None,
    max_rows_per_call: int = 200_000,
) -> PartialDependence:
    """Partial dependence and/or ICE of one feature (1D) or a pair (2D).

    Parameters
    ----------
    predictor : Predictor
        Any model on raw rows.
    X : pandas.DataFrame
        Rows to average over (a sample of a few thousand is usually enough).
    features : str or pair of str
    kind : {"average", "individual", "both"}, default="average"
        ICE curves (``individual``) are for 1D only.
    grid_resolution : int, default=100
    percentiles : tuple of float, default=(0.05, 0.95)
    grid : list of array-like or None, default=None
        Custom grid values per feature (overrides the automatic grid).
    max_rows_per_call : int, default=200000

    Returns
    -------
    PartialDependence

    Raises
    ------
    ValueError
        A feature the model does not have (the message lists them), more than two
        features, ICE for a pair, or no rows.
    """
    names = [features] if isinstance(features, str) else list(features)
    model_features = list(getattr(predictor, "feature_names", X.columns))
    unknown = [f for f in names if f not in model_features or f not in X.columns]
    if unknown:
        raise ValueError(f"Features {unknown} are not inputs of the model in these rows; the model takes {model_features}.")
    if not 1 <= len(names) <= 2 or len(set(names)) != len(names):
        raise ValueError(f"partial_dependence takes one feature or a pair of different features; got {names}.")
    if kind not in ("average", "individual", "both"):
        raise ValueError(f"kind must be 'average', 'individual' or 'both'; got {kind!r}.")
    if kind != "average" and len(names) == 2:
        raise ValueError("ICE curves are drawn for one feature; use kind='average' for a pair.")
    if not isinstance(X, pd.DataFrame) or len(X) == 0:
        raise ValueError("partial_dependence needs a non-empty DataFrame of raw rows.")
    schema = getattr(predictor, "schema", None)
    categorical = {c.name for c in schema.categorical} if schema is not None else {
        c for c in names if not pd.api.types.is_numeric_dtype(X[c])}
    if grid is not None:
        if len(grid) != len(names):
            raise ValueError(f"grid must give one array of values per feature ({len(names)}); got {len(grid)}.")
        axes = [np.asarray(g, dtype=object if n in categorical else np.float64) for g, n in zip(grid, names, strict=True)]
    else:
        axes = [feature_grid(X[n], categorical=n in categorical, grid_resolution=grid_resolution,
                             percentiles=percentiles) for n in names]
    rows = X[model_features].reset_index(drop=True)
    n = len(rows)
    points = np.array(np.meshgrid(*axes, indexing="ij"), dtype=object).reshape(len(names), -1).T  # (G, k)
    task = getattr(predictor, "task", "regression")
    per_call = max(1, max_rows_per_call // n)
    view = encoded_view(predictor, rows)
    if view is not None:  # each grid value encoded once, as encode_frame would
        encoded = [view.encode_values(name, _column(points[:, j], rows[name], name in categorical).to_numpy())
                   for j, name in enumerate(names)]
    chunks = []
    for lo in range(0, len(points), per_call):
        block = points[lo : lo + per_call]
        if view is None:
            big = pd.concat([rows] * len(block), ignore_index=True)
            for j, name in enumerate(names):
                big[name] = _column(np.repeat(block[:, j], n), rows[name], name in categorical)
            out = predictor.predict(big) if task == "regression" else predictor.predict_proba(big)
        else:
            arrays = {k: np.tile(v, (len(block), 1)) for k, v in view.arrays.items()}
            for j, name in enumerate(names):
                where, col = view.where[name]
                arrays[where][:, col] = np.repeat(encoded[j][lo : lo + len(block)], n)
            out = view.run(arrays)
        chunks.append(np.asarray(out, dtype=np.float64).reshape(len(block), n, -1))  # (g, n, outputs)
    preds = np.concatenate(chunks)  # (G, n, n_outputs)
    if task == "binary":
        preds = preds[..., 1:]  # the positive class, as scikit-learn reports it
        outputs = [str(schema.classes[1]) if schema is not None else "1"]
    elif task == "multiclass":
        outputs = [str(c) for c in schema.classes] if schema is not None else [str(i) for i in range(preds.shape[2])]
    else:
        outputs = ["prediction"]
    shape = tuple(len(a) for a in axes)
    ice = np.moveaxis(preds, 2, 0)  # (n_outputs, G, n)
    average = ice.mean(axis=2).reshape(len(outputs), *shape)
    individual = None
    if kind != "average":
        individual = np.swapaxes(ice, 1, 2).reshape(len(outputs), n, *shape)  # (n_outputs, n, G)
    return PartialDependence(tuple(names), axes, average, individual, outputs)


def _column(values: np.ndarray, original: pd.Series, categorical: bool) -> pd.Series:
    """Grid values as a column like ``original``: strings, or numbers in its float dtype (ints become float64 unless integral)."""
    if categorical:
        return pd.Series(values, dtype=object)
    numbers = values.astype(np.float64)
    dtype = original.dtype
    if pd.api.types.is_float_dtype(dtype):
        return pd.Series(numbers, dtype=dtype)
    if pd.api.types.is_integer_dtype(dtype) and np.all(numbers == np.round(numbers)):
        return pd.Series(numbers.astype(dtype))
    return pd.Series(numbers)
