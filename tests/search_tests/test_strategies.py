"""Strategies: every registered one runs; evolution's aging/tournament logic; NSGA-II's front is non-dominated."""

from __future__ import annotations

import importlib.util
import statistics

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from modelyard.errors import SpecError
from modelyard.search import SEARCH_STRATEGIES, Float, SearchSpace, resolve_strategy
from modelyard.search._evolution import (
    MUTATED_KEY,
    PARENT_KEY,
    RegularizedEvolutionSampler,
    mutate,
    population,
    tournament,
)

SPACE = SearchSpace({"x": Float(-5.0, 5.0), "y": Float(-5.0, 5.0)})


def sphere(trial: optuna.Trial) -> float:
    p = SPACE.suggest(trial)
    return (p["x"] - 1.0) ** 2 + (p["y"] + 2.0) ** 2


@pytest.mark.parametrize("name", ["random", "tpe", "gp", "cmaes", "evolution", "rl"])
def test_each_single_objective_strategy_runs(name: str) -> None:
    if name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        with pytest.raises(ImportError, match=r"pip install cmaes"):
            resolve_strategy(name).make_sampler(SPACE, 0, 1)
        return
    strategy = resolve_strategy(name)
    study = optuna.create_study(sampler=strategy.make_sampler(SPACE, 0, 1))
    study.optimize(sphere, n_trials=12)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 12
    assert study.best_value < 25.0


def test_unknown_strategy_lists_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        resolve_strategy("bayes")
    assert (
        str(err.value)
        == f"Unknown search strategy 'bayes'. Known: {SEARCH_STRATEGIES.names()}."
    )
    assert {"random", "tpe", "gp", "cmaes", "nsga2", "evolution"} <= set(
        SEARCH_STRATEGIES.names()
    )


def test_single_objective_strategy_rejects_two_objectives() -> None:
    with pytest.raises(
        SpecError,
        match=r"^Strategy 'evolution' optimizes at most 1 objective\(s\); got 2 \(accuracy, n_params\)",
    ):
        resolve_strategy("evolution").check(2, ("accuracy", "n_params"))


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def test_nsga2_front_is_non_dominated() -> None:
    study = optuna.create_study(
        directions=["minimize", "minimize"],
        sampler=resolve_strategy("nsga2").make_sampler(SPACE, 0, 2),
    )

    def two(trial: optuna.Trial) -> tuple[float, float]:
        p = SPACE.suggest(trial)
        return p["x"] ** 2 + p["y"] ** 2, (p["x"] - 2) ** 2 + p["y"] ** 2

    study.optimize(two, n_trials=40)
    front = [tuple(t.values) for t in study.best_trials]
    done = [tuple(t.values) for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert front
    for f in front:  # checked directly: nothing completed dominates a front member
        assert not any(_dominates(o, f) for o in done)
    for o in done:  # and every completed trial off the front is dominated by one on it
        if o not in front:
            assert any(_dominates(f, o) for f in front)


# -- regularized evolution ------------------------------------------------------------------
def _trial(number: int, value: float, x: float = 0.0) -> optuna.trial.FrozenTrial:
    t = create_trial(
        value=value, params={"x": x}, distributions={"x": FloatDistribution(-5, 5)}
    )
    t.number = number
    return t


def test_population_keeps_the_last_completed_trials() -> None:
    trials = [_trial(i, float(i)) for i in range(8)]
    trials[6] = create_trial(state=TrialState.FAIL)
    trials[6].number = 6
    members = population(list(reversed(trials)), 4)
    assert [t.number for t in members] == [
        3,
        4,
        5,
        7,
    ]  # oldest first; 0-2 aged out; the FAIL is skipped


def test_tournament_picks_the_best_of_the_sample() -> None:
    members = [_trial(i, v) for i, v in enumerate([5.0, 1.0, 3.0, 0.5])]
    rng = np.random.RandomState(0)
    # a sample as large as the population always returns the overall best
    assert tournament(members, 4, rng, StudyDirection.MINIMIZE).number == 3
    assert tournament(members, 4, rng, StudyDirection.MAXIMIZE).number == 0
    # sample size 1 is a uniform draw: every member wins sometimes
    assert {
        tournament(members, 1, rng, StudyDirection.MINIMIZE).number for _ in range(200)
    } == {0, 1, 2, 3}


def test_mutate_stays_in_bounds_and_changes_categoricals() -> None:
    rng = np.random.RandomState(0)
    d = FloatDistribution(1e-4, 1e-1, log=True)
    assert all(1e-4 <= mutate(1e-3, d, rng) <= 1e-1 for _ in range(200))
    c = optuna.distributions.CategoricalDistribution(["a", "b", "c"])
    assert all(mutate("a", c, rng) in ("b", "c") for _ in range(50))


def test_child_copies_parent_but_one_param() -> None:
    space = SearchSpace(
        {"x": Float(-5.0, 5.0), "y": Float(-5.0, 5.0), "z": Float(-5.0, 5.0)}
    )
    sampler = RegularizedEvolutionSampler(population_size=5, sample_size=2, seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: sum(v * v for v in space.suggest(t).values()), n_trials=30)
    children = [t for t in study.trials if PARENT_KEY in t.system_attrs]
    assert len(children) == 25  # the first 5 trials fill the population at random
    for child in children:
        parent = study.trials[child.system_attrs[PARENT_KEY]]
        same = [k for k in child.params if child.params[k] == parent.params[k]]
        assert len(same) >= 2 and child.system_attrs[MUTATED_KEY] in child.params
        assert parent.number < child.number


def test_evolution_is_not_worse_than_random_on_a_simple_function() -> None:
    """Median best value over 5 seeds, 60 trials, 4-D sphere: evolution <= random."""
    space = SearchSpace({f"x{i}": Float(-5.0, 5.0) for i in range(4)})

    def f(trial: optuna.Trial) -> float:
        return sum((v - 1.0) ** 2 for v in space.suggest(trial).values())

    def best(name: str, seed: int) -> float:
        study = optuna.create_study(
            sampler=resolve_strategy(name).make_sampler(space, seed, 1)
        )
        study.optimize(f, n_trials=60)
        return study.best_value

    evo = statistics.median(best("evolution", s) for s in range(5))
    rnd = statistics.median(best("random", s) for s in range(5))
    assert evo <= rnd, (evo, rnd)
