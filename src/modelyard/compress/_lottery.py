"""Lottery tickets: iterative magnitude pruning with weight rewinding.

Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural
Networks", ICLR 2019 (arXiv:1803.03635); late rewinding from Frankle, Dziugaite, Roy &
Carbin, "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020
(arXiv:1912.05671).

The procedure (:func:`find_ticket`):

1. Keep the weights ``theta_k`` the network has after ``rewind_epoch`` epochs of
   training (``theta_0``, its initialization, for ``rewind_epoch=0`` as in the
   original paper), then train it to the end and score it (round 0: the dense network).
2. Each round, prune ``rate`` of the weights still alive by magnitude (per layer, or
   globally), reset the survivors to their values in ``theta_k`` (everything else:
   biases, normalization, embeddings, back to ``theta_k`` too), and train again from
   there with the mask fixed; score it.

After ``n`` rounds a fraction ``(1 - rate)^n`` of the prunable weights is left. A
*winning ticket* is a round whose sparse network, trained from ``theta_k``, scores as
well as the dense one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from modelyard.compress._prune import (
    FineTune,
    apply_masks,
    check_sparsity,
    copy_model,
    current_mask,
    fold_masks,
    magnitude_masks,
    prunable_layers,
)

__all__ = ["LotteryResult", "LotteryRound", "find_ticket", "reinitialized_control"]


@dataclass(frozen=True)
class LotteryRound:
    """One round of iterative magnitude pruning.

    Attributes
    ----------
    round : int
        0 for the dense network.
    remaining : float
        Fraction of the prunable weights still alive.
    n_weights : int
        Prunable weights alive.
    score : float
        What ``evaluate`` returned for the trained network of this round.
    masks : dict of str to Tensor
        Bool keep-masks of this round, by layer.
    """

    round: int
    remaining: float
    n_weights: int
    score: float
    masks: dict[str, torch.Tensor] = field(repr=False)


@dataclass
class LotteryResult:
    """What :func:`find_ticket` found.

    Attributes
    ----------
    rounds : list of LotteryRound
        Round 0 (dense) first.
    model : nn.Module or predictor
        The last round's trained sparse network (masks folded: zeros in the weights).
    rewind_state : dict of str to Tensor
        The weights every round restarted from (``theta_k``), dense-model keys.
    rewind_epoch : int
    """

    rounds: list[LotteryRound]
    model: Any
    rewind_state: dict[str, torch.Tensor] = field(repr=False)
    rewind_epoch: int = 0

    @property
    def dense_score(self) -> float:
        """The score of round 0 (the dense network)."""
        return self.rounds[0].score

    def sparsest_within(self, tolerance: float, *, higher_is_better: bool = True) -> LotteryRound | None:
        """The sparsest round whose score is within ``tolerance`` of the dense one (None if no pruned round is)."""
        best = None
        for r in self.rounds[1:]:
            gap = self.dense_score - r.score if higher_is_better else r.score - self.dense_score
            if gap <= tolerance and (best is None or r.remaining < best.remaining):
                best = r
        return best

    def table(self) -> list[dict[str, float]]:
        """One row per round: round, remaining, n_weights, score."""
        return [{"round": r.round, "remaining": r.remaining, "n_weights": r.n_weights, "score": r.score} for r in self.rounds]


def _params_and_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer, under the dense model's names (``weight_orig`` -> ``weight``)."""
    state = {}
    for k, v in module.state_dict().items():
        if k.endswith("weight_mask"):
            continue
        state[k.removesuffix("_orig") if k.endswith("weight_orig") else k] = v.detach().clone()
    return state


@torch.no_grad()
def _rewind(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` (dense keys) into ``module``, whose prunable layers may carry masks."""
    target = module.state_dict()
    for k, v in state.items():
        key = k + "_orig" if k not in target and k + "_orig" in target else k
        target[key].copy_(v)
    for layer in module.modules():  # refresh the masked weights now, not only at the next forward
        if hasattr(layer, "weight_mask") and hasattr(layer, "weight_orig"):
            layer.weight = layer.weight_orig * layer.weight_mask


def find_ticket(
    model: Any,
    fine_tune: FineTune,
    evaluate: Callable[[nn.Module], float],
    *,
    rounds: int,
    epochs: int,
    rate: float | Mapping[str, float] = 0.2,
    rewind_epoch: int = 0,
    scope: str = "layer",
    layers: Sequence[str] | None = None,
    callback: Callable[[LotteryRound], Any] | None = None,
) -> LotteryResult:
    """Iterative magnitude pruning with rewinding to ``theta_k`` (Frankle & Carbin 2019).

    Parameters
    ----------
    model : nn.Module or predictor
        The *untrained* network (its current weights are ``theta_0``); not modified.
    fine_tune : callable
        ``fine_tune(module, epochs)`` trains the module in place (e.g.
        :func:`modelyard.compress.fine_tuner`); masks attached to the module keep
        pruned weights at zero while it trains.
    evaluate : callable
        ``evaluate(module) -> float``, e.g. validation accuracy.
    rounds : int
        Pruning rounds after the dense one (``>= 1``).
    epochs : int
        Training epochs of each round, counted from initialization: the dense round
        trains ``epochs`` in all, each pruned round ``epochs - rewind_epoch`` from ``theta_k``.
    rate : float or dict of str to float, default=0.2
        Fraction of the *remaining* weights pruned per round (the paper's 20% for fully
        connected layers); with ``scope="layer"`` a dict sets it per layer (the paper
        prunes the output layer at half the rate), layers left out use 0.2.
    rewind_epoch : int, default=0
        ``k``: rewind to the weights after ``k`` epochs (0: to initialization).
    scope : {"layer", "global"}, default="layer"
    layers : list of str or None, default=None
        Layers to prune (every ``Linear``/``Conv`` if None).
    callback : callable or None, default=None
        ``callback(round)`` after each round (progress).

    Returns
    -------
    LotteryResult
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer; got {rounds!r}.")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer; got {epochs!r}.")
    if isinstance(rewind_epoch, bool) or not isinstance(rewind_epoch, int) or not 0 <= rewind_epoch < epochs:
        raise ValueError(f"rewind_epoch must be an integer in [0, epochs={epochs}); got {rewind_epoch!r}.")
    if not callable(fine_tune) or not callable(evaluate):
        raise TypeError("fine_tune(module, epochs) and evaluate(module) must both be callable.")
    new, module = copy_model(model)
    fold_masks(module)
    found = prunable_layers(module, layers)
    if isinstance(rate, Mapping):
        if scope == "global":
            raise TypeError("scope='global' takes one rate for all layers; got a dict. Use scope='layer'.")
        unknown = [n for n in rate if n not in found]
        if unknown:
            raise ValueError(f"rate names layers {unknown} that are not pruned; known: {list(found)}.")
        rates = {n: check_sparsity(rate.get(n, 0.2), f"rate[{n!r}]") for n in found}
    else:
        rates = dict.fromkeys(found, check_sparsity(rate, "rate"))
    total = sum(m.weight.numel() for m in found.values())

    def record(r: int) -> LotteryRound:
        masks = {n: current_mask(m).clone() for n, m in found.items()}
        alive = int(sum(int(v.sum()) for v in masks.values()))
        entry = LotteryRound(r, alive / total, alive, float(evaluate(module)), masks)
        if callback is not None:
            callback(entry)
        return entry

    if rewind_epoch:
        fine_tune(module, rewind_epoch)
    rewind_state = _params_and_buffers(module)
    fine_tune(module, epochs - rewind_epoch)
    history = [record(0)]
    for r in range(1, rounds + 1):
        # Sparsity after round r: 1 - (1 - rate)^r of each layer (layer scope) or of all weights (global).
        if scope == "layer":
            target: float | dict[str, float] = {n: 1 - (1 - rates[n]) ** r for n in found}
        else:
            target = 1 - (1 - rates[next(iter(rates))]) ** r
        apply_masks(module, magnitude_masks(module, target, scope=scope, layers=list(found)))
        _rewind(module, rewind_state)
        fine_tune(module, epochs - rewind_epoch)
        history.append(record(r))
    fold_masks(module)
    return LotteryResult(rounds=history, model=new, rewind_state=rewind_state, rewind_epoch=rewind_epoch)


def reinitialized_control(result: LotteryResult, fresh: Any) -> Any:
    """``fresh`` (a newly initialized copy of the architecture) with the last round's mask: the random-reinit control.

    Frankle & Carbin's control: the same sparse structure with new random weights
    trains worse than the ticket. Returns a deep copy of ``fresh`` with the masks attached.
    """
    new, module = copy_model(fresh)
    apply_masks(module, result.rounds[-1].masks)
    return new

