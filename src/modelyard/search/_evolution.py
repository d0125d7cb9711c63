"""Regularized (aging) evolution as an Optuna sampler.

Real, Aggarwal, Huang and Le, "Regularized Evolution for Image Classifier Architecture
Search", AAAI 2019 (arXiv 1802.01548). The population is the last ``P`` completed
trials of the study (by trial number, so the oldest member ages out as a new one
arrives); a child copies the winner of a tournament among ``S`` members drawn at random
and mutates one of its parameters. Until the population has ``P`` members, children are
sampled at random.

Keeping the population in the study, not in the sampler, makes the algorithm stateless
between trials: it works with every Optuna storage and with any number of workers
sharing one study (each worker's sampler reads the same population).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = ["RegularizedEvolutionSampler", "mutate", "population", "tournament"]

PARENT_KEY = "evolution:parent"
MUTATED_KEY = "evolution:mutated"


def population(trials: Sequence[FrozenTrial], size: int) -> list[FrozenTrial]:
    """The last ``size`` completed trials by trial number (aging: the oldest leave first).

    Parameters
    ----------
    trials : sequence of FrozenTrial
        Trials of the study, in any order and any state.
    size : int

    Returns
    -------
    list of FrozenTrial
        At most ``size`` trials, oldest first.
    """
    done = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number
    )
    return done[-size:] if size > 0 else []


def tournament(
    members: Sequence[FrozenTrial],
    sample_size: int,
    rng: np.random.RandomState,
    direction: StudyDirection,
) -> FrozenTrial:
    """The best of ``sample_size`` members drawn at random without replacement.

    Ties go to the older member (the first in ``members`` order).
    """
    k = min(sample_size, len(members))
    picked = sorted(rng.choice(len(members), size=k, replace=False))
    sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
    best = min(picked, key=lambda i: (sign * float(members[i].value), i))  # type: ignore[arg-type]
    return members[best]


def mutate(
    value: Any, dist: BaseDistribution, rng: np.random.RandomState, scale: float = 0.2
) -> Any:
    """A neighbour of ``value`` in ``dist``.

    Numbers move by a Gaussian step of ``scale`` times the range (on the log scale for
    log distributions), clipped to the bounds and snapped to the step; a categorical
    value is replaced by a different choice drawn uniformly.
    """
    if isinstance(dist, CategoricalDistribution):
        others = [c for c in dist.choices if c != value]
        return others[rng.randint(len(others))] if others else value
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        low, high = float(dist.low), float(dist.high)
        if dist.log:
            lo, hi, x = math.log(low), math.log(high), math.log(float(value))
        else:
            lo, hi, x = low, high, float(value)
        y = (
            float(np.clip(x + rng.normal(0.0, scale * (hi - lo)), lo, hi))
            if hi > lo
            else x
        )
        y = math.exp(y) if dist.log else y
        step = dist.step
        if step is not None:
            y = low + round((y - low) / step) * step
        y = min(max(y, low), high)
        return round(y) if isinstance(dist, IntDistribution) else y
    raise TypeError(f"Cannot mutate a parameter with distribution {dist!r}.")


def _inherits(parent: FrozenTrial, name: str, dist: BaseDistribution) -> bool:
    """Whether the parent's value of ``name`` is valid under ``dist`` (the space may have changed)."""
    if parent.distributions.get(name) != dist:
        return False
    try:
        return bool(dist._contains(dist.to_internal_repr(parent.params[name])))
    except (ValueError, TypeError):
        return False


class RegularizedEvolutionSampler(BaseSampler):
    """Regularized (aging) evolution for single-objective studies.

    Parameters
    ----------
    population_size : int, default=20
        ``P``: completed trials in the population (the paper uses 100 for NAS over
        20,000 models; 20 suits budgets of 50-200 trials).
    sample_size : int, default=5
        ``S``: members in each tournament.
    mutation_scale : float, default=0.2
        Gaussian step of a mutated number, as a fraction of its (log) range.
    seed : int or None, default=None

    References
    ----------
    .. [REAL] E. Real, A. Aggarwal, Y. Huang, Q. V. Le. Regularized Evolution for Image
       Classifier Architecture Search. AAAI 2019. https://arxiv.org/abs/1802.01548
    """

    def __init__(
        self,
        *,
        population_size: int = 20,
        sample_size: int = 5,
        mutation_scale: float = 0.2,
        seed: int | None = None,
    ) -> None:
        if population_size < 2:
            raise ValueError(
                f"population_size must be at least 2; got {population_size}."
            )
        if not 1 <= sample_size <= population_size:
            raise ValueError(
                f"sample_size must be in 1..population_size={population_size}; got {sample_size}."
            )
        self.population_size = population_size
        self.sample_size = sample_size
        self.mutation_scale = mutation_scale
        self._rng = np.random.RandomState(seed)
        self._random = RandomSampler(seed=seed)
        self._plans: dict[
            int, tuple[FrozenTrial, str]
        ] = {}  # trial id -> (parent, mutated param)

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if len(study.directions) > 1:
            raise ValueError(
                "The evolution strategy optimizes one objective; use nsga2 for several."
            )
        members = population(
            study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
            self.population_size,
        )
        if len(members) < self.population_size:
            return
        parent = tournament(members, self.sample_size, self._rng, study.direction)
        names = sorted(parent.params)
        mutated = names[self._rng.randint(len(names))]
        self._plans[trial._trial_id] = (parent, mutated)
        study._storage.set_trial_system_attr(trial._trial_id, PARENT_KEY, parent.number)
        study._storage.set_trial_system_attr(trial._trial_id, MUTATED_KEY, mutated)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        plan = self._plans.get(trial._trial_id)
        if plan is not None:
            parent, mutated = plan
            if param_name in parent.params:
                inherited = parent.params[param_name]
                if _inherits(parent, param_name, param_distribution):
                    if param_name == mutated:
                        return mutate(
                            inherited,
                            param_distribution,
                            self._rng,
                            self.mutation_scale,
                        )
                    return inherited
        # Random phase, or a parameter the parent did not have (a condition became true).
        return self._random.sample_independent(
            study, trial, param_name, param_distribution
        )

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._plans.pop(trial._trial_id, None)
