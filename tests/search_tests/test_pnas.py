"""Progressive NAS on a cheap synthetic objective whose best cell is known."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from modelyard.errors import SpecError
from modelyard.search._cells import Genotype, cell_space
from modelyard.search._pnas import Surrogate, encode_cell, pnas_search, spearman

VALUE = {
    "conv_5x5": 1.0,
    "conv_3x3": 0.8,
    "sep_conv_3x3": 0.6,
    "identity": 0.3,
    "avg_pool_3x3": 0.2,
    "max_pool_3x3": 0.1,
}


def score(g: Genotype) -> float:
    """Sum over blocks of the two operations' values, plus 0.3 per branch that reads h_{c-1}."""
    return sum(
        VALUE[b.op1] + VALUE[b.op2] + 0.3 * (b.input1 == 1) + 0.3 * (b.input2 == 1)
        for b in g.blocks
    )


# the unique maximum among 3-block cells: 7.8
BEST = Genotype([(1, "conv_5x5", 1, "conv_5x5")] * 3)


def test_best_cell_is_the_known_maximum() -> None:
    assert score(BEST) == pytest.approx(7.8)
    assert max(score(g) for g in Genotype.all_cells(2)) == pytest.approx(5.2)


def test_pnas_finds_the_best_cell_and_random_search_does_not() -> None:
    calls: list[Genotype] = []

    def evaluate(g: Genotype) -> float:
        calls.append(g)
        return score(g)

    result = pnas_search(evaluate, 3, beam=8, budget=100, seed=0)
    found = [r.index for r in result.history if r.genotype == BEST]
    assert found and found[0] <= 100
    assert result.best.genotype == BEST
    # never trains a cell twice
    assert len(calls) == len(result.history) == 100 and len(set(calls)) == 100

    space = cell_space(3)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    for _ in range(100):
        trial = study.ask()
        study.tell(trial, score(Genotype.from_params(space.suggest(trial))))
    # random search is far from it after as many evaluations
    assert study.best_value < score(BEST) - 1.0


def test_growth_one_block_at_a_time_and_budget() -> None:
    result = pnas_search(score, 3, beam=4, budget=23, initial=10, seed=1)
    h = result.history
    assert len(h) == 23 and [r.index for r in h] == list(range(1, 24))
    sizes = [r.n_blocks for r in h]
    # then rounds of 4 at the largest size (4 + 4 + 1)
    assert sizes == [1] * 10 + [2] * 4 + [3] * 9
    assert [r.round for r in h] == [0] * 10 + [1] * 4 + [2] * 4 + [3] * 4 + [4]
    trained = {r.genotype for r in h}
    for r in h:
        if r.n_blocks > 1:  # every larger cell extends a trained smaller one
            assert r.genotype.prefix(r.n_blocks - 1) in trained
            assert r.predicted is not None
    assert all(r.predicted is None for r in h[:10])


def test_budget_errors_and_small_budgets() -> None:
    with pytest.raises(SpecError, match="budget of at least 17"):
        pnas_search(score, 3, beam=8, budget=16)
    # every 1-block cell, then stop
    assert len(pnas_search(score, 1, beam=8, budget=200, seed=0).history) == 78
    with pytest.raises(SpecError, match="beam must be an integer >= 1"):
        pnas_search(score, 2, beam=0)


def test_surrogate_ranks_unseen_larger_cells() -> None:
    rng = np.random.default_rng(0)
    one = list(Genotype.all_cells(1))
    surrogate = Surrogate(seed=0).fit(one, [score(g) for g in one])
    two = [one[i] for i in rng.choice(len(one), 10, replace=False)]
    candidates = [c for g in two for c in g.expansions()]
    predicted = surrogate.predict(candidates)
    assert predicted.shape == (len(candidates),)
    assert spearman(predicted, [score(c) for c in candidates]) > 0.8


def test_encoding_and_spearman() -> None:
    g = Genotype([(1, "conv_3x3", 1, "conv_3x3"), (2, "identity", 0, "identity")])
    x = encode_cell(g)
    assert x[-1] == 2 and x[-2] == 0.5  # two blocks, one of them feeds the cell output
    # input kinds averaged over blocks: h_c-2, h_c-1, previous block, older
    assert x[:4].tolist() == [0.5, 1.0, 0.5, 0.0]
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
