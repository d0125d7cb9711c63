"""A calibrated lattice model (Gupta et al., "Monotonic Calibrated Interpolated Look-Up Tables", JMLR 2016).

``f(x) = lattice(c_1(x_1), ..., c_d(x_d))``:

* **calibrators** ``c_j``: numeric features get a piecewise-linear function through
  ``n_keypoints`` input keypoints (training quantiles; flat outside them; a missing value
  takes the training median), categorical ones one learned value per category (code 0 =
  missing or unseen). Outputs lie in ``(0, L - 1)`` for lattice size ``L``. A monotone
  calibrator's values are a cumulative sum of non-negative (softplus) steps.
* **lattice**: ``L ** d`` vertex values; the calibrated point is interpolated
  multilinearly from the ``2 ** d`` corners of its cell (contracting one feature at a
  time, so memory is ``batch x L ** (d - 1)``).

**Monotonicity** holds exactly in the parameters: for an increasing (decreasing)
feature ``j`` every calibrator step is ``>= 0`` (``<= 0``) and every vertex is ``>=`` its
neighbour below along ``j``. The vertex values are the raw parameters passed through a
running maximum along each monotone axis: the running
maximum along one axis keeps every other axis's order (an elementwise maximum of ordered
pairs is ordered), so the constraints of all axes hold at once, with gradients flowing
to the entries that set each maximum. Multilinear interpolation of ordered vertices is
monotone in each coordinate (its partial derivative is a weighted mean of vertex
differences), and so is the composition with monotone calibrators.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from modelyard.data._schema import Schema
from modelyard.errors import SpecError
from modelyard.models._config import LatticeConfig
from modelyard.models._mlp import TabularModule

__all__ = ["CalibratedLattice"]


class CalibratedLattice(TabularModule):
    """Calibrators then a lattice; see the module docstring.

    Parameters
    ----------
    schema : Schema
    config : LatticeConfig
    """

    family: ClassVar[str] = "lattice"
    config_class: ClassVar[type[BaseModel]] = LatticeConfig

    def __init__(self, schema: Schema, config: LatticeConfig) -> None:
        super().__init__()
        self.config = config
        self.task = schema.task
        names = [c.name for c in schema.numeric] + [c.name for c in schema.categorical]
        unknown = [f for f in config.monotonic if f not in names]
        if unknown:
            raise SpecError(f"monotonic names features {unknown} the data does not have; features are {names}.")
        if config.monotonic and schema.task == "multiclass":
            raise SpecError("Monotonic constraints need a binary or regression task: a multiclass model has one "
                            "output per class, and raising one class's probability lowers others.")
        bad = [f for f in config.monotonic if f in {c.name for c in schema.categorical}]
        if bad:
            raise SpecError(f"Categorical features {bad} have no order to be monotonic in; constrain numeric ones.")
        self.n_num, self.n_cat = len(schema.numeric), len(schema.categorical)
        d = self.n_num + self.n_cat
        L = config.lattice_size
        if d == 0:
            raise SpecError("A lattice model needs at least one feature.")
        if L**d > config.max_vertices:
            raise SpecError(
                f"A lattice of size {L} over {d} features has {L**d:,} vertices, above max_vertices "
                f"{config.max_vertices:,}; select fewer features (modelyard.compress.select_features) or use lattice_size 2."
            )
        K = config.n_keypoints
        self.names = names
        direction = [1 if config.monotonic.get(n) == "increasing" else -1 if config.monotonic.get(n) == "decreasing"
                     else 0 for n in names]
        self._directions = direction  # plain ints: the structure of the graph, fixed by the config
        self.register_buffer("direction", torch.tensor(direction, dtype=torch.int64))
        self.register_buffer("keypoints", torch.linspace(0, 1, K).repeat(self.n_num, 1))  # (n_num, K)
        self.register_buffer("fill", torch.zeros(self.n_num))  # median of each numeric column
        self.cal_raw = nn.Parameter(torch.zeros(self.n_num, K + 1))  # start + steps (+ slack), see _numeric_values
        self.cat_raw = nn.ParameterList(nn.Parameter(torch.zeros(len(c.categories) + 1)) for c in schema.categorical)
        n_out = schema.n_classes if schema.task == "multiclass" else 1
        self.vertices_raw = nn.Parameter(torch.zeros(n_out, *([L] * d)))
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    @classmethod
    def build(cls, schema: Schema, config: LatticeConfig, *, x_num: np.ndarray | None = None,
              y: np.ndarray | None = None) -> CalibratedLattice:
        """A module whose vertices start as a linear ramp of the mean calibrated value; keypoints from ``x_num``."""
        module = cls(schema, config)
        generator = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            module.cal_raw.normal_(0.0, 0.1, generator=generator)
            for p in module.cat_raw:
                p.normal_(0.0, 0.1, generator=generator)
            module.vertices_raw.normal_(0.0, 0.1, generator=generator)
            if x_num is not None:
                module.fit_preprocessing(x_num, y)
        return module

    @torch.no_grad()
    def fit_preprocessing(self, x_num: np.ndarray, y: np.ndarray | None = None) -> None:
        """Keypoints at the training quantiles (strictly increasing), medians for missing values, target scale."""
        x = np.asarray(x_num, dtype=np.float64)
        K = self.config.n_keypoints
        for j in range(self.n_num):
            col = x[:, j][~np.isnan(x[:, j])]
            if col.size == 0:
                col = np.zeros(1)
            q = np.quantile(col, np.linspace(0, 1, K))
            q = np.maximum.accumulate(q)
            span = max(q[-1] - q[0], 1e-6 * max(1.0, abs(q[0])))
            q = q + np.arange(K) * span * 1e-6  # strictly increasing even for repeated quantiles
            self.keypoints[j] = torch.from_numpy(q)
            self.fill[j] = float(np.median(col))
        if self.task == "regression" and y is not None and len(y):
            self.target_mean.fill_(float(np.mean(y)))
            self.target_std.fill_(float(np.std(y)) or 1.0)

    # -- calibrators -----------------------------------------------------------------------
    def _numeric_values(self) -> torch.Tensor:
        """Calibrator outputs at the keypoints, ``(n_num, K)`` in ``(0, L - 1)``."""
        L = self.config.lattice_size
        steps = F.softplus(self.cal_raw)  # (n_num, K + 1), all > 0
        ramp = torch.cumsum(steps[:, :-1], dim=1) / steps.sum(dim=1, keepdim=True)  # increasing in (0, 1)
        free = torch.sigmoid(self.cal_raw[:, :-1])  # any shape in (0, 1)
        d = self.direction[: self.n_num].view(-1, 1)
        values = torch.where(d > 0, ramp, torch.where(d < 0, ramp.flip(1), free))
        return (L - 1) * values

    def calibrate(self, x_num: torch.Tensor | None, x_cat: torch.Tensor | None) -> torch.Tensor:
        """Calibrated inputs ``(B, d)`` in ``[0, L - 1]``."""
        cols = []
        if self.n_num:
            x = torch.where(torch.isnan(x_num), self.fill, x_num)  # (B, n_num)
            kp, vals = self.keypoints, self._numeric_values()  # (n_num, K)
            # Piecewise-linear as a sum of clamped ramps (exportable, no search): flat outside the keypoints.
            t = ((x.unsqueeze(2) - kp[:, :-1]) / (kp[:, 1:] - kp[:, :-1])).clamp(0.0, 1.0)  # (B, n_num, K - 1)
            cols.append(vals[:, 0] + (t * (vals[:, 1:] - vals[:, :-1])).sum(dim=2))  # (B, n_num)
        L = self.config.lattice_size
        for j, p in enumerate(self.cat_raw):
            cols.append(((L - 1) * torch.sigmoid(p))[x_cat[:, j]].unsqueeze(1))
        return torch.cat(cols, dim=1)

    # -- lattice ---------------------------------------------------------------------------
    def vertices(self) -> torch.Tensor:
        """Vertex values ``(n_out, L, ..., L)``, non-decreasing along every monotonic feature's axis.

        The sign of a decreasing feature is carried by its calibrator (decreasing), so the
        lattice rises along every constrained axis, as in TensorFlow Lattice.
        """
        theta = self.vertices_raw
        L = self.config.lattice_size
        for j, d in enumerate(self._directions):
            if d == 0:
                continue
            axis = j + 1
            slices = list(theta.unbind(axis))
            for i in range(1, L):  # running maximum along the axis
                slices[i] = torch.maximum(slices[i], slices[i - 1])
            theta = torch.stack(slices, dim=axis)
        return theta

    def interpolate(self, z: torch.Tensor) -> torch.Tensor:
        """Multilinear interpolation of the vertices at calibrated points ``z`` ``(B, d)``: ``(B, n_out)``."""
        L = self.config.lattice_size
        theta = self.vertices()
        n_out, d, B = theta.shape[0], z.shape[1], z.shape[0]
        cell = z.detach().floor().clamp(0, L - 2).long()  # (B, d)
        frac = z - cell  # (B, d) in [0, 1]
        cur = theta.unsqueeze(0).expand(B, *theta.shape)  # (B, n_out, L, ..., L)
        for j in range(d):
            rest = cur.shape[3:]
            ones = [1] * len(rest)
            idx = cell[:, j].view(B, 1, 1, *ones).expand(B, n_out, 1, *rest)
            low = cur.gather(2, idx)[:, :, 0]  # indexing, not squeeze: squeeze exports as an ONNX If
            high = cur.gather(2, idx + 1)[:, :, 0]
            w = frac[:, j].view(B, 1, *ones)
            cur = low + w * (high - low)  # (B, n_out, L, ..., L) with one axis fewer
        return cur.reshape(B, n_out)

    def forward(self, x_num: torch.Tensor | None = None, x_cat: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, n_classes)`` (binary: ``[0, f]``) or values ``(B,)``."""
        f = self.interpolate(self.calibrate(x_num, x_cat))  # (B, n_out)
        if self.task == "regression":
            return f.squeeze(1) * self.target_std + self.target_mean
        if self.task == "binary":
            return torch.cat([torch.zeros_like(f), f], dim=1)
        return f

    def extra_repr(self) -> str:
        L, d = self.config.lattice_size, self.n_num + self.n_cat
        mono = {n: m for n, m in self.config.monotonic.items()}
        return f"lattice_size={L}, features={d}, vertices={L**d}, monotonic={mono}"

