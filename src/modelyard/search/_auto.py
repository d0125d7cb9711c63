"""The default strategy ``auto``: Gaussian-process Bayesian optimization where it pays, TPE elsewhere.

``auto`` picks a sampler from what the study is:

* **one objective over a space without conditions**: :class:`GPBOSampler`, our own Gaussian-process
  Bayesian optimization. It can model every parameter of a space, conditional and
  categorical ones included (``AutoSearch(conditional="gp")`` uses it for conditional
  spaces too), so the parameters that exist only sometimes (the width of a third
  layer) are searched by the model, not at random as Optuna's ``GPSampler`` does. Spaces with many parameters get a trust region around the best point
  (TuRBO, Eriksson et al. 2019) where a global model spreads its few trials too thin.
  After ``max_gp_trials`` finished trials the cubic cost of the model is no longer
  worth it and the study continues with TPE, which reads the same history.
* **a space with conditional parameters** (the tabular MLP space): Optuna's
  multivariate TPE, grouped by the parameters that occur together. On the Adult MLP
  space the Gaussian process found worse models than TPE (see :class:`AutoSearch`).
* **several objectives**: Optuna's multivariate TPE (MOTPE), which handles conditional
  and categorical parameters and needs no population the way NSGA-II does.

The Gaussian process (:class:`GaussianProcess`)
-----------------------------------------------
Inputs are scaled to ``[0, 1]`` (log-scaled parameters on the log scale; integers and
stepped floats on cells of equal width around each grid value, as Optuna does;
categoricals one-hot). A parameter that is inactive in a trial (its condition does
not hold) is imputed at the middle of its range (one-hot: all zeros), so inactive
points share coordinates and the condition's parent tells them apart. The kernel is
Matern-5/2 with one length scale per input dimension and a log-normal prior on each,
``log l ~ N(0, sqrt(3))`` (the width of Hvarfner, Hellsten and Nardi (2024), centred on
the unit cube's side rather than shifted by ``log(D) / 2``: on Branin, Hartmann-6 and
Rosenbrock-10D the shifted prior's smoother models got stuck in local optima on 2 of 5
seeds of Hartmann-6, and the centred one reached lower median regret on all three). Objective values are power-transformed
(Yeo-Johnson, fitted by maximum likelihood) and standardized before fitting: heavy
tails (Rosenbrock's values span five orders of magnitude, a diverged training run's
loss is huge) would otherwise flatten the model around the optimum. The acquisition
function is log expected improvement (Ament et al. 2023), maximized over a Sobol
sample, Gaussian perturbations of the best points and L-BFGS-B from the best of them,
each candidate snapped to a value the space allows before it is scored.

Parallel workers and determinism
--------------------------------
The sampler keeps no state between trials that a worker could miss: each proposal is
a function of the study's finished trials, the trials still running and a random
stream seeded by ``(seed, trial number)``. A trial still running counts as observed
at the model's prediction there ("kriging believer"), so concurrent workers do not
propose the same point; its proposal is stored in the trial's system attributes under
:data:`PROPOSAL_KEY` for the other workers to read. Pruned trials count at the worst
value seen (they were stopped for being worse than their peers); failed ones are left
out. The first trials follow a scrambled Sobol design.

References
----------
.. [HVARFNER] C. Hvarfner, E. O. Hellsten, L. Nardi. Vanilla Bayesian Optimization
   Performs Great in High Dimensions. ICML 2024. https://arxiv.org/abs/2402.02229
.. [AMENT] S. Ament, S. Daulton, D. Eriksson, M. Balandat, E. Bakshy. Unexpected
   Improvements to Expected Improvement for Bayesian Optimization. NeurIPS 2023.
   https://arxiv.org/abs/2310.20708
.. [TURBO] D. Eriksson, M. Pearce, J. Gardner, R. Turner, M. Poloczek. Scalable Global
   Optimization via Local Bayesian Optimization. NeurIPS 2019.
   https://arxiv.org/abs/1910.01739
.. [HEBO] A. Cowen-Rivers et al. HEBO: Pushing the Limits of Sample-Efficient
   Hyperparameter Optimisation. JAIR 2022 (power transform of the outputs).
   https://arxiv.org/abs/2012.03826
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from modelyard.search._space import Categorical, Float, Int, SearchSpace
from modelyard.search._strategies import BaseSearchStrategy, _register

if TYPE_CHECKING:  # pragma: no cover
    from optuna.samplers import BaseSampler as _BaseSampler

__all__ = [
    "PROPOSAL_KEY",
    "AutoSearch",
    "GPBOSampler",
    "GaussianProcess",
    "SpaceEncoder",
    "log_expected_improvement",
]

#: System attribute holding a trial's proposal in ``[0, 1]`` coordinates (a JSON list),
#: read by other workers to treat the running trial as pending.
PROPOSAL_KEY = "modelyard:auto:x"

_WARP = True
_MEANQ = 0.5
_STALL = 3
_EVERY = 2
_RADIUS = 0.5
_GTOL = 1e-2
_MEAN_SD = 2.0
_NOISE_PRIOR = "lognormal"
_PRIOR = "dsp"
_LS_LOC = lambda d: 0.0  # centre of the log length-scale prior (Hvarfner et al.: sqrt(2) + log(d) / 2)
_LS_SCALE = math.sqrt(3.0)
_INIT_OFF = -1.0
_MIN_NOISE = 1e-6  # noise variance floor, on the standardized scale
_MAX_ATTR_CHARS = 2045  # an RDB storage holds system attributes of at most this length


# -- encoding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    """How one parameter maps to columns ``start:start + width`` of the encoded vector."""

    name: str
    param: Any
    start: int
    width: int
    kind: str  # "real", "grid" (ints and stepped floats) or "onehot"
    low: float = 0.0  # bounds of the (log-)transformed range the column scales to [0, 1]
    high: float = 1.0
    log: bool = False
    grid: tuple[float, ...] = ()  # allowed values of a "grid" column


class SpaceEncoder:
    """Maps points of a :class:`SearchSpace` to vectors in ``[0, 1]^D`` and back.

    Floats scale linearly (or on the log scale) to ``[0, 1]``. Integers and stepped
    floats take cells of equal width around each allowed value (on the log scale for
    log integers), so every value gets the same share of the unit interval. A
    categorical with ``k`` choices takes ``k`` one-hot columns. A parameter that is
    inactive (or missing) in a point is imputed at 0.5 (one-hot: all zeros).
    Parameters with a single allowed value are left out.

    Parameters
    ----------
    space : SearchSpace

    Attributes
    ----------
    dim : int
        Length of the encoded vectors.
    numeric : numpy.ndarray of bool
        Columns that are not one-hot (the ones a gradient step may move).
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.columns: list[_Column] = []
        start = 0
        for name in space.names:
            col = self._column(name, space[name], start)
            if col is not None:
                self.columns.append(col)
                start += col.width
        self.dim = start
        self.numeric = np.ones(self.dim, dtype=bool)
        for col in self.columns:
            if col.kind == "onehot":
                self.numeric[col.start : col.start + col.width] = False
        self.conditional = any(space[n].when for n in space.names)

    @staticmethod
    def _column(name: str, p: Any, start: int) -> _Column | None:
        if isinstance(p, Categorical):
            if len(p.choices) < 2:
                return None
            return _Column(name, p, start, len(p.choices), "onehot")
        if isinstance(p, (Float, Int)):
            low, high = float(p.low), float(p.high)
            if low == high:
                return None
            step = p.step
            if isinstance(p, Int) or step is not None:
                n = math.floor((high - low) / step + 1e-9) + 1
                # 12 significant digits: 0.1 * 3 is 0.3, not 0.30000000000000004
                grid = tuple(float(f"{low + i * step:.12g}") for i in range(n))
                if len(grid) < 2:
                    return None
                half = 0.5 * step
                if p.log:  # log integers: cells of equal width on the log scale
                    lo, hi = math.log(low - half), math.log(grid[-1] + half)
                else:
                    lo, hi = low - half, grid[-1] + half
                return _Column(name, p, start, 1, "grid", lo, hi, bool(p.log), grid)
            if p.log:
                return _Column(name, p, start, 1, "real", math.log(low), math.log(high), True)
            return _Column(name, p, start, 1, "real", low, high, False)
        raise TypeError(f"Cannot encode parameter {name!r} of type {type(p).__name__}.")

    # -- single points ----------------------------------------------------------------
    def encode(self, params: Mapping[str, Any]) -> np.ndarray:
        """The vector of ``params``; inactive or missing parameters are imputed.

        Parameters
        ----------
        params : mapping
            Parameter values, e.g. a trial's ``params``. Unknown names are ignored.

        Returns
        -------
        numpy.ndarray of shape (dim,)
        """
        x = np.full(self.dim, 0.5)
        active = set(self.space.active(params)) if self.conditional else set(params)
        for col in self.columns:
            if col.kind == "onehot":
                x[col.start : col.start + col.width] = 0.0
            if col.name not in params or col.name not in active:
                continue
            value = params[col.name]
            if col.kind == "onehot":
                try:
                    x[col.start + col.param.choices.index(value)] = 1.0
                except ValueError:  # a value the space no longer has: leave it all zeros
                    pass
                continue
            v = float(value)
            if col.log:
                v = math.log(max(v, 1e-300))
            x[col.start] = min(max((v - col.low) / (col.high - col.low), 0.0), 1.0)
        return x

    def decode(self, x: np.ndarray) -> dict[str, Any]:
        """The point at ``x`` (every parameter, active or not), as Optuna suggests them.

        Parameters
        ----------
        x : numpy.ndarray of shape (dim,)

        Returns
        -------
        dict
            Parameter name to value (int for :class:`Int`, a choice for :class:`Categorical`).
        """
        out: dict[str, Any] = {}
        for col in self.columns:
            seg = x[col.start : col.start + col.width]
            if col.kind == "onehot":
                out[col.name] = col.param.choices[int(np.argmax(seg))]
                continue
            v = col.low + float(np.clip(seg[0], 0.0, 1.0)) * (col.high - col.low)
            if col.log:
                v = math.exp(v)
            if col.kind == "grid":
                i = int(np.argmin(np.abs(np.asarray(col.grid) - v)))
                v = col.grid[i]
                out[col.name] = int(round(v)) if isinstance(col.param, Int) else float(v)
            else:
                out[col.name] = float(min(max(v, col.param.low), col.param.high))
        return out

    # -- batches -----------------------------------------------------------------------
    def snap(self, X: np.ndarray) -> np.ndarray:
        """Move each row to the encoding of the point it decodes to.

        Grid columns go to their nearest allowed value, one-hot blocks to their largest
        entry, and parameters whose condition fails to the imputed value.

        Parameters
        ----------
        X : numpy.ndarray of shape (n, dim)

        Returns
        -------
        numpy.ndarray of shape (n, dim)
        """
        X = np.clip(np.array(X, dtype=float), 0.0, 1.0)
        for col in self.columns:
            if col.kind == "onehot":
                block = X[:, col.start : col.start + col.width]
                hot = np.argmax(block, axis=1)
                block[:] = 0.0
                block[np.arange(len(X)), hot] = 1.0
            elif col.kind == "grid":
                grid = np.asarray(col.grid)
                t = np.log(grid) if col.log else grid
                centers = (t - col.low) / (col.high - col.low)
                idx = np.abs(X[:, col.start, None] - centers[None, :]).argmin(axis=1)
                X[:, col.start] = centers[idx]
        if self.conditional:
            for i in range(len(X)):
                X[i] = self.encode(self.decode(X[i]))
        return X

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` uniform random points (one-hot blocks: a uniform choice), not snapped."""
        X = rng.random((n, self.dim))
        for col in self.columns:
            if col.kind == "onehot":
                block = np.zeros((n, col.width))
                block[np.arange(n), rng.integers(col.width, size=n)] = 1.0
                X[:, col.start : col.start + col.width] = block
        return X

    def sobol(self, seed: int, n: int) -> np.ndarray:
        """The first ``n`` points of a scrambled Sobol sequence seeded by ``seed``, one-hot blocks decoded."""
        from scipy.stats import qmc

        n_dims = sum(1 if c.kind == "onehot" else c.width for c in self.columns)
        with warnings.catch_warnings():  # n not a power of two: balance is not guaranteed
            warnings.simplefilter("ignore", UserWarning)
            U = qmc.Sobol(n_dims, scramble=True, seed=seed).random(n)
        X = np.zeros((n, self.dim))
        j = 0
        for col in self.columns:
            if col.kind == "onehot":
                hot = np.minimum((U[:, j] * col.width).astype(int), col.width - 1)
                X[np.arange(n), col.start + hot] = 1.0
            else:
                X[:, col.start] = U[:, j]
            j += 1
        return X


# -- the Gaussian process -----------------------------------------------------------------


class _Matern52(torch.autograd.Function):
    """Matern-5/2 of a squared scaled distance, with the exact derivative at 0."""

    @staticmethod
    def forward(ctx: Any, d2: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        r = torch.sqrt(5.0 * d2)
        e = torch.exp(-r)
        ctx.save_for_backward((-5.0 / 6.0) * (r + 1.0) * e)
        return e * (1.0 + r + (5.0 / 3.0) * d2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (deriv,) = ctx.saved_tensors
        return deriv * grad


def _sq_dist(A: torch.Tensor, B: torch.Tensor, inv_ls2: torch.Tensor) -> torch.Tensor:
    return ((A.unsqueeze(-2) - B.unsqueeze(-3)).square() * inv_ls2).sum(-1)


class GaussianProcess:
    """A Gaussian process with a Matern-5/2 ARD kernel, fitted by maximum a posteriori.

    Hyperparameters: one length scale per input dimension with the log-normal prior
    ``log l ~ N(0, sqrt(3))`` (the width of Hvarfner et al. (2024)), a signal
    variance with prior ``log s2 ~ N(0, 1)``, a noise variance ``> 1e-6`` with prior
    ``log n ~ N(log 1e-3, 3)`` and a constant mean. Targets should be standardized.

    Parameters
    ----------
    X : numpy.ndarray of shape (n, D)
        Inputs in ``[0, 1]``.
    y : numpy.ndarray of shape (n,)
        Targets (standardized).
    init : numpy.ndarray or None, default=None
        Raw hyperparameters to start the fit from (a previous fit's :attr:`raw`).
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, init: np.ndarray | None = None) -> None:
        self.X = torch.as_tensor(X, dtype=torch.float64)
        self.y = torch.as_tensor(y, dtype=torch.float64)
        n, d = self.X.shape
        self._diff2 = (self.X.unsqueeze(-2) - self.X.unsqueeze(-3)).square()
        self._ls_loc = _LS_LOC(d)
        self._ls_scale = _LS_SCALE
        self.raw = self._fit(init)
        self._cache()

    # raw = [log l (D), log s2, log(noise - floor), mean]
    def _unpack(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.X.shape[1]
        inv_ls2 = torch.exp(-2.0 * raw[:d])
        return inv_ls2, torch.exp(raw[d]), torch.exp(raw[d + 1]) + _MIN_NOISE, raw[d + 2]

    def _neg_log_posterior(self, raw: torch.Tensor) -> torch.Tensor:
        d = self.X.shape[1]
        inv_ls2, s2, noise, mean = self._unpack(raw)
        K = s2 * _Matern52.apply(self._diff2 @ inv_ls2)
        K = K + noise * torch.eye(len(self.X), dtype=torch.float64)
        L = torch.linalg.cholesky(K)
        r = (self.y - mean).unsqueeze(-1)
        a = torch.linalg.solve_triangular(L, r, upper=False).squeeze(-1)
        nll = 0.5 * (a @ a) + torch.log(torch.diagonal(L)).sum()
        log_ls = raw[:d]
        if _PRIOR == "optuna":
            isl = torch.exp(-2.0 * log_ls)
            prior = (0.1 / isl + 0.1 * isl).sum()
        else:
            prior = 0.5 * (((log_ls - self._ls_loc) / self._ls_scale) ** 2).sum()
        prior = prior + 0.5 * raw[d] ** 2
        if _NOISE_PRIOR == "gamma":
            prior = prior - (1.1 * torch.log(noise) - 30.0 * noise)
        else:
            prior = prior + 0.5 * ((torch.log(noise) - math.log(1e-3)) / 3.0) ** 2
        prior = prior + 0.5 * (mean / _MEAN_SD) ** 2
        return nll + prior

    def _fit(self, init: np.ndarray | None) -> np.ndarray:
        from scipy.optimize import minimize

        d = self.X.shape[1]
        default = np.concatenate([np.full(d, self._ls_loc + _INIT_OFF), [0.0, math.log(1e-3), 0.0]])
        # warm start from the previous fit; the prior's mode too every few fits (or without one)
        warm = init is not None and len(init) == d + 3
        starts = [init] if warm else []
        if not warm or len(self.X) % 5 == 0:
            starts.append(default)

        def f(raw: np.ndarray) -> tuple[float, np.ndarray]:
            t = torch.from_numpy(raw).requires_grad_(True)
            try:
                loss = self._neg_log_posterior(t)
                loss.backward()
            except RuntimeError:  # not positive definite: steer away
                return 1e10, np.zeros_like(raw)
            g = t.grad.numpy().copy()  # type: ignore[union-attr]
            return float(loss.detach()), np.nan_to_num(g)

        bounds = [(-7.0, 7.0)] * d + [(-7.0, 5.0), (math.log(1e-9), 2.0), (-5.0, 5.0)]
        best: tuple[float, np.ndarray] | None = None
        for x0 in starts:
            res = minimize(
                f, x0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 200, "gtol": _GTOL}
            )
            if best is None or res.fun < best[0]:
                best = (float(res.fun), res.x)
        assert best is not None
        return best[1]

    def _cache(self) -> None:
        inv_ls2, s2, noise, mean = self._unpack(torch.from_numpy(self.raw))
        self.inv_ls2, self.s2, self.noise, self.mean = inv_ls2, s2, noise, mean
        self._set_data(self.X, self.y)

    def _set_data(self, X: torch.Tensor, y: torch.Tensor) -> None:
        K = self.s2 * _Matern52.apply(_sq_dist(X, X, self.inv_ls2))
        K = K + self.noise * torch.eye(len(X), dtype=torch.float64)
        jitter = 0.0
        while True:
            try:
                self._L = torch.linalg.cholesky(K + jitter * torch.eye(len(X), dtype=torch.float64))
                break
            except RuntimeError:
                jitter = 1e-8 if jitter == 0.0 else jitter * 10.0
        self._Xd, self._yd = X, y
        self._alpha = torch.cholesky_solve((y - self.mean).unsqueeze(-1), self._L).squeeze(-1)

    def condition_on_pending(self, X_pending: np.ndarray) -> None:
        """Add points observed at the posterior mean (kriging believer); hyperparameters stay."""
        if len(X_pending) == 0:
            return
        Xp = torch.as_tensor(X_pending, dtype=torch.float64)
        with torch.no_grad():
            mu, _ = self.posterior(Xp)
        self._set_data(torch.cat([self._Xd, Xp]), torch.cat([self._yd, mu]))

    @property
    def lengthscales(self) -> np.ndarray:
        """Fitted length scales, one per input dimension."""
        return np.exp(self.raw[: self.X.shape[1]])

    def posterior(self, Xq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance of the latent function at ``Xq`` (shape (m, D))."""
        Ks = self.s2 * _Matern52.apply(_sq_dist(Xq, self._Xd, self.inv_ls2))
        mu = Ks @ self._alpha + self.mean
        v = torch.linalg.solve_triangular(self._L, Ks.T, upper=False)
        var = (self.s2 - (v * v).sum(0)).clamp_min(1e-12)
        return mu, var


# -- the acquisition function ---------------------------------------------------------------

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_SQRT_PI_OVER_2 = 0.5 * math.log(math.pi / 2.0)


def _log_h(z: torch.Tensor) -> torch.Tensor:
    """``log(phi(z) + z * Phi(z))``, accurate for very negative ``z`` (Ament et al. 2023, eq. 9)."""
    z_hi = torch.where(z > -1.0, z, torch.zeros_like(z))
    hi = torch.log(
        torch.exp(-0.5 * z_hi**2 - _LOG_SQRT_2PI) + z_hi * torch.special.ndtr(z_hi)
    )
    z_lo = torch.where(z > -1.0, -torch.ones_like(z), z)
    t = torch.log(torch.special.erfcx(-z_lo / math.sqrt(2.0)) * z_lo.abs()) + _LOG_SQRT_PI_OVER_2
    # log1mexp(t) for t < 0
    log1mexp = torch.where(
        t > -math.log(2.0), torch.log(-torch.expm1(t)), torch.log1p(-torch.exp(t))
    )
    lo = -0.5 * z_lo**2 - _LOG_SQRT_2PI + log1mexp
    return torch.where(z > -1.0, hi, lo)


def log_expected_improvement(
    mean: torch.Tensor, var: torch.Tensor, best: float
) -> torch.Tensor:
    """Log expected improvement over ``best`` (maximization) of a Gaussian posterior.

    Parameters
    ----------
    mean, var : torch.Tensor
        Posterior mean and variance at the candidates.
    best : float
        The incumbent value.

    Returns
    -------
    torch.Tensor
        ``log E[max(f - best, 0)]``, finite even where the improvement is vanishingly
        unlikely (so the optimizer still has a gradient there).
    """
    sigma = var.sqrt()
    return _log_h((mean - best) / sigma) + torch.log(sigma)


# -- the sampler ------------------------------------------------------------------------------


def _yeo_johnson(v: np.ndarray) -> np.ndarray:
    """Standardized, Yeo-Johnson-transformed values (lambda by maximum likelihood), for minimization."""
    from scipy.stats import yeojohnson

    z = (v - v.mean()) / max(v.std(), 1e-12)
    if np.ptp(z) > 0:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                t, _ = yeojohnson(z)
            if np.all(np.isfinite(t)) and np.ptp(t) > 0:
                z = t
        except (ValueError, FloatingPointError):  # degenerate: keep the standardized values
            pass
    return (z - z.mean()) / max(z.std(), 1e-12)


def _log_warp(v: np.ndarray) -> np.ndarray:
    """``log(v - min + (median - min))``, standardized: heavy upper tails compressed, the best half kept."""
    lo = float(v.min())
    delta = float(np.median(v)) - lo
    if not delta > 0:
        delta = float(np.ptp(v)) or 1.0
    z = np.log(v - lo + delta)
    return (z - z.mean()) / max(z.std(), 1e-12)


class GPBOSampler(BaseSampler):
    """Gaussian-process Bayesian optimization of one objective, over any :class:`SearchSpace`.

    See the module docstring for the model, the acquisition and how parallel workers
    share a study.

    Parameters
    ----------
    space : SearchSpace
        The space the study's objective suggests from.
    seed : int or None, default=None
        Seeds the Sobol design and the acquisition search (with the trial number).
    n_startup_trials : int or None, default=None
        Trials from the Sobol design before the model is used;
        ``min(10, max(5, D + 1))`` for ``D`` encoded dimensions when None.
    trust_region : bool or None, default=None
        Search only a box around the best point whose side grows after improvements and
        shrinks after failures (TuRBO-1). None: when the space has at least
        ``trust_region_min_dim`` encoded dimensions.
    trust_region_min_dim : int, default=8
    max_gp_trials : int, default=300
        Finished trials after which TPE takes over (the model's cost grows with the cube
        of the trials).
    n_candidates : int, default=1024
        Random candidates scored per proposal (as many again are perturbations of the
        best points).
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int | None = None,
        n_startup_trials: int | None = None,
        trust_region: bool | None = None,
        trust_region_min_dim: int = 8,
        max_gp_trials: int = 300,
        n_candidates: int = 1024,
    ) -> None:
        if not isinstance(space, SearchSpace):
            raise TypeError(f"space must be a SearchSpace; got {type(space).__name__}.")
        self.space = space
        self.encoder = SpaceEncoder(space)
        d = self.encoder.dim
        self.n_startup_trials = (
            min(10, max(5, d + 1)) if n_startup_trials is None else int(n_startup_trials)
        )
        if self.n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be at least 1; got {n_startup_trials}.")
        self.trust_region = (d >= trust_region_min_dim) if trust_region is None else bool(trust_region)
        self.max_gp_trials = int(max_gp_trials)
        self.n_candidates = int(n_candidates)
        self._seed = seed
        self._base_seed = (
            int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        )
        self._random = RandomSampler(seed=seed)
        self._tpe: _BaseSampler | None = None
        self._gp_init: np.ndarray | None = None
        self._mode: dict[int, str] = {}  # trial id -> "gp" or "tpe", fixed when the trial starts

    # -- Optuna's sampler interface ------------------------------------------------------
    def reseed_rng(self) -> None:
        self._base_seed = int(np.random.SeedSequence().entropy % (2**31))
        self._random.reseed_rng()
        if self._tpe is not None:
            self._tpe.reseed_rng()

    def _tpe_sampler(self) -> _BaseSampler:
        if self._tpe is None:
            from optuna.exceptions import ExperimentalWarning
            from optuna.samplers import TPESampler

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                self._tpe = TPESampler(
                    seed=self._seed, multivariate=True, group=True, constant_liar=True
                )
        return self._tpe

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if len(study.directions) > 1:
            raise ValueError(
                "GPBOSampler optimizes one objective; the 'auto' strategy uses TPE for several."
            )
        n_done = len(study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True))
        if n_done >= self.max_gp_trials:
            self._mode[trial._trial_id] = "tpe"
            return self._tpe_sampler().infer_relative_search_space(study, trial)
        self._mode[trial._trial_id] = "gp"
        seen = _last_distributions(study)
        out: dict[str, BaseDistribution] = {}
        for col in self.encoder.columns:
            dist = self.space[col.name].distribution()
            old = seen.get(col.name)
            if old is not None and not _compatible(old, dist):
                continue  # the study's objective uses another kind of parameter: sample it independently
            out[col.name] = dist
        return out

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        if self._mode.get(trial._trial_id) == "tpe":
            return self._tpe_sampler().sample_relative(study, trial, search_space)
        if not search_space:
            return {}
        x = self._propose(study, trial)
        params = self.encoder.decode(x)
        text = json.dumps([round(float(v), 6) for v in x])
        if len(text) <= _MAX_ATTR_CHARS:
            study._storage.set_trial_system_attr(trial._trial_id, PROPOSAL_KEY, text)
        return {k: v for k, v in params.items() if k in search_space}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if self._mode.get(trial._trial_id) == "tpe":
            return self._tpe_sampler().sample_independent(study, trial, param_name, param_distribution)
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if len(study.directions) > 1:  # refuse at ask(), before any parameter is drawn
            raise ValueError(
                "GPBOSampler optimizes one objective; the 'auto' strategy uses TPE for several."
            )
        if self._tpe is not None:
            self._tpe.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        if self._mode.pop(trial._trial_id, None) == "tpe" and self._tpe is not None:
            self._tpe.after_trial(study, trial, state, values)

    # -- the proposal ------------------------------------------------------------------------
    def _observations(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encoded finished trials, their values to minimize, and encoded pending trials."""
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        trials = study._get_trials(
            deepcopy=False,
            states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING),
            use_cache=False,
        )
        X, v, pruned, pending = [], [], [], []
        for t in trials:
            if t.number == trial.number:
                continue
            if t.state == TrialState.COMPLETE and t.value is not None:
                X.append(self.encoder.encode(t.params))
                v.append(sign * float(t.value))
            elif t.state == TrialState.PRUNED:
                pruned.append(self.encoder.encode(t.params))
            elif t.state == TrialState.RUNNING:
                pending.append(self._pending_point(t))
        values = np.asarray(v, dtype=float)
        self._n_complete = len(values)
        if len(values):
            finite = np.isfinite(values)
            if not finite.all():  # inf: clip to the finite range
                lo = values[finite].min() if finite.any() else 0.0
                hi = values[finite].max() if finite.any() else 0.0
                values = np.clip(np.nan_to_num(values, nan=hi, posinf=hi, neginf=lo), lo, hi)
        if pruned and len(values):  # pruned for being worse than their peers: the worst value seen
            X.extend(pruned)
            values = np.concatenate([values, np.full(len(pruned), values.max())])
        return (
            np.asarray(X, dtype=float).reshape(-1, self.encoder.dim),
            values,
            np.asarray(pending, dtype=float).reshape(-1, self.encoder.dim),
        )

    def _pending_point(self, t: FrozenTrial) -> np.ndarray:
        text = t.system_attrs.get(PROPOSAL_KEY)
        if text is not None:
            try:
                x = np.asarray(json.loads(text), dtype=float)
                if x.shape == (self.encoder.dim,):
                    return x
            except (ValueError, TypeError):
                pass
        return self.encoder.encode(t.params)

    def _propose(self, study: optuna.Study, trial: FrozenTrial) -> np.ndarray:
        rng = np.random.default_rng([self._base_seed, trial.number])
        X, v, pending = self._observations(study, trial)
        n_complete = len(v)
        n_done = self._n_complete
        if n_complete < self.n_startup_trials:
            # Sobol design: the trial number picks the point, so workers share one design
            k = min(trial.number, 4096 - 1)
            design = self.encoder.snap(self.encoder.sobol(self._base_seed, k + 1))
            return design[k]
        if _WARP == "logmed":
            y = -_log_warp(v)
        elif _WARP:
            y = -_yeo_johnson(v)  # the model maximizes
        else:
            y = -(v - v.mean()) / max(v.std(), 1e-12)
        with _single_thread():
            gp = GaussianProcess(X, y, init=self._gp_init)
            self._gp_init = gp.raw
            best_i = int(np.argmax(y))
            incumbent = X[best_i]
            best = float(y.max())
            gp.condition_on_pending(pending)
            box = self._trust_box(v, gp, incumbent) if self.trust_region else None
            exclude = None
            if not self.trust_region and _STALL > 0:
                streak = _stall_streak(v[:n_done])
                if streak >= _STALL and (streak - _STALL) % _EVERY == 0:
                    exclude = (incumbent, _RADIUS)
            x = self._maximize(gp, best, X, y, rng, box, np.concatenate([X, pending]), exclude)
        return x

    def _trust_box(
        self, v: np.ndarray, gp: GaussianProcess, center: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """TuRBO-1's box: side length replayed from the trial history, stretched by the length scales."""
        d = self.encoder.dim
        length, lo_len, hi_len = 0.8, 0.5**7, 1.6
        succ_tol, fail_tol = 3, max(4, d)
        n_succ = n_fail = 0
        best = v[: self.n_startup_trials].min() if len(v) else math.inf
        for val in v[self.n_startup_trials :]:
            if val < best - 1e-3 * abs(best):
                n_succ, n_fail = n_succ + 1, 0
            else:
                n_succ, n_fail = 0, n_fail + 1
            best = min(best, val)
            if n_succ == succ_tol:
                length, n_succ = min(2.0 * length, hi_len), 0
            elif n_fail == fail_tol:
                length, n_fail = length / 2.0, 0
            if length < lo_len:  # TuRBO restarts here; we widen again around the incumbent
                length = 0.8
        ls = gp.lengthscales
        w = ls / np.exp(np.mean(np.log(ls)))
        half = 0.5 * length * w
        return np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)

    def _maximize(
        self,
        gp: GaussianProcess,
        best: float,
        X: np.ndarray,
        y: np.ndarray,
        rng: np.random.Generator,
        box: tuple[np.ndarray, np.ndarray] | None,
        seen: np.ndarray,
        exclude: tuple[np.ndarray, float] | None = None,
    ) -> np.ndarray:
        enc = self.encoder
        d = enc.dim
        lo, hi = (np.zeros(d), np.ones(d)) if box is None else box
        # 1. candidates: uniform in the box, and perturbations of the best points
        uni = enc.sample(rng, self.n_candidates)
        uni[:, enc.numeric] = lo[enc.numeric] + uni[:, enc.numeric] * (hi - lo)[enc.numeric]
        top = X[np.argsort(-y)[: min(5, len(y))]]
        n_local = self.n_candidates
        parents = top[rng.integers(len(top), size=n_local)]
        scales = np.array([0.2, 0.05, 0.01])[rng.integers(3, size=n_local)]
        local = parents.copy()
        prob = min(1.0, 20.0 / d)
        mask = rng.random((n_local, d)) < prob
        mask[np.arange(n_local), rng.integers(d, size=n_local)] = True
        step = rng.normal(size=(n_local, d)) * scales[:, None]
        num = enc.numeric[None, :] & mask
        local[num] = (local + step)[num]
        # categoricals of the perturbed points: resample a chosen block with small probability
        for col in enc.columns:
            if col.kind == "onehot":
                flip = mask[:, col.start] & (rng.random(n_local) < 0.5)
                if flip.any():
                    block = np.zeros((int(flip.sum()), col.width))
                    block[np.arange(len(block)), rng.integers(col.width, size=len(block))] = 1.0
                    local[flip, col.start : col.start + col.width] = block
        local = np.clip(local, lo, hi) if box is not None else np.clip(local, 0.0, 1.0)
        cand = enc.snap(np.concatenate([uni, local]))
        acq = self._acq(gp, cand, best)
        if exclude is not None:
            ls = gp.lengthscales
            floor = float(np.quantile(y, _MEANQ))

            def far(C: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    mu, _ = gp.posterior(torch.from_numpy(C))
                return ((((C - exclude[0]) / ls) ** 2).sum(1) >= exclude[1] ** 2) & (mu.numpy() >= floor)

            acq = np.where(far(cand), acq, -np.inf)
        # 2. L-BFGS-B from the best few candidates, on the numeric columns
        order = np.argsort(-acq)
        starts = cand[order[:5]][np.isfinite(acq[order[:5]])]
        refined = self._refine(gp, starts, best, lo, hi)
        if len(refined):
            refined = enc.snap(refined)
            racq = self._acq(gp, refined, best)
            if exclude is not None:
                racq = np.where(far(refined), racq, -np.inf)
            cand = np.concatenate([cand, refined])
            acq = np.concatenate([acq, racq])
        # 3. the best candidate that is not a point already tried
        for i in np.argsort(-acq):
            if np.isfinite(acq[i]) and not _is_seen(cand[i], seen):
                return cand[i]
        return enc.snap(enc.sample(rng, 1))[0]  # a tiny space, all of it tried

    @staticmethod
    def _acq(gp: GaussianProcess, cand: np.ndarray, best: float) -> np.ndarray:
        with torch.no_grad():
            mu, var = gp.posterior(torch.from_numpy(cand))
            return log_expected_improvement(mu, var, best).numpy()

    def _refine(
        self, gp: GaussianProcess, starts: np.ndarray, best: float, lo: np.ndarray, hi: np.ndarray
    ) -> np.ndarray:
        from scipy.optimize import minimize

        num = self.encoder.numeric
        if not num.any() or len(starts) == 0:
            return np.empty((0, self.encoder.dim))
        fixed = torch.from_numpy(starts.copy())
        k, m = len(starts), int(num.sum())
        num_t = torch.from_numpy(num)

        def f(z: np.ndarray) -> tuple[float, np.ndarray]:
            t = torch.from_numpy(z.reshape(k, m)).requires_grad_(True)
            full = fixed.clone()
            full[:, num_t] = t
            mu, var = gp.posterior(full)
            loss = -log_expected_improvement(mu, var, best).sum()
            loss.backward()
            return float(loss.detach()), np.nan_to_num(t.grad.numpy().ravel())  # type: ignore[union-attr]

        bounds = [(float(lo[j]), float(hi[j])) for j in np.flatnonzero(num)] * k
        res = minimize(
            f, starts[:, num].ravel(), jac=True, method="L-BFGS-B", bounds=bounds,
            options={"maxiter": 100},
        )
        out = starts.copy()
        out[:, num] = res.x.reshape(k, m)
        return out


def _stall_streak(v: np.ndarray) -> int:
    """Trials since the best value last improved by at least 1% of (median - best)."""
    if len(v) < 2:
        return 0
    tol = 0.01 * max(float(np.median(v) - v.min()), 1e-12)
    best, streak = v[0], 0
    for val in v[1:]:
        if val < best - tol:
            streak = 0
        else:
            streak += 1
        best = min(best, val)
    return streak


def _is_seen(x: np.ndarray, seen: np.ndarray) -> bool:
    return bool(len(seen)) and bool(np.any(np.all(np.abs(seen - x) < 1e-9, axis=1)))


def _last_distributions(study: optuna.Study) -> dict[str, BaseDistribution]:
    trials = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,), use_cache=True)
    return dict(trials[-1].distributions) if trials else {}


def _compatible(old: BaseDistribution, new: BaseDistribution) -> bool:
    if type(old) is not type(new):
        return False
    if isinstance(old, (FloatDistribution, IntDistribution)):
        return old.log == new.log  # type: ignore[union-attr]
    if isinstance(old, CategoricalDistribution):
        return tuple(old.choices) == tuple(new.choices)  # type: ignore[union-attr]
    return True


class _single_thread:
    """Run torch and BLAS on one thread inside the block.

    The matrices are small, so threads only add overhead; worse, OpenBLAS threads
    (which SciPy's L-BFGS-B uses since SciPy 1.15) spin against torch's OpenMP threads
    and made each optimizer step 100x slower here.
    """

    def __enter__(self) -> None:
        from threadpoolctl import threadpool_limits

        self._n = torch.get_num_threads()
        if self._n != 1:
            torch.set_num_threads(1)
        self._limits = threadpool_limits(limits=1)

    def __exit__(self, *exc: object) -> None:
        self._limits.restore_original_limits()
        if self._n != 1:
            torch.set_num_threads(self._n)


# -- the strategy ---------------------------------------------------------------------------------


@_register("auto")
class AutoSearch(BaseSearchStrategy):
    """The default strategy: GP Bayesian optimization where it pays, TPE elsewhere.

    See :mod:`modelyard.search._auto` for the model and the reasons. The sampler is
    :class:`GPBOSampler` (with a trust region on spaces of ``trust_region_min_dim`` or
    more encoded dimensions, and TPE after ``max_gp_trials`` finished trials) for one
    objective over a space without conditional parameters; Optuna's multivariate TPE
    (grouped by the parameters that occur together) for a conditional space
    (``conditional="tpe"``) or several objectives.

    Why TPE for conditional spaces: on the tabular MLP space (depth with conditional
    widths, numeric embedding with a conditional frequency scale, learning rate, batch
    size, weight decay) on Adult, the Gaussian process found worse models than TPE and
    than random search after 25 and 50 trials (median regret 0.0061 against TPE's 0.0031
    and random's 0.0052 at 50 trials, 3 seeds; ``bench/search/sample_efficiency.py``),
    while it beat every Optuna sampler on Branin, Hartmann-6 and Rosenbrock-10D. TPE was
    built for such tree-structured spaces (Bergstra et al. 2011).

    Parameters
    ----------
    n_startup_trials : int or None, default=None
        Sobol trials before the model is used (``min(10, max(5, D + 1))`` when None).
    trust_region_min_dim : int, default=8
    max_gp_trials : int, default=300
    conditional : {"tpe", "gp"}, default="tpe"
        The sampler of a space with conditional parameters.
    """

    def __init__(
        self,
        *,
        n_startup_trials: int | None = None,
        trust_region_min_dim: int = 8,
        max_gp_trials: int = 300,
        conditional: str = "tpe",
    ) -> None:
        if conditional not in ("tpe", "gp"):
            raise ValueError(f"conditional must be 'tpe' or 'gp'; got {conditional!r}.")
        self.n_startup_trials = n_startup_trials
        self.trust_region_min_dim = trust_region_min_dim
        self.max_gp_trials = max_gp_trials
        self.conditional = conditional

    def make_sampler(
        self, space: SearchSpace, seed: int | None, n_objectives: int
    ) -> BaseSampler:
        is_conditional = any(space[name].when for name in space.names)
        if n_objectives > 1 or (is_conditional and self.conditional == "tpe"):
            from optuna.exceptions import ExperimentalWarning
            from optuna.samplers import TPESampler

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
        return GPBOSampler(
            space,
            seed=seed,
            n_startup_trials=self.n_startup_trials,
            trust_region_min_dim=self.trust_region_min_dim,
            max_gp_trials=self.max_gp_trials,
        )
