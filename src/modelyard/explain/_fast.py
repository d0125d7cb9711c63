"""A column-wise encoded view of a predictor, so explanations encode rows once.

Permutation importance and partial dependence edit one raw column and predict again,
many times. For models whose input encoding is column by column (our torch models:
:func:`modelyard.data.encode_frame`), editing the encoded column is the same as editing
the raw one and re-encoding, without re-parsing every string column on every call. For
other predictors :func:`encoded_view` returns None and callers use raw frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["EncodedView", "encoded_view"]


@dataclass
class EncodedView:
    """Encoded rows of a torch predictor and how to edit and run them.

    Attributes
    ----------
    arrays : dict of str to ndarray
        ``x_num`` (float32) and ``x_cat`` (int64) of the rows.
    where : dict of str to (str, int)
        Raw feature -> (array name, column).
    """

    predictor: Any
    arrays: dict[str, np.ndarray]
    where: dict[str, tuple[str, int]]

    def encode_values(self, feature: str, values: np.ndarray) -> np.ndarray:
        """Raw values of one feature encoded as that feature's column (exactly as :func:`encode_frame`)."""
        from modelyard.data import encode_frame

        schema = self.predictor.schema
        template = {c.name: [np.nan] * len(values) if c.kind == "numeric" else [None] * len(values)
                    for c in schema.features}
        frame = pd.DataFrame(template)
        frame[feature] = pd.Series(values, dtype=object).to_numpy()
        x_num, x_cat = encode_frame(frame, schema)
        name, j = self.where[feature]
        return (x_num if name == "x_num" else x_cat)[:, j]

    def run(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """The predictor's output (probabilities or predictions, float64) on encoded arrays."""
        import torch

        p = self.predictor
        xn, xc = torch.from_numpy(arrays["x_num"]), torch.from_numpy(arrays["x_cat"])
        classify = p.task != "regression"
        module = p.module
        was_training = module.training
        module.eval()
        outs = []
        try:
            with torch.inference_mode():
                for lo in range(0, len(xn), p.batch_size):
                    out = module(xn[lo : lo + p.batch_size], xc[lo : lo + p.batch_size])
                    outs.append(torch.softmax(out, dim=1) if classify else out.reshape(-1))
        finally:
            module.train(was_training)
        return torch.cat(outs).numpy().astype(np.float64)


def encoded_view(predictor: Any, X: pd.DataFrame) -> EncodedView | None:
    """An :class:`EncodedView` of ``X`` for a torch predictor on tabular columns, else None."""
    from modelyard.models import TorchPredictor

    if not isinstance(predictor, TorchPredictor) or type(predictor)._forward is not TorchPredictor._forward:
        return None  # a subclass that changes the outputs must be run on frames
    from modelyard.data import encode_frame

    schema = predictor.schema
    x_num, x_cat = encode_frame(X, schema)
    where = {c.name: ("x_num", j) for j, c in enumerate(schema.numeric)}
    where.update({c.name: ("x_cat", j) for j, c in enumerate(schema.categorical)})
    return EncodedView(predictor, {"x_num": x_num, "x_cat": x_cat}, where)
