"""The tabular MLP family: its config, and a module that takes encoded columns.

Preprocessing lives *inside* the module, as buffers fitted on the training split, so
the exported ONNX graph (after :func:`modelyard.compress.with_raw_inputs`) takes raw
columns and nothing outside the model file is needed to serve it:

* numeric columns: an optional signed ``log1p`` for heavy-tailed non-negative
  columns (decided at fit time, recorded in the ``num_log`` buffer), NaN imputed
  with the training mean, then standardized with the training mean and population
  standard deviation (``num_mean``, ``num_std``), then (by default) a learned
  periodic embedding per column;
* categorical columns: one embedding per column; code ``0`` (missing or unseen) has
  its own row;
* regression targets: the head predicts a standardized target, rescaled in
  ``forward`` with ``target_mean``/``target_std`` so outputs are in target units.

:class:`TabularModule` is the contract every torch model family implements (the MLP
is the first); :data:`modelyard.models._io.MODEL_FAMILIES` finds a family by name
when a saved model is loaded.
"""

from __future__ import annotations

import abc
import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from modelyard.data._schema import Schema
from modelyard.models._config import MLPConfig

__all__ = ["MLPConfig", "TabularModule", "TabularMLP", "embedding_dim"]

#: ``MLPConfig.activation`` -> module class of the nonlinearity after each hidden layer.
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def embedding_dim(n_rows: int, config: MLPConfig) -> int:
    """Width of the embedding of a column whose table has ``n_rows`` rows (categories + 1)."""
    if config.embedding_dim is not None:
        return config.embedding_dim
    return int(max(1, min(config.max_embedding_dim, round(1.6 * n_rows**0.56))))


class TabularModule(nn.Module, abc.ABC):
    """Base of torch model families that take encoded tabular columns.

    A family sets :attr:`family` (the name stored in saved files) and
    :attr:`config_class` (a frozen pydantic model), and implements :meth:`build`.
    Its ``forward(x_num, x_cat)`` takes ``x_num`` float32 ``(B, n_numeric)`` with NaN
    for missing values and ``x_cat`` int64 ``(B, n_categorical)`` codes (either may be
    ``None`` when the schema has no such column) and returns logits ``(B, n_classes)``
    for classifiers or values ``(B,)`` for regression. Everything the module needs at
    prediction time must be a parameter or a persistent buffer, so that a state dict
    plus ``(schema, config)`` rebuilds it exactly.
    """

    family: ClassVar[str]
    config_class: ClassVar[type[BaseModel]]
    config: BaseModel

    @classmethod
    @abc.abstractmethod
    def build(
        cls, schema: Schema, config: Any, *, x_num: np.ndarray | None = None, y: np.ndarray | None = None
    ) -> TabularModule:
        """A freshly initialized module; with ``x_num``/``y`` (training split), fit its preprocessing."""


class TabularMLP(TabularModule):
    """Embeddings for categorical columns, standardized (and periodic-embedded) numeric ones, then an MLP.

    Parameters
    ----------
    schema : Schema
        Gives the numeric columns, the categorical vocabularies and the task.
    config : MLPConfig
        Layer sizes, dropout and the embedding-width rule.
    generator : torch.Generator or None, default=None
        Source of randomness for weight initialization (``None``: torch's global one).

    Notes
    -----
    Buffers ``num_mean``, ``num_std`` and ``num_log`` start as the identity transform;
    :meth:`fit_preprocessing` fits them on training data (or a state dict restores
    them).
    """

    family: ClassVar[str] = "mlp"
    config_class: ClassVar[type[BaseModel]] = MLPConfig

    def __init__(self, schema: Schema, config: MLPConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.task = schema.task
        self.n_num = len(schema.numeric)
        self.n_cat = len(schema.categorical)
        n_out = 1 if schema.task == "regression" else schema.n_classes
        self.register_buffer("num_mean", torch.zeros(self.n_num))  # (n_num,)
        self.register_buffer("num_std", torch.ones(self.n_num))  # (n_num,)
        self.register_buffer("num_log", torch.zeros(self.n_num, dtype=torch.bool))  # (n_num,)
        if self.task == "regression":
            self.register_buffer("target_mean", torch.zeros(()))
            self.register_buffer("target_std", torch.ones(()))
        self.periodic = config.numeric_embedding == "periodic" and self.n_num > 0
        if self.periodic:
            k, d = config.n_frequencies, config.numeric_embedding_dim
            self.frequencies = nn.Parameter(torch.empty(self.n_num, k))  # (n_num, k)
            self.periodic_weight = nn.Parameter(torch.empty(self.n_num, 2 * k, d))  # (n_num, 2k, d)
            self.periodic_bias = nn.Parameter(torch.empty(self.n_num, d))  # (n_num, d)
        num_width = self.n_num * (config.numeric_embedding_dim if self.periodic else 1)
        tables = [len(c.categories) + 1 for c in schema.categorical]  # row 0 = missing or unseen
        # Layers are created on the meta device (no storage, no draws from torch's global
        # RNG), then given storage and initialized from `generator` by reset_parameters.
        self.embeddings = nn.ModuleList(nn.Embedding(n, embedding_dim(n, config), device="meta") for n in tables)
        width = num_width + sum(e.embedding_dim for e in self.embeddings)
        layers: list[nn.Module] = []
        for size in config.hidden_sizes:
            layers += [nn.Linear(width, size, device="meta"), ACTIVATIONS[config.activation](), nn.Dropout(config.dropout)]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out, device="meta")
        for part in (self.embeddings, self.body, self.head):
            part.to_empty(device="cpu")
        self.reset_parameters(generator)

    @classmethod
    def build(
        cls, schema: Schema, config: MLPConfig, *, x_num: np.ndarray | None = None, y: np.ndarray | None = None
    ) -> TabularMLP:
        """A module initialized from ``config.seed``; fits preprocessing when ``x_num`` is given.

        Parameters
        ----------
        schema : Schema
            The training schema.
        config : MLPConfig
            The family config; ``config.seed`` seeds the initial weights.
        x_num : ndarray of shape (n_rows, n_numeric) or None
            Encoded numeric training columns (NaN for missing), see :func:`encode_frame`.
        y : ndarray of shape (n_rows,) or None
            Encoded training target; only used by regression (target scaling).
        """
        generator = torch.Generator().manual_seed(config.seed)
        module = cls(schema, config, generator=generator)
        if x_num is not None:
            module.fit_preprocessing(x_num, y)
        return module

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialize weights as torch's defaults do, drawing from ``generator``."""
        if self.periodic:
            nn.init.normal_(self.frequencies, std=self.config.frequency_scale, generator=generator)
            # Each column's Linear(2k -> d), initialized as nn.Linear would be.
            bound = 1.0 / (2 * self.config.n_frequencies) ** 0.5
            nn.init.uniform_(self.periodic_weight, -bound, bound, generator=generator)
            nn.init.uniform_(self.periodic_bias, -bound, bound, generator=generator)
        for emb in self.embeddings:
            nn.init.normal_(emb.weight, generator=generator)
        for layer in [*self.body, self.head]:
            if isinstance(layer, nn.Linear):
                # nn.Linear.reset_parameters, with an explicit generator.
                nn.init.kaiming_uniform_(layer.weight, a=5**0.5, generator=generator)
                bound = 1.0 / layer.in_features**0.5
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

    @torch.no_grad()
    def fit_preprocessing(self, x_num: np.ndarray, y: np.ndarray | None = None) -> None:
        """Fit the numeric (and, for regression, target) buffers on the training split.

        Statistics are computed in float64 then stored as float32. The standard
        deviation is the population one (``ddof=0``, as scikit-learn's
        ``StandardScaler``) of the column after mean imputation; a constant column
        gets a scale of 1.
        """
        x = np.asarray(x_num, dtype=np.float64)  # (n, n_num)
        if x.ndim != 2 or x.shape[1] != self.n_num:
            raise ValueError(f"x_num must have shape (n_rows, {self.n_num}); got {x.shape}.")
        log = np.zeros(self.n_num, dtype=bool)
        if self.config.log_transform:
            for j in range(self.n_num):
                col = x[:, j][~np.isnan(x[:, j])]
                log[j] = col.size > 2 and col.min() >= 0 and _skewness(col) > self.config.log_skew_threshold
        x = np.where(log, np.sign(x) * np.log1p(np.abs(x)), x)  # (n, n_num)
        with warnings.catch_warnings():  # an all-NaN column warns "Mean of empty slice"; its mean becomes 0 below
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(x, axis=0) if len(x) else np.zeros(self.n_num)  # (n_num,)
        mean = np.where(np.isnan(mean), 0.0, mean)
        std = np.where(np.isnan(x), mean, x).std(axis=0) if len(x) else np.ones(self.n_num)  # (n_num,)
        # sklearn's StandardScaler treats a scale under 10 * float64 eps as constant; same here.
        std = np.where(std < 10 * np.finfo(np.float64).eps, 1.0, std)
        self.num_mean.copy_(torch.from_numpy(mean))
        self.num_std.copy_(torch.from_numpy(std))
        self.num_log.copy_(torch.from_numpy(log))
        if self.task == "regression" and y is not None:
            t = np.asarray(y, dtype=np.float64)
            t_std = t.std() if t.size else 1.0
            self.target_mean.fill_(float(t.mean()) if t.size else 0.0)
            self.target_std.fill_(float(t_std) if t_std > 0 else 1.0)

    def standardize(self, x_num: torch.Tensor) -> torch.Tensor:
        """Numeric inputs as the first layer sees them: log1p (flagged columns), imputed, standardized."""
        x = torch.where(self.num_log, torch.sign(x_num) * torch.log1p(torch.abs(x_num)), x_num)  # (B, n_num)
        x = torch.where(torch.isnan(x), self.num_mean, x)  # (B, n_num)
        return (x - self.num_mean) / self.num_std  # (B, n_num)

    def embed_numeric(self, x: torch.Tensor) -> torch.Tensor:
        """Periodic embedding of standardized numeric columns, flattened: ``(B, n_num * d)``."""
        z = 2 * math.pi * x.unsqueeze(2) * self.frequencies  # (B, n_num, k)
        z = torch.cat([torch.sin(z), torch.cos(z)], dim=2)  # (B, n_num, 2k)
        # One Linear(2k -> d) per column, as a batched matmul over columns.
        z = torch.matmul(z.transpose(0, 1), self.periodic_weight).transpose(0, 1)  # (B, n_num, d)
        return torch.relu(z + self.periodic_bias).flatten(1)  # (B, n_num * d)

    def forward(self, x_num: torch.Tensor | None = None, x_cat: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, n_classes)`` for classifiers, values ``(B,)`` for regression."""
        parts: list[torch.Tensor] = []
        if self.n_num:
            if x_num is None:
                raise ValueError(f"This model takes {self.n_num} numeric columns; x_num is None.")
            x = self.standardize(x_num)  # (B, n_num)
            parts.append(self.embed_numeric(x) if self.periodic else x)  # (B, n_num * d) or (B, n_num)
        if self.n_cat:
            if x_cat is None:
                raise ValueError(f"This model takes {self.n_cat} categorical columns; x_cat is None.")
            parts.extend(emb(x_cat[:, j]) for j, emb in enumerate(self.embeddings))  # each (B, d_j)
        h = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, numeric width + sum d_j)
        out = self.head(self.body(h))  # (B, n_out)
        if self.task == "regression":
            return out.squeeze(1) * self.target_std + self.target_mean  # (B,)
        return out  # (B, n_classes)


def _skewness(col: np.ndarray) -> float:
    """Sample skewness (Fisher-Pearson, biased), 0 for a constant column."""
    dev = col - col.mean()
    m2 = float(np.mean(dev**2))
    if m2 <= 0:
        return 0.0
    return float(np.mean(dev**3) / m2**1.5)
