"""Progressive neural architecture search (PNAS) over the cells of :mod:`._cells`.

Liu, Zoph, Neumann, Shlens, Hua, Li, Fei-Fei, Yuille, Huang & Murphy, "Progressive
Neural Architecture Search", ECCV 2018 (arXiv:1712.00559), Algorithm 1:

1. Train one-block cells (the paper trains all of them: 78 for the six operations here).
2. Fit a surrogate that predicts a cell's accuracy from its structure.
3. For ``b = 2 .. B``: expand every trained ``(b - 1)``-block cell by one block in every
   possible way, rank the expansions by the surrogate, train the top ``K`` (the beam),
   and refit the surrogate on everything trained so far.

The surrogate follows the paper's MLP ensemble, which averages per-block token
embeddings into one vector, so one predictor reads cells of any size. Here a block's
tokens are one-hot counts (:func:`encode_cell`): the *kind* of each input (``h_{c-2}``,
``h_{c-1}``, the previous block, an older block) rather than its absolute index, each
operation and each (kind, operation) pair; the cell's vector is their mean over blocks,
plus the fraction of blocks feeding the cell output and the number of blocks. Kinds
keep their meaning as cells grow, so what the surrogate learned on ``b``-block cells
applies to the new block of a ``b + 1``-block expansion (an absolute index ``b + 1`` is
unseen until then); the number of blocks keeps the accuracy gained by size from being
credited to whatever first appears in larger cells. Each of the ``n_members`` MLPs is
trained on a different random 80% of the data; the prediction is their mean.

Differences from the paper, for a search on a fixed budget of trained models:

* ``initial`` one-block cells (a random sample when fewer than all): by default the
  budget left after ``K`` cells for each larger size;
* budget left after the ``B``-block round buys further rounds of ``K``: the next best
  untrained ``B``-block expansions (of the trained ``(B - 1)``-block cells) by the
  refitted surrogate;
* only the MLP ensemble is implemented, not the paper's LSTM surrogate.

PNAS is not an Optuna sampler: it proposes cells in batches, of a size that grows, and
its candidates are expansions of trained cells, not points of a fixed space. Use it
through :func:`pnas_search` or ``modelyard.search.nas(..., strategy="pnas")``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from modelyard.errors import SpecError
from modelyard.search._cells import N_CELL_INPUTS, OPS, Genotype

__all__ = [
    "INPUT_KINDS",
    "PNASRecord",
    "PNASResult",
    "Surrogate",
    "encode_cell",
    "pnas_search",
]

BUDGET_TOO_SMALL = (
    "PNAS with n_blocks={n_blocks} and beam={beam} needs a budget of at least {need} trained "
    "models (one 1-block cell plus {beam} per larger size); got {budget}. Raise the budget, "
    "or lower beam or n_blocks."
)


#: Kinds of block input the surrogate distinguishes: the two cell inputs, the block just
#: before, and any older block of the cell.
INPUT_KINDS: tuple[str, ...] = ("h_c-2", "h_c-1", "previous block", "older block")


def input_kind(block_index: int, input_index: int) -> int:
    """Index in :data:`INPUT_KINDS` of input ``input_index`` of block ``block_index``."""
    if input_index < N_CELL_INPUTS:
        return input_index
    return 2 if input_index == block_index + N_CELL_INPUTS - 1 else 3


#: Width of :func:`encode_cell`'s vectors.
N_FEATURES = len(INPUT_KINDS) + len(OPS) + len(INPUT_KINDS) * len(OPS) + 2


def encode_cell(genotype: Genotype) -> np.ndarray:
    """The surrogate's features of a cell: the mean over blocks of one-hot block tokens.

    For each of its two branches a block counts its input's kind (:data:`INPUT_KINDS`),
    its operation and the pair (kind, operation), and one more entry is 1 for a block
    whose output goes to the cell output (no other block reads it), which sets the
    output's width. The last entry is the number of blocks (not averaged): without it,
    whatever first appears in larger cells (a block reading the previous block) takes
    the credit for their size. Kinds, unlike absolute input indices, mean the same in cells of every size,
    so what the surrogate learned on small cells carries over to the new block of an
    expansion (PNAS needs exactly that to rank ``b + 1``-block cells after training on
    ``b``-block ones).

    Parameters
    ----------
    genotype : Genotype

    Returns
    -------
    ndarray of float32, shape (N_FEATURES,)
    """
    n_kinds, n_ops = len(INPUT_KINDS), len(OPS)
    o_op, o_pair = n_kinds, n_kinds + n_ops
    x = np.zeros(N_FEATURES, dtype=np.float32)
    for j, b in enumerate(genotype.blocks):
        for i, op in ((b.input1, b.op1), (b.input2, b.op2)):
            k, kind = OPS.index(op), input_kind(j, i)
            x[kind] += 1.0
            x[o_op + k] += 1.0
            x[o_pair + kind * n_ops + k] += 1.0
    x[-2] = len(genotype.unused)
    x[:-1] /= genotype.n_blocks
    x[-1] = genotype.n_blocks
    return x


class _Ensemble(nn.Module):
    """``n_members`` independent MLPs ``d -> hidden -> hidden -> 1`` evaluated as one batched computation."""

    def __init__(self, n_members: int, d: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ParameterList()
        for fan_in, fan_out in ((d, hidden), (hidden, hidden), (hidden, 1)):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialization
            self.layers.append(
                nn.Parameter(
                    torch.empty(n_members, fan_in, fan_out).uniform_(-bound, bound)
                )
            )
            self.layers.append(
                nn.Parameter(torch.empty(n_members, 1, fan_out).uniform_(-bound, bound))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0)  # (1, n, d), broadcast over members
        n_layers = len(self.layers) // 2
        for i in range(n_layers):
            h = (
                torch.matmul(h, self.layers[2 * i]) + self.layers[2 * i + 1]
            )  # (M, n, out)
            if i < n_layers - 1:
                h = torch.relu(h)
        return h.squeeze(2)  # (M, n)


class Surrogate:
    """An ensemble of small MLPs predicting a cell's accuracy from :func:`encode_cell`.

    Targets are standardized; each member is trained (full-batch Adam, mean squared
    error) on its own random subsample of the data, and the prediction is the members'
    mean, as in the paper's MLP ensemble.

    Parameters
    ----------
    n_members : int, default=5
        MLPs in the ensemble (the paper uses 5).
    hidden : int, default=64
        Width of the two hidden layers.
    steps : int, default=300
        Full-batch Adam steps per fit.
    lr : float, default=0.01
    weight_decay : float, default=1e-4
    subsample : float, default=0.8
        Fraction of the data each member is trained on (all of it below 5 points).
    seed : int, default=0

    Examples
    --------
    >>> cells = list(Genotype.all_cells(1))
    >>> s = Surrogate(seed=0).fit(cells, [sum(b.op1 == "conv_3x3" for b in g.blocks) for g in cells])
    >>> s.predict(cells[:1]).shape
    (1,)
    """

    def __init__(
        self,
        *,
        n_members: int = 5,
        hidden: int = 64,
        steps: int = 300,
        lr: float = 0.01,
        weight_decay: float = 1e-4,
        subsample: float = 0.8,
        seed: int = 0,
    ) -> None:
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1; got {n_members}.")
        if not 0.0 < subsample <= 1.0:
            raise ValueError(f"subsample must be in (0, 1]; got {subsample}.")
        self.n_members = n_members
        self.hidden = hidden
        self.steps = steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.subsample = subsample
        self.seed = seed
        self._net: _Ensemble | None = None
        self._mean = 0.0
        self._scale = 1.0
        self._fits = 0

    def _features(self, genotypes: Sequence[Genotype]) -> torch.Tensor:
        return torch.from_numpy(np.stack([encode_cell(g) for g in genotypes]))  # (n, d)

    def fit(
        self, genotypes: Sequence[Genotype], accuracies: Sequence[float]
    ) -> Surrogate:
        """Train every member afresh on ``(genotypes, accuracies)``.

        Parameters
        ----------
        genotypes : sequence of Genotype
        accuracies : sequence of float
            Same length, at least one.

        Returns
        -------
        Surrogate
            ``self``.
        """
        if len(genotypes) != len(accuracies) or not genotypes:
            raise ValueError(
                f"fit needs as many accuracies as genotypes, at least one; got {len(genotypes)} and {len(accuracies)}."
            )
        x = self._features(genotypes)  # (n, d)
        y = torch.tensor(np.asarray(accuracies, dtype=np.float32))  # (n,)
        self._mean = float(y.mean())
        spread = float(y.std()) if len(y) > 1 else 0.0
        self._scale = spread if spread > 1e-8 else 1.0
        target = (y - self._mean) / self._scale  # (n,)
        n, d = x.shape
        rng = np.random.default_rng([self.seed, self._fits])
        self._fits += 1
        weights = torch.ones(
            self.n_members, n
        )  # (M, n): which rows each member trains on
        if n >= 5 and self.subsample < 1.0:
            keep = max(1, round(self.subsample * n))
            for m in range(self.n_members):
                weights[m] = 0.0
                weights[
                    m, torch.from_numpy(rng.choice(n, size=keep, replace=False))
                ] = 1.0
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(rng.integers(2**31)))
                net = _Ensemble(self.n_members, d, self.hidden)
            opt = torch.optim.Adam(
                net.parameters(), lr=self.lr, weight_decay=self.weight_decay
            )
            for _ in range(self.steps):
                opt.zero_grad()
                err = (net(x) - target) ** 2  # (M, n)
                loss = (
                    (err * weights).sum(1) / weights.sum(1)
                ).sum()  # members are independent
                loss.backward()
                opt.step()
        finally:
            torch.set_num_threads(threads)
        self._net = net
        return self

    def predict(self, genotypes: Sequence[Genotype]) -> np.ndarray:
        """Mean prediction of the members, in accuracy units.

        Returns
        -------
        ndarray of float64, shape (len(genotypes),)
        """
        if self._net is None:
            raise RuntimeError(
                "The surrogate is not fitted; call fit(genotypes, accuracies) first."
            )
        if not genotypes:
            return np.zeros(0)
        x = self._features(genotypes)  # (n, d)
        with torch.no_grad():
            preds = self._net(x)  # (M, n)
        return preds.mean(0).double().numpy() * self._scale + self._mean


@dataclass
class PNASRecord:
    """One trained cell of a progressive search.

    Attributes
    ----------
    index : int
        1-based position in training order (the number of models trained so far).
    genotype : Genotype
        Canonical cell.
    accuracy : float
        What ``evaluate`` returned.
    n_blocks : int
    round : int
        0 for the one-block round, then 1, 2, ...
    predicted : float or None
        The surrogate's prediction when the cell was chosen (None in round 0).
    """

    index: int
    genotype: Genotype
    accuracy: float
    n_blocks: int
    round: int
    predicted: float | None = None


@dataclass
class PNASResult:
    """History of :func:`pnas_search`.

    Attributes
    ----------
    history : list of PNASRecord
        Every trained cell, in training order.
    rank_correlations : list of float
        Per round after the first: Spearman correlation between the surrogate's
        predictions and the measured accuracies of the cells it chose (NaN for rounds
        of fewer than 3 cells or constant values).
    surrogate : Surrogate
        Refitted on the whole history.
    seconds : float
        Wall time, training included.
    """

    history: list[PNASRecord]
    rank_correlations: list[float] = field(default_factory=list)
    surrogate: Surrogate | None = None
    seconds: float = 0.0

    @property
    def best(self) -> PNASRecord:
        """The record of highest accuracy (the earliest among ties)."""
        if not self.history:
            raise ValueError("The search trained no model.")
        return max(self.history, key=lambda r: (r.accuracy, -r.index))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN below 3 points or for a constant input."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # average the ranks of ties
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def pnas_search(
    evaluate: Callable[[Genotype], float],
    n_blocks: int = 3,
    *,
    beam: int = 8,
    budget: int = 40,
    initial: int | None = None,
    seed: int = 0,
    surrogate: Surrogate | None = None,
    max_candidates: int | None = None,
    callback: Callable[[PNASRecord], Any] | None = None,
) -> PNASResult:
    """Progressive NAS: grow cells one block at a time, train the top ``beam`` by a learned surrogate.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(genotype) -> accuracy`` (greater is better); called once per trained
        model, never twice for the same canonical cell.
    n_blocks : int, default=3
        ``B``: blocks of the largest cells.
    beam : int, default=8
        ``K``: cells trained per round after the first.
    budget : int, default=40
        Most models trained (calls of ``evaluate``).
    initial : int or None, default=None
        One-block cells trained in the first round; default
        ``budget - beam * (n_blocks - 1)``, capped at all 78. Fewer than all are a seeded
        random sample.
    seed : int, default=0
        Seeds the sample of one-block cells and the surrogate.
    surrogate : Surrogate or None, default=None
        Default ``Surrogate(seed=seed)``.
    max_candidates : int or None, default=None
        Rank a seeded random sample of at most this many expansions per round (None: all).
    callback : callable or None, default=None
        Called with each :class:`PNASRecord` as it is trained.

    Returns
    -------
    PNASResult
        At most ``budget`` records; fewer only when every candidate was trained.

    Raises
    ------
    SpecError
        If the budget cannot cover one round per cell size.

    Examples
    --------
    >>> score = lambda g: sum(b.op1 == "conv_5x5" for b in g.blocks) + 0.1 * g.n_blocks
    >>> result = pnas_search(score, n_blocks=2, beam=4, budget=20, seed=0)
    >>> len(result.history), result.best.genotype.n_blocks
    (20, 2)
    """
    for name, value, low in (
        ("n_blocks", n_blocks, 1),
        ("beam", beam, 1),
        ("budget", budget, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SpecError(
                f"pnas_search: {name} must be an integer >= {low}; got {value!r}."
            )
    one_block = list(Genotype.all_cells(1))
    if initial is None:
        initial = min(len(one_block), budget - beam * (n_blocks - 1))
        if initial < 1:
            raise SpecError(
                BUDGET_TOO_SMALL.format(
                    n_blocks=n_blocks,
                    beam=beam,
                    need=1 + beam * (n_blocks - 1),
                    budget=budget,
                )
            )
    elif isinstance(initial, bool) or not isinstance(initial, int) or initial < 1:
        raise SpecError(
            f"pnas_search: initial must be an integer >= 1; got {initial!r}."
        )
    initial = min(initial, len(one_block), budget)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    surrogate = surrogate if surrogate is not None else Surrogate(seed=seed)
    history: list[PNASRecord] = []
    trained: set[Genotype] = set()
    correlations: list[float] = []

    def train(
        cells: Sequence[Genotype], round_: int, predicted: Sequence[float | None]
    ) -> None:
        for g, p in zip(cells, predicted):
            accuracy = float(evaluate(g))
            record = PNASRecord(len(history) + 1, g, accuracy, g.n_blocks, round_, p)
            history.append(record)
            trained.add(g)
            if callback is not None:
                callback(record)

    order = rng.permutation(len(one_block))[:initial]
    train([one_block[i] for i in order], 0, [None] * initial)
    round_, size = 0, 1
    while len(history) < budget:
        size = min(size + 1, n_blocks)
        parents = [r.genotype for r in history if r.n_blocks == size - 1]
        candidates = [c for p in parents for c in p.expansions() if c not in trained]
        if not candidates:
            break
        if max_candidates is not None and len(candidates) > max_candidates:
            pick = rng.choice(len(candidates), size=max_candidates, replace=False)
            candidates = [candidates[i] for i in sorted(pick)]
        surrogate.fit([r.genotype for r in history], [r.accuracy for r in history])
        scores = surrogate.predict(candidates)
        k = min(beam, budget - len(history), len(candidates))
        top = np.argsort(-scores, kind="stable")[:k]
        round_ += 1
        start = len(history)
        train([candidates[i] for i in top], round_, [float(scores[i]) for i in top])
        chosen = history[start:]
        predicted = [
            float(r.predicted or 0.0) for r in chosen
        ]  # set for every record after round 0
        correlations.append(spearman(predicted, [r.accuracy for r in chosen]))
    if history:
        surrogate.fit([r.genotype for r in history], [r.accuracy for r in history])
    return PNASResult(history, correlations, surrogate, time.perf_counter() - started)
