"""The torch adapter: a :class:`TorchPredictor` over any :class:`TabularModule` (fitting lives in :mod:`modelyard.train`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel

from modelyard.data._schema import Schema, encode_frame
from modelyard.models._base import BasePredictor
from modelyard.models._mlp import TabularModule

__all__ = ["TorchPredictor"]


class TorchPredictor(BasePredictor):
    """A torch module that takes encoded columns, seen as a :class:`Predictor` on raw columns.

    Parameters
    ----------
    module : TabularModule
        Returns logits ``(B, n_classes)`` for classifiers or values ``(B,)`` for
        regression from ``(x_num, x_cat)`` (see :func:`modelyard.data.encode_frame`).
    schema : Schema
        The schema the module was trained on.
    config : pydantic.BaseModel or None, default=None
        The family config; ``None`` takes ``module.config``.
    batch_size : int, default=8192
        Rows per forward pass at prediction time.

    Attributes
    ----------
    history_ : dict of str to list of float or None
        Per-epoch ``train_loss``, ``valid_loss`` (and ``valid_accuracy``) when the
        predictor came from :func:`fit_mlp`; ``None`` when it was loaded from a file.
    best_epoch_ : int or None
        The epoch (from 1) whose weights the module holds, when fitted by :func:`fit_mlp`.
    """

    differentiable = True

    def __init__(
        self, module: TabularModule, schema: Schema, *, config: BaseModel | None = None, batch_size: int = 8192
    ) -> None:
        super().__init__(schema)
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"TorchPredictor wraps a torch.nn.Module; got {type(module).__name__}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
        self.module = module
        self.config = config if config is not None else getattr(module, "config", None)
        self.batch_size = batch_size
        self.history_: dict[str, list[float]] | None = None
        self.best_epoch_: int | None = None

    @property
    def family(self) -> str:
        """The model family name stored in saved files ("mlp")."""
        return str(getattr(self.module, "family", type(self.module).__name__))

    def encode(self, X: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw columns as the module's inputs: ``x_num`` float32 ``(n, n_num)``, ``x_cat`` int64 ``(n, n_cat)``.

        Gradient methods (integrated gradients, attacks) start from these tensors.
        """
        x_num, x_cat = encode_frame(self._checked(X), self.schema)
        return torch.from_numpy(x_num), torch.from_numpy(x_cat)

    def _forward(self, X: pd.DataFrame) -> np.ndarray:
        x_num, x_cat = encode_frame(X, self.schema)  # (n, n_num) float32, (n, n_cat) int64
        n = len(X)
        classify = self.task != "regression"
        if n == 0:
            return np.zeros((0, self.schema.n_classes) if classify else (0,), dtype=np.float64)
        xn, xc = torch.from_numpy(x_num), torch.from_numpy(x_cat)
        was_training = self.module.training
        self.module.eval()
        outs = []
        try:
            with torch.inference_mode():
                for lo in range(0, n, self.batch_size):
                    out = self.module(xn[lo : lo + self.batch_size], xc[lo : lo + self.batch_size])
                    outs.append(torch.softmax(out, dim=1) if classify else out.reshape(-1))  # (b, k) or (b,)
        finally:
            self.module.train(was_training)
        return torch.cat(outs).numpy().astype(np.float64)

    def __repr__(self) -> str:
        return f"TorchPredictor(family={self.family!r}, task={self.task!r}, features={len(self.feature_names)})"
