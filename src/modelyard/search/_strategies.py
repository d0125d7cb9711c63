"""Search strategies: one interface, one registry.

A strategy makes an Optuna sampler for a space, a seed and a number of objectives.
Optuna's samplers (random, TPE, GP, CMA-ES, NSGA-II) and our own (``evolution``) are
registered in :data:`SEARCH_STRATEGIES`, so YAML specs and the CLI name them; the
Python API also takes a strategy instance.

To add a strategy, subclass :class:`BaseSearchStrategy` and register it::

    @SEARCH_STRATEGIES.register("rl")
    class RLSearch(BaseSearchStrategy):
        def make_sampler(self, space, seed, n_objectives): ...
"""

from __future__ import annotations

import importlib.util
import warnings
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from modelyard._registry import Registry
from modelyard.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    from optuna.samplers import BaseSampler

    from modelyard.search._space import SearchSpace

__all__ = [
    "SEARCH_STRATEGIES",
    "BaseSearchStrategy",
    "CmaEsSearch",
    "EvolutionSearch",
    "GPSearch",
    "NSGA2Search",
    "RLSearch",
    "RandomSearch",
    "TPESearch",
    "resolve_strategy",
]

TOO_MANY_OBJECTIVES = (
    "Strategy {name!r} optimizes at most {most} objective(s); got {n} ({objectives}). "
    "Use one of {multi} for several objectives."
)


class BaseSearchStrategy(ABC):
    """A search strategy: makes the Optuna sampler that proposes each trial's parameters.

    Attributes
    ----------
    name : str
        The registered name (for messages).
    max_objectives : int or None
        Most objectives the strategy handles; None for any number.
    """

    name: str = "?"
    max_objectives: int | None = None

    @abstractmethod
    def make_sampler(
        self, space: SearchSpace, seed: int | None, n_objectives: int
    ) -> BaseSampler:
        """Return a fresh sampler.

        Parameters
        ----------
        space : SearchSpace
            The space the study searches (a sampler may use it, e.g. for an initial point).
        seed : int or None
            Seeds the sampler. Workers sharing a study get distinct seeds.
        n_objectives : int
            Number of objectives of the study.
        """

    def check(self, n_objectives: int, objectives: tuple[str, ...] = ()) -> None:
        """Raise :class:`SpecError` if the strategy cannot optimize ``n_objectives`` objectives."""
        if self.max_objectives is not None and n_objectives > self.max_objectives:
            multi = [
                n
                for n in SEARCH_STRATEGIES.names()
                if SEARCH_STRATEGIES.get(n).max_objectives is None
            ]
            raise SpecError(
                TOO_MANY_OBJECTIVES.format(
                    name=self.name,
                    most=self.max_objectives,
                    n=n_objectives,
                    objectives=", ".join(objectives),
                    multi=multi,
                )
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


#: Name -> strategy class. The RL controller (``rl``) is registered beside the others by
#: :mod:`modelyard.search` when its module is present.
SEARCH_STRATEGIES: Registry[type[BaseSearchStrategy]] = Registry(
    "search strategy", BaseSearchStrategy
)


def _register(name: str):  # type: ignore[no-untyped-def]
    def decorator(cls: type[BaseSearchStrategy]) -> type[BaseSearchStrategy]:
        cls.name = name
        return SEARCH_STRATEGIES.register(name)(cls)

    return decorator


@_register("random")
class RandomSearch(BaseSearchStrategy):
    """Independent uniform sampling (Optuna's ``RandomSampler``); the baseline every strategy must beat."""

    def make_sampler(
        self, space: SearchSpace, seed: int | None, n_objectives: int
    ) -> BaseSampler:
        from optuna.samplers import RandomSampler

        return RandomSampler(seed=seed)


@_register("tpe")
class TPESearch(BaseSearchStrategy):
    """Tree-structured Parzen estimator (Optuna's ``TPESampler``), multivariate.

    Parameters
    ----------
    n_startup_trials : int, default=10
        Random trials before the model is used.
    multivariate : bool, default=True
        Model parameters jointly (better on correlated spaces, Falkner et al. 2018).
    """

    def __init__(
        self, *, n_startup_trials: int = 10, multivariate: bool = True
    ) -> None:
        self.n_startup_trials = n_startup_trials
        self.multivariate = multivariate

    def make_sampler(
        self, space: SearchSpace, seed: int | None, n_objectives: int
    ) -> BaseSampler:
        from optuna.exceptions import ExperimentalWarning
        from optuna.samplers import TPESampler

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return TPESampler(
                seed=seed,
                n_startup_trials=self.n_startup_trials,
                multivariate=self.multivariate,
                group=self.multivariate,
                constant_liar=True,  # parallel workers avoid proposing the same point twice
            )


@_register("gp")
class GPSearch(BaseSearchStrategy):
    """Gaussian-process Bayesian optimization (Optuna's ``GPSampler``: Matern-5/2 kernel, log expected improvement).

    Install ``greenlet`` for about 2x faster acquisition optimization.

    Parameters
    ----------
    n_startup_trials : int, default=10
    """

    def __init__(self, *, n_startup_trials: int = 10) -> None:
        self.n_startup_trials = n_startup_trials

    def make_sampler(
        self, space: SearchSpace, seed: int | None, n_objectives: int
    ) -> BaseSampler:
        from optuna.samplers import GPSampler

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return GPSampler(
                seed=seed,
                n_startup_trials=self.n_startup_trials,
                warn_independent_sampling=False,
            )


@_register("cmaes")
class CmaEsSearch(BaseSearchStrategy):
    """CMA-ES (Optuna's ``CmaEsSampler``; needs the ``cmaes`` package). Categorical parameters are sampled at random."""

    max_objectives = 1

    def make_sampler(
        self, space: SearchSpace, seed: int | None, n_objectives: int
    ) -> BaseSampler:
        if importlib.util.find_spec("cmaes") is None:
            raise ImportError(
                "Strategy 'cmaes' needs the cmaes package; install it with `pip install cmaes`."
            )
        from optuna.samplers import CmaEsSampler

        return CmaEsSampler(seed=seed, warn_independent_sampling=False)


@_register("nsga2")
class NSGA2Search(BaseSearchStrategy):
    """NSGA-II (Optuna's ``NSGAIISampler``) for several objectives: a Pareto front, not one best point.

    Parameters
    ----------
    population_size : int, default=20
    """

    def __init__(self, *, population_size: int = 20) -> None:
        self.population_size = population_size

    def make_sampler(
        self, space: SearchSpace, seed: int | None, n_objectives: int
    ) -> BaseSampler:
        from optuna.samplers import NSGAIISampler

        return NSGAIISampler(seed=seed, population_size=self.population_size)


@_register("evolution")
class EvolutionSearch(BaseSearchStrategy):
    """Regularized (aging) evolution, our own sampler (:class:`RegularizedEvolutionSampler`).

    Parameters
    ----------
    population_size : int, default=20
    sample_size : int, default=5
    """

    max_objectives = 1

    def __init__(self, *, population_size: int = 20, sample_size: int = 5) -> None:
        self.population_size = population_size
        self.sample_size = sample_size

    def make_sampler(
        self, space: SearchSpace, seed: int | None, n_objectives: int
    ) -> BaseSampler:
        from modelyard.search._evolution import RegularizedEvolutionSampler

        return RegularizedEvolutionSampler(
            population_size=self.population_size,
            sample_size=self.sample_size,
            seed=seed,
        )


@_register("rl")
class RLSearch(BaseSearchStrategy):
    """Reinforcement-learning controller (Zoph & Le, 1611.01578): :class:`RLControllerSampler`.

    Parameters
    ----------
    n_bins : int, default=8
        Bins a numeric range is split into; the controller picks a bin, the value is drawn inside it.
    learning_rate : float, default=0.01
    baseline_decay : float, default=0.8
        Decay of the moving-average reward baseline.
    """

    max_objectives = 1

    def __init__(self, *, n_bins: int = 8, learning_rate: float = 0.01, baseline_decay: float = 0.8) -> None:
        self.n_bins = n_bins
        self.learning_rate = learning_rate
        self.baseline_decay = baseline_decay

    def make_sampler(
        self, space: SearchSpace, seed: int | None, n_objectives: int
    ) -> BaseSampler:
        from modelyard.search._rl import RLControllerSampler

        return RLControllerSampler(
            n_bins=self.n_bins, learning_rate=self.learning_rate, baseline_decay=self.baseline_decay, seed=seed
        )


def resolve_strategy(
    strategy: str | BaseSearchStrategy, **kwargs: Any
) -> BaseSearchStrategy:
    """A strategy instance from a registered name (with ``kwargs``) or an instance.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known ones.
    """
    if isinstance(strategy, BaseSearchStrategy):
        return strategy
    if not isinstance(strategy, str):
        raise TypeError(
            f"strategy must be a name or a BaseSearchStrategy; got {type(strategy).__name__}."
        )
    instance = SEARCH_STRATEGIES.get(strategy)(**kwargs)
    instance.name = strategy
    return instance
