"""The result of a per-row attribution (Shapley values, LIME): one value per row, feature and output.

:class:`Explanation` holds what plots and reports need: the attributions, the base
value they start from, the raw feature values of the explained rows, and which rows
of the input they were. Shapley methods satisfy *efficiency*: for every row and
output, ``base_values + values.sum(axis=1)`` is the model's output on that row
(:meth:`Explanation.predictions`). LIME's values are the coefficients of a local
linear surrogate and its base value the surrogate's intercept; they need not add up
to the model's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Explanation"]


@dataclass
class Explanation:
    """Per-row attributions of some features to some model outputs.

    Attributes
    ----------
    values : ndarray of shape (n_rows, n_features) or (n_rows, n_features, n_outputs)
        One attribution per explained row and feature (and output, when there are
        several: every class of a multiclass model).
    base_values : ndarray of shape (n_rows,) or (n_rows, n_outputs)
        The value the attributions start from (Shapley: ``E[f]`` over the background;
        LIME: the surrogate's intercept).
    data : pandas.DataFrame
        The explained rows' raw feature values (one row per explained row).
    feature_names : list of str
        The features ``values`` is about, in its column order.
    output_names : list of str
        What each output is: a class name, ``prediction``, or ``log-odds(<class>)``.
    method : str
        Which method made it (``exact``, ``kernel``, ``tree_path_dependent``,
        ``tree_interventional``, ``lime``).
    rows : ndarray of int
        Positions of the explained rows in the frame that was passed in.
    info : dict
        Method details (coalitions evaluated, model rows, surrogate order, fit scores...).
    """

    values: np.ndarray
    base_values: np.ndarray
    data: pd.DataFrame
    feature_names: list[str]
    output_names: list[str]
    method: str
    rows: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_outputs(self) -> int:
        """How many outputs are explained (1 for binary, regression or one chosen class)."""
        return 1 if self.values.ndim == 2 else self.values.shape[2]

    def _output_index(self, output: int | str | None) -> int | None:
        if output is None:
            return None
        if isinstance(output, str):
            if output not in self.output_names:
                raise ValueError(f"Unknown output {output!r}; this explanation has outputs {self.output_names}.")
            return self.output_names.index(output)
        if not -self.n_outputs <= int(output) < self.n_outputs:
            raise ValueError(f"Output index {output} is out of range for {self.n_outputs} outputs {self.output_names}.")
        return int(output) % self.n_outputs

    def select(self, output: int | str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(values (n_rows, n_features), base_values (n_rows,))`` of one output.

        Parameters
        ----------
        output : int, str or None, default=None
            Index or name of the output; may be None only when there is one output.
        """
        j = self._output_index(output)
        if self.values.ndim == 2:
            if j not in (None, 0):
                raise ValueError(f"This explanation has one output ({self.output_names[0]!r}); use output=None.")
            return self.values, self.base_values
        if j is None:
            raise ValueError(f"This explanation has {self.n_outputs} outputs {self.output_names}; choose one with output=.")
        return self.values[:, :, j], self.base_values[:, j]

    def predictions(self) -> np.ndarray:
        """``base_values + values.sum(axis=1)``: the model's output on each row for Shapley values."""
        return self.base_values + self.values.sum(axis=1)

    def importance(self, output: int | str | None = None) -> pd.DataFrame:
        """Mean absolute attribution per feature, largest first: ``feature, importance``."""
        values, _ = self.select(output)
        frame = pd.DataFrame({"feature": self.feature_names, "importance": np.abs(values).mean(axis=0)})
        return frame.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)

    def to_frame(self, output: int | str | None = None) -> pd.DataFrame:
        """A long table, one line per row and feature: ``row, feature, value, attribution, base_value``.

        ``row`` is the position in the frame that was explained; ``value`` the raw
        feature value. With several outputs and ``output=None`` an ``output`` column is
        added and there is one line per row, feature and output.
        """
        n, m = len(self.rows), len(self.feature_names)
        feature_values = self.data[self.feature_names].to_numpy(dtype=object).reshape(-1) if m else np.empty(0)
        parts = []
        outputs = range(self.n_outputs) if (output is None and self.n_outputs > 1) else [output]
        for j in outputs:
            values, base = self.select(j)
            part = pd.DataFrame({
                "row": np.repeat(self.rows, m),
                "feature": np.tile(np.asarray(self.feature_names, dtype=object), n),
                "value": feature_values,
                "attribution": values.reshape(-1),
                "base_value": np.repeat(base, m),
            })
            if self.n_outputs > 1:
                part.insert(0, "output", self.output_names[self._output_index(j)])
            parts.append(part)
        return pd.concat(parts, ignore_index=True)
