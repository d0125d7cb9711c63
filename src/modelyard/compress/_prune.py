"""Unstructured pruning: magnitude masks (layer-wise or global), a TF-MOT polynomial-decay schedule, folding, sparse storage.

How it works
------------
A *mask* is attached to the ``weight`` of every prunable layer (``Linear`` and
``Conv1d/2d/3d``) with :func:`torch.nn.utils.prune.custom_from_mask`: the layer keeps
``weight_orig`` (a parameter) and ``weight_mask`` (a buffer), and a forward pre-hook
recomputes ``weight = weight_orig * weight_mask``, so pruned weights get no gradient
and stay zero while the rest is fine-tuned. :func:`fold_masks` makes the zeros
permanent (``torch.nn.utils.prune.remove``): plain ``weight`` parameters, no hooks, the
same state-dict keys as the dense model, so saving (safetensors) and ONNX export see a
dense tensor that holds the zeros. Biases are never pruned (TF Model Optimization
prunes kernels only, as here).

* :func:`magnitude_masks` ranks weights by ``|w|`` (or any per-weight score, such as
  the Optimal Brain Damage saliency of :func:`modelyard.compress.obd_saliency`) and
  zeroes exactly ``round(sparsity * n)`` of them, in each layer (``scope="layer"``)
  or over all layers at once (``scope="global"``: the smallest magnitudes anywhere).
  Masks only grow: a weight pruned before stays pruned.
* :class:`PolynomialDecay` is TF Model Optimization's schedule
  (``tfmot.sparsity.keras.PolynomialDecay``, after Zhu & Gupta, arXiv:1710.01878):
  ``s(t) = s_f + (s_i - s_f) * (1 - p)^power`` with
  ``p = clip((t - begin_step) / (end_step - begin_step), 0, 1)``, applied every
  ``frequency`` steps in ``[begin_step, end_step]``.
* :class:`GradualPruner` fine-tunes a copy of a model while raising its sparsity along
  a schedule, one optimizer step at a time (a forward pre-hook counts the training
  forward passes), then folds the masks.
* :func:`save_sparse` / :func:`load_sparse` store a pruned model's tensors in
  safetensors as the nonzero values plus a packed bitmask; :func:`sparse_sizes` reports
  raw and gzip sizes of the dense and of the sparse forms.

Every function that takes a model accepts an ``nn.Module`` or a predictor holding one
in ``.module`` (:class:`~modelyard.models.TorchPredictor`,
:class:`~modelyard.models.ImagePredictor`) and returns the same kind; the original is
never modified unless a function says it works in place.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from modelyard._registry import Registry

__all__ = [
    "PRUNABLE_TYPES",
    "PRUNING_CRITERIA",
    "GradualPruner",
    "PolynomialDecay",
    "SparseSizes",
    "apply_masks",
    "fine_tuner",
    "fold_masks",
    "load_sparse",
    "magnitude_masks",
    "prunable_layers",
    "prune",
    "prune_unstructured",
    "save_sparse",
    "sparse_sizes",
    "weight_sparsity",
]

#: Layers whose ``weight`` is pruned.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: A fine-tuning routine: ``fine_tune(module, epochs)`` trains ``module`` in place.
FineTune = Callable[[nn.Module, int], Any]

SCOPES = ("layer", "global")


# -- models and predictors -------------------------------------------------------------


def unwrap(model: Any) -> nn.Module:
    """The torch module of ``model`` (itself, or a predictor's ``.module``)."""
    if isinstance(model, nn.Module):
        return model
    module = getattr(model, "module", None)
    if isinstance(module, nn.Module):
        return module
    raise TypeError(
        f"Pruning works on a torch.nn.Module or a predictor holding one in .module (TorchPredictor, "
        f"ImagePredictor); got {type(model).__name__}. Export other models to ONNX and quantize them instead."
    )


def rewrap(model: Any, module: nn.Module) -> Any:
    """``module`` in the place of ``model``'s: itself, or a shallow copy of the predictor holding it.

    A predictor's architecture config is brought in step with the module's layer sizes
    (``hidden_sizes``; ``channels`` for image CNNs), so a structurally pruned predictor
    saves and loads like any other.
    """
    if isinstance(model, nn.Module):
        return module
    new = copy.copy(model)
    new.module = module
    config = getattr(model, "config", None)
    module_config = getattr(module, "config", None)
    if module_config is not None and type(module_config) is type(config):
        new.config = module_config  # TabularMLP keeps its own config (updated by structured pruning)
    elif config is not None and hasattr(config, "model_copy"):
        update: dict[str, Any] = {}
        body = getattr(module, "body", None)
        if hasattr(config, "hidden_sizes") and isinstance(body, nn.Sequential):
            update["hidden_sizes"] = tuple(m.out_features for m in body if isinstance(m, nn.Linear))
        features = getattr(module, "features", None)
        if hasattr(config, "channels") and isinstance(features, nn.Sequential) and len(features):
            update["channels"] = tuple(m.out_channels for m in features if isinstance(m, nn.Conv2d))
        if update:
            new.config = config.model_copy(update=update)
    return new


@torch.no_grad()
def clone_module(module: nn.Module) -> nn.Module:
    """A deep copy of ``module``, also in the middle of masked training.

    A masked layer's ``weight`` is recomputed by its hook at every forward; after a
    forward with gradients it is a non-leaf tensor, which ``copy.deepcopy`` refuses.
    It is refreshed here without gradients first (the same values).
    """
    for layer in module.modules():
        if _is_masked(layer):
            layer.weight = layer.weight_orig * layer.weight_mask
    return copy.deepcopy(module)


def copy_model(model: Any) -> tuple[Any, nn.Module]:
    """A deep copy of ``model`` and its module (the original is never touched)."""
    module = clone_module(unwrap(model))
    return rewrap(model, module), module


# -- layers and masks --------------------------------------------------------------------


def prunable_layers(model: Any, layers: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """The prunable layers of ``model`` by qualified name, in module order.

    Parameters
    ----------
    model : nn.Module or predictor
    layers : list of str or None, default=None
        Names (as in ``module.named_modules()``, e.g. ``"body.0"``, ``"head"``) to keep;
        every ``Linear`` and ``Conv1d/2d/3d`` if None.

    Returns
    -------
    dict of str to nn.Module

    Raises
    ------
    ValueError
        The model has no prunable layer, or a name is unknown or not a prunable layer.
    """
    module = unwrap(model)
    found = {name: m for name, m in module.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    if not found:
        raise ValueError(
            f"{type(module).__name__} has no prunable layers: pruning acts on the weights of "
            f"{', '.join(t.__name__ for t in PRUNABLE_TYPES)} layers."
        )
    if layers is None:
        return found
    if isinstance(layers, str):
        raise TypeError(f"layers is a string; pass a list of layer names, e.g. [{layers!r}].")
    unknown = [n for n in layers if n not in found]
    if unknown:
        raise ValueError(f"Layers {unknown} are not prunable layers of {type(module).__name__}; known: {list(found)}.")
    return {n: found[n] for n in found if n in set(layers)}


def _is_masked(layer: nn.Module) -> bool:
    return hasattr(layer, "weight_mask") and hasattr(layer, "weight_orig")


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight the layer computes with: ``weight_orig * weight_mask`` under a mask, else ``weight``."""
    if _is_masked(layer):
        return (layer.weight_orig * layer.weight_mask).detach()
    return layer.weight.detach()


def current_mask(layer: nn.Module) -> torch.Tensor:
    """Boolean mask of the kept weights (all True for an unmasked layer)."""
    if _is_masked(layer):
        return layer.weight_mask.detach() != 0
    return torch.ones_like(layer.weight, dtype=torch.bool)


def check_sparsity(value: Any, what: str = "sparsity") -> float:
    """``value`` as a float in ``[0, 1)``, or a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{what} must be a number in [0, 1); got {value!r}.")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{what} must be in [0, 1) (the fraction of weights set to zero); got {value!r}.")
    return float(value)


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}; got {scope!r}.")


def _n_pruned(sparsity: float, n: int) -> int:
    # Python's round (half to even), as torch.nn.utils.prune and TF-MOT's tf.round.
    return round(sparsity * n)


@torch.no_grad()
def magnitude_masks(
    model: Any,
    sparsity: float | Mapping[str, float],
    *,
    scope: str = "layer",
    layers: Sequence[str] | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks that zero the lowest-scoring weights, by layer or over all layers.

    Parameters
    ----------
    model : nn.Module or predictor
    sparsity : float or dict of str to float
        Fraction of weights to zero, in ``[0, 1)``. With ``scope="layer"`` a dict gives
        each layer its own fraction (layers left out keep their current mask).
    scope : {"layer", "global"}, default="layer"
        ``"layer"``: ``round(sparsity * n_l)`` weights of each layer ``l``; ``"global"``:
        ``round(sparsity * sum n_l)`` weights over all the layers at once, wherever
        the smallest scores are (layers end with different sparsities).
    layers : list of str or None, default=None
        The layers to prune (every prunable layer if None).
    scores : dict of str to Tensor or None, default=None
        Per-weight importance of each layer (same shape as its weight); ``|w|`` of the
        effective weight if None. Pass :func:`obd_saliency` for Optimal Brain Damage.

    Returns
    -------
    dict of str to torch.Tensor
        Layer name -> bool tensor shaped like its weight (True: kept).

    Notes
    -----
    Weights already pruned stay pruned (they are ranked first), so masks only grow
    and a requested sparsity below the current one leaves the layer as it is. Ties
    are broken by position (a stable sort), so the count is always exact.
    """
    _check_scope(scope)
    found = prunable_layers(model, layers)
    if isinstance(sparsity, Mapping):
        if scope == "global":
            raise TypeError("scope='global' takes one sparsity for all layers; got a dict. Use scope='layer'.")
        unknown = [n for n in sparsity if n not in found]
        if unknown:
            raise ValueError(f"sparsity names layers {unknown} that are not pruned here; known: {list(found)}.")
        targets = {n: check_sparsity(v, f"sparsity[{n!r}]") for n, v in sparsity.items()}
    else:
        s = check_sparsity(sparsity)
        targets = dict.fromkeys(found, s)
    ranked: dict[str, torch.Tensor] = {}
    for name, layer in found.items():
        weight = effective_weight(layer)
        score = weight.abs() if scores is None or name not in scores else torch.as_tensor(scores[name])
        if score.shape != weight.shape:
            raise ValueError(f"scores[{name!r}] has shape {tuple(score.shape)}; the weight is {tuple(weight.shape)}.")
        score = score.detach().to(torch.float64).clone()  # float64: scores of all layers compare exactly
        score[~current_mask(layer)] = -math.inf  # pruned before: pruned first
        ranked[name] = score
    masks: dict[str, torch.Tensor] = {}
    if scope == "layer":
        for name, score in ranked.items():
            if name not in targets:
                masks[name] = current_mask(found[name])
                continue
            masks[name] = _keep_largest(score.reshape(-1), _n_pruned(targets[name], score.numel())).reshape(score.shape)
        return masks
    flat = torch.cat([r.reshape(-1) for r in ranked.values()])  # (sum n_l,)
    keep = _keep_largest(flat, _n_pruned(targets[next(iter(targets))], flat.numel()))
    offset = 0
    for name, score in ranked.items():
        masks[name] = keep[offset : offset + score.numel()].reshape(score.shape)
        offset += score.numel()
    return masks


def _keep_largest(score: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Bool mask dropping the ``n_prune`` lowest scores (at least those already at -inf)."""
    n_prune = max(n_prune, int(torch.isneginf(score).sum()))
    keep = torch.ones_like(score, dtype=torch.bool)
    if n_prune:
        keep[torch.argsort(score, stable=True)[:n_prune]] = False
    return keep


@torch.no_grad()
def apply_masks(model: Any, masks: Mapping[str, torch.Tensor]) -> Any:
    """Attach (or replace) the weight masks of ``model``'s layers, **in place**.

    A layer without a mask gets one through
    :func:`torch.nn.utils.prune.custom_from_mask`; a masked layer has its
    ``weight_mask`` buffer overwritten, so repeated calls (a schedule) stack no hooks.

    Parameters
    ----------
    model : nn.Module or predictor
    masks : dict of str to Tensor
        Layer name -> keep-mask (bool or 0/1) shaped like the layer's weight.

    Returns
    -------
    The same ``model``.
    """
    found = prunable_layers(model)
    for name, mask in masks.items():
        if name not in found:
            raise ValueError(f"No prunable layer {name!r}; known: {list(found)}.")
        layer = found[name]
        mask = torch.as_tensor(mask)
        if mask.shape != layer.weight.shape:
            raise ValueError(f"The mask of {name!r} has shape {tuple(mask.shape)}; the weight is {tuple(layer.weight.shape)}.")
        mask = mask.to(dtype=layer.weight.dtype, device=layer.weight.device)
        if _is_masked(layer):
            layer.weight_mask.copy_(mask)
            layer.weight = layer.weight_orig * layer.weight_mask  # as the hook will on the next forward
        else:
            torch_prune.custom_from_mask(layer, "weight", mask)
    return model


def prune_unstructured(
    model: Any,
    sparsity: float | Mapping[str, float],
    *,
    scope: str = "layer",
    layers: Sequence[str] | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
    fold: bool = False,
) -> Any:
    """A copy of ``model`` with its lowest-magnitude (or lowest-score) weights masked to zero (one shot).

    Parameters
    ----------
    model : nn.Module or predictor
        Not modified.
    sparsity, scope, layers, scores
        As in :func:`magnitude_masks`.
    fold : bool, default=False
        Fold the masks into the weights (:func:`fold_masks`); otherwise they stay
        attached, ready for fine-tuning.

    Returns
    -------
    The pruned copy, of the same kind as ``model``.
    """
    new, module = copy_model(model)
    apply_masks(module, magnitude_masks(module, sparsity, scope=scope, layers=layers, scores=scores))
    return fold_masks(new) if fold else new


def fold_masks(model: Any) -> Any:
    """Make every mask permanent, **in place**: zeros in ``weight``, no ``weight_orig``/``weight_mask``, no hooks.

    Returns
    -------
    The same ``model``; its state-dict keys are those of the dense model again.
    """
    module = unwrap(model)
    for layer in module.modules():
        for hook in list(layer._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(layer, hook._tensor_name)
    return model


def weight_sparsity(model: Any, layers: Sequence[str] | None = None) -> dict[str, float]:
    """Fraction of zero weights of each prunable layer, and ``"overall"`` over all of them."""
    zeros = total = 0
    out: dict[str, float] = {}
    for name, layer in prunable_layers(model, layers).items():
        w = effective_weight(layer)
        z = int((w == 0).sum())
        out[name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    out["overall"] = zeros / total
    return out


# -- schedule ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PolynomialDecay:
    """TF Model Optimization's polynomial-decay sparsity schedule (``tfmot.sparsity.keras.PolynomialDecay``).

    ``sparsity(t) = final + (initial - final) * (1 - p)^power`` with
    ``p = min(1, max(0, (t - begin_step) / (end_step - begin_step)))``: sparsity rises
    fast at first, then levels off at ``final_sparsity`` (Zhu & Gupta, "To prune, or
    not to prune", arXiv:1710.01878). Masks are updated at steps ``t`` in
    ``[begin_step, end_step]`` with ``(t - begin_step) % frequency == 0``.

    Parameters
    ----------
    initial_sparsity : float
        Sparsity at ``begin_step``, in ``[0, 1)``.
    final_sparsity : float
        Sparsity from ``end_step`` on, in ``[0, 1)``.
    begin_step, end_step : int
        Optimizer steps (from 0) where the ramp starts and ends; ``0 <= begin_step < end_step``.
    power : float, default=3
        Exponent of the decay (TF-MOT's default).
    frequency : int, default=100
        Steps between mask updates (TF-MOT's default).

    Examples
    --------
    >>> s = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=100, frequency=10)
    >>> round(s.sparsity(50), 4), s.should_prune(50), s.should_prune(55)
    (0.7875, True, False)
    """

    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    end_step: int
    power: float = 3
    frequency: int = 100

    def __post_init__(self) -> None:
        check_sparsity(self.initial_sparsity, "initial_sparsity")
        check_sparsity(self.final_sparsity, "final_sparsity")
        for name in ("begin_step", "end_step", "frequency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int; got {value!r}.")
        if self.begin_step < 0:
            raise ValueError(f"begin_step must be >= 0; got {self.begin_step}.")
        if self.end_step <= self.begin_step:
            raise ValueError(
                f"end_step must be > begin_step (the ramp needs at least one step); got begin_step="
                f"{self.begin_step}, end_step={self.end_step}."
            )
        if self.frequency < 1:
            raise ValueError(f"frequency must be >= 1; got {self.frequency}.")
        if not (isinstance(self.power, (int, float)) and math.isfinite(self.power) and self.power > 0):
            raise ValueError(f"power must be a number > 0; got {self.power!r}.")

    def sparsity(self, step: int) -> float:
        """The target sparsity at optimizer step ``step``."""
        p = min(1.0, max(0.0, (step - self.begin_step) / (self.end_step - self.begin_step)))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - p) ** self.power

    def should_prune(self, step: int) -> bool:
        """Whether masks are updated at ``step`` (in range and on a ``frequency`` boundary)."""
        return self.begin_step <= step <= self.end_step and (step - self.begin_step) % self.frequency == 0

    def __call__(self, step: int) -> tuple[bool, float]:
        """``(should_prune, sparsity)`` at ``step``, as TF-MOT's schedules return them."""
        return self.should_prune(step), self.sparsity(step)


# -- fine-tuning ---------------------------------------------------------------------------


def fine_tuner(
    train: Any,
    *,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    seed: int = 0,
    num_threads: int | None = 1,
) -> FineTune:
    """A ``fine_tune(module, epochs)`` that trains ``module`` on ``train`` for exactly ``epochs`` epochs.

    Plain mini-batch AdamW with cross-entropy (classifiers) or mean squared error
    (regression), as :class:`modelyard.train.Trainer` computes them, but with no early
    stopping and no restore of an earlier epoch: a restore would bring back an earlier,
    less sparse mask in the middle of a pruning schedule.

    Parameters
    ----------
    train : TabularSplit or ImageSplit
    lr : float, default=1e-3
    batch_size : int, default=128
    weight_decay : float, default=0.0
    seed : int, default=0
        Seeds shuffling and dropout (inside a forked RNG state); call ``k`` of the
        returned function uses ``seed + k``, so rounds do not repeat one order.
    num_threads : int or None, default=1
        Torch intra-op threads while training (None: unchanged).

    Returns
    -------
    callable
        ``fine_tune(module, epochs) -> list of float`` (mean training loss per epoch).
    """
    from modelyard.data import ImageSplit, TabularSplit
    from modelyard.train._trainer import (
        _classify,
        _loss,
        _tensors,
        _threads,
    )

    if not isinstance(train, (TabularSplit, ImageSplit)):
        raise TypeError(f"fine_tuner trains on a TabularSplit or an ImageSplit; got {type(train).__name__}.")
    if len(train) == 0:
        raise ValueError("fine_tuner needs at least one training row.")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be > 0; got {lr!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    classify = _classify(train)
    xs, y = _tensors(train, classify)
    calls = [0]

    def fine_tune(module: nn.Module, epochs: int) -> list[float]:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be an integer >= 0; got {epochs!r}.")
        run_seed = seed + calls[0]
        calls[0] += 1
        optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
        generator = torch.Generator().manual_seed(run_seed)
        losses: list[float] = []
        with _threads(num_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(run_seed)
            for _ in range(epochs):
                module.train()
                order = torch.randperm(len(y), generator=generator)  # (n,)
                total = 0.0
                for lo in range(0, len(y), batch_size):
                    idx = order[lo : lo + batch_size]  # (b,)
                    loss = _loss(module(*(x[idx] for x in xs)), y[idx], classify)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(idx)
                losses.append(total / len(y))
                if not math.isfinite(losses[-1]):
                    raise FloatingPointError(f"Fine-tuning diverged (training loss {losses[-1]}); lower lr.")
        module.eval()
        return losses

    return fine_tune


class GradualPruner:
    """Magnitude pruning during fine-tuning along a sparsity schedule, as TF Model Optimization does.

    :meth:`fit` deep-copies the model, attaches masks at the schedule's sparsity for
    step 0, and registers a forward pre-hook that counts training-mode forward passes
    (one per optimizer step with :func:`fine_tuner` or :class:`modelyard.train.Trainer`).
    At each step where ``schedule.should_prune(step)`` holds (and at ``end_step``,
    which TF-MOT skips when ``end_step - begin_step`` is not a multiple of
    ``frequency``) the masks are recomputed at ``schedule.sparsity(step)`` from the
    current weights; pruned weights stay pruned. After ``fine_tune(module, epochs)``
    returns, the hook is removed; if the final sparsity was not reached (fewer steps
    than ``end_step``, or a trainer that restored an earlier epoch), the final masks
    are applied one-shot and a warning says so. Masks are then folded.

    Parameters
    ----------
    schedule : PolynomialDecay
    scope : {"layer", "global"}, default="layer"
    layers : list of str or None, default=None
        Layers to prune (every ``Linear``/``Conv`` if None).
    saliency : callable or None, default=None
        ``saliency(module) -> {layer: per-weight scores}`` called at each mask update
        (e.g. ``lambda m: obd_saliency(m, data)``); ``|w|`` if None.
    fold : bool, default=True
        Fold the masks into the weights at the end.

    Attributes
    ----------
    model_ : nn.Module or predictor
        The pruned, fine-tuned copy.
    steps_ : int
        Training steps counted.
    updates_ : list of (int, float)
        ``(step, sparsity)`` of every mask update.
    reached_final_ : bool
        Whether the schedule itself reached the final sparsity during fine-tuning.
    sparsity_ : dict of str to float
        :func:`weight_sparsity` of the result.
    """

    def __init__(
        self,
        schedule: PolynomialDecay,
        *,
        scope: str = "layer",
        layers: Sequence[str] | None = None,
        saliency: Callable[[nn.Module], Mapping[str, torch.Tensor]] | None = None,
        fold: bool = True,
    ) -> None:
        self.schedule = schedule
        self.scope = scope
        self.layers = layers
        self.saliency = saliency
        self.fold = fold

    def _update(self, module: nn.Module, sparsity: float) -> None:
        scores = self.saliency(module) if self.saliency is not None else None
        apply_masks(module, magnitude_masks(module, sparsity, scope=self.scope, layers=self.layers, scores=scores))

    def fit(self, model: Any, fine_tune: FineTune, epochs: int) -> GradualPruner:
        """Prune a copy of ``model`` along the schedule while ``fine_tune(copy, epochs)`` trains it.

        Returns
        -------
        GradualPruner
            ``self``, with ``model_`` and the other fitted attributes set.
        """
        if not isinstance(self.schedule, PolynomialDecay):
            raise TypeError(f"schedule must be a PolynomialDecay; got {type(self.schedule).__name__}.")
        _check_scope(self.scope)
        if not callable(fine_tune):
            raise TypeError(f"fine_tune must be callable(module, epochs); got {fine_tune!r}.")
        new, module = copy_model(model)
        fold_masks(module)  # a model pruned before: start from its zeros
        schedule = self.schedule
        state = {"step": 0}
        updates: list[tuple[int, float]] = []
        start = schedule.sparsity(0) if schedule.begin_step == 0 else 0.0  # nothing pruned before begin_step
        self._update(module, start)
        updates.append((0, start))

        def count_step(mod: nn.Module, args: Any) -> None:
            if not mod.training:
                return
            step = state["step"]
            if step > 0 and (schedule.should_prune(step) or step == schedule.end_step):
                with torch.no_grad():
                    self._update(mod, schedule.sparsity(step))
                updates.append((step, schedule.sparsity(step)))
            state["step"] = step + 1

        handle = module.register_forward_pre_hook(count_step)
        try:
            fine_tune(module, epochs)
        finally:
            handle.remove()
        final = schedule.final_sparsity
        reached = weight_sparsity(module, self.layers)
        expected = _expected_sparsity(module, final, self.scope, self.layers)
        self.reached_final_ = all(reached[n] >= expected[n] - 1e-12 for n in expected)
        if not self.reached_final_:
            warnings.warn(
                f"Fine-tuning ran {state['step']} steps and left sparsity {reached['overall']:.3f} below the final "
                f"{final}; the final masks were applied one-shot. Train at least end_step={schedule.end_step} "
                "steps, without restoring an earlier epoch (modelyard.compress.fine_tuner does not).",
                RuntimeWarning,
                stacklevel=2,
            )
            self._update(module, final)
            updates.append((state["step"], final))
        if self.fold:
            fold_masks(module)
        self.model_ = new
        self.steps_ = state["step"]
        self.updates_ = updates
        self.sparsity_ = weight_sparsity(module, self.layers)
        return self


def _expected_sparsity(module: nn.Module, sparsity: float, scope: str, layers: Sequence[str] | None) -> dict[str, float]:
    """The sparsity that pruning at ``sparsity`` must leave: per layer (layer scope) or overall (global)."""
    found = prunable_layers(module, layers)
    if scope == "layer":
        return {n: _n_pruned(sparsity, m.weight.numel()) / m.weight.numel() for n, m in found.items()}
    total = sum(m.weight.numel() for m in found.values())
    return {"overall": _n_pruned(sparsity, total) / total}


# -- sparse storage -------------------------------------------------------------------------

_SPARSE_FORMAT = "modelyard.sparse/1"


def _sparse_tensors(state: Mapping[str, torch.Tensor], min_zero_fraction: float) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors to write and the metadata that restores them: sparse floats as values + packed bitmask."""
    tensors: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict[str, Any]] = {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        if t.is_floating_point() and t.numel() and float((t == 0).float().mean()) >= min_zero_fraction:
            nonzero = t.reshape(-1) != 0
            bits = np.packbits(nonzero.numpy())  # 1 bit per entry, row-major
            tensors[name + ".values"] = t.reshape(-1)[nonzero].clone()
            tensors[name + ".bitmask"] = torch.from_numpy(bits)
            sparse[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        else:
            tensors[name] = t
    return tensors, sparse


def _state(model: Any) -> dict[str, torch.Tensor]:
    module = unwrap(model)
    if any(_is_masked(m) for m in module.modules()):
        module = fold_masks(clone_module(module))
    return dict(module.state_dict())


def save_sparse(model: Any, path: str | os.PathLike[str], *, min_zero_fraction: float = 0.1) -> Path:
    """Save ``model``'s state dict as safetensors, sparse tensors as nonzero values plus a packed bitmask.

    A float tensor with at least ``min_zero_fraction`` zeros is stored as
    ``<name>.values`` (its nonzero entries, row-major) and ``<name>.bitmask`` (uint8,
    one bit per entry, :func:`numpy.packbits`); the rest as they are. At 90% sparsity
    a float32 weight takes ``0.1 * 4 + 1/8 = 0.525`` bytes per entry instead of 4
    (7.6x smaller) before any compression. Masks are folded first (on a copy).

    Parameters
    ----------
    model : nn.Module or predictor
    path : str or os.PathLike
        Ends in ``.safetensors``; written atomically.
    min_zero_fraction : float, default=0.1
        Below this fraction of zeros a tensor is stored dense (the bitmask costs 1 bit
        per entry and saves 32 bits per zero, so it pays from about 1/32 zeros on).

    Returns
    -------
    pathlib.Path
    """
    from safetensors.torch import save

    from modelyard._atomic import atomic_write_bytes

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_sparse writes .safetensors files; got {str(path)!r}. Name it e.g. 'pruned.safetensors'.")
    tensors, sparse = _sparse_tensors(_state(model), min_zero_fraction)
    data = save(tensors, metadata={"format": _SPARSE_FORMAT, "sparse": json.dumps(sparse)})
    return atomic_write_bytes(path, data)


def load_sparse(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The dense state dict of a file written by :func:`save_sparse` (``module.load_state_dict`` takes it)."""
    from safetensors import safe_open

    from modelyard.errors import ModelFormatError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; check the path.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFormatError(f"{path} is not a readable safetensors file.") from exc
    if metadata.get("format") != _SPARSE_FORMAT:
        raise ModelFormatError(f"{path} was not written by modelyard.compress.save_sparse (format {metadata.get('format')!r}).")
    sparse = json.loads(metadata["sparse"])
    state = {k: v for k, v in raw.items() if not any(k == n + ".values" or k == n + ".bitmask" for n in sparse)}
    for name, info in sparse.items():
        shape = tuple(info["shape"])
        n = int(np.prod(shape))
        keep = torch.from_numpy(np.unpackbits(raw[name + ".bitmask"].numpy(), count=n).astype(bool))  # (n,)
        values = raw[name + ".values"]
        dense = torch.zeros(n, dtype=values.dtype)
        dense[keep] = values
        state[name] = dense.reshape(shape)
    return state


@dataclass(frozen=True)
class SparseSizes:
    """Bytes of a model's weights stored dense and sparse, raw and after gzip level 9.

    Attributes
    ----------
    dense_bytes, dense_gzip_bytes : int
        safetensors of the state dict as it is (zeros stored).
    sparse_bytes, sparse_gzip_bytes : int
        :func:`save_sparse`'s form.
    zero_fraction : float
        Zeros among the prunable layers' weights.
    """

    dense_bytes: int
    dense_gzip_bytes: int
    sparse_bytes: int
    sparse_gzip_bytes: int
    zero_fraction: float


def sparse_sizes(model: Any) -> SparseSizes:
    """Raw and gzip sizes of ``model``'s weights in the dense and in the sparse (bitmask) safetensors form."""
    from safetensors.torch import save

    state = _state(model)
    dense = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
    tensors, sparse = _sparse_tensors(state, 0.1)
    packed = save(tensors, metadata={"format": _SPARSE_FORMAT, "sparse": json.dumps(sparse)})

    def gz(data: bytes) -> int:
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as f:
            f.write(data)
        return len(buffer.getvalue())

    return SparseSizes(len(dense), gz(dense), len(packed), gz(packed), weight_sparsity(model)["overall"])


# -- one call ----------------------------------------------------------------------------------


def _magnitude_scores(model: Any, data: Any) -> None:
    """No scores: :func:`magnitude_masks` ranks by ``|w|``."""


def _obd_scores(model: Any, data: Any) -> dict[str, torch.Tensor]:
    from modelyard.compress._obd import obd_saliency

    return obd_saliency(model, data)


#: Weight-importance criteria by name (YAML ``compress.prune.method``): ``fn(model, data) -> scores or None``.
PRUNING_CRITERIA: Registry[Callable[[Any, Any], Mapping[str, torch.Tensor] | None]] = Registry("pruning method")
PRUNING_CRITERIA.register("magnitude")(_magnitude_scores)
PRUNING_CRITERIA.register("obd")(_obd_scores)


def prune(
    model: Any,
    data: Any,
    *,
    sparsity: float = 0.8,
    method: str = "magnitude",
    scope: str = "global",
    epochs: int = 0,
    lr: float = 5e-4,
    batch_size: int = 128,
    seed: int = 0,
) -> Any:
    """Prune ``model`` to ``sparsity`` in one call, fine-tuning on ``data`` along a polynomial-decay schedule.

    With ``epochs=0`` the weights of lowest score are zeroed one-shot. Otherwise a
    :class:`GradualPruner` raises sparsity from 0 to ``sparsity`` over the first 60% of
    the ``epochs`` of fine-tuning (:class:`PolynomialDecay`, power 3, masks updated every
    100 steps, or more often so that there are at least 10 updates) and fine-tunes the
    rest at the final sparsity. Masks are folded either way.

    Parameters
    ----------
    model : nn.Module or predictor
        Not modified.
    data : TabularSplit or ImageSplit
        Training rows: fine-tuning, and the Hessian estimate of ``method="obd"``.
    sparsity : float, default=0.8
        Fraction of the ``Linear``/``Conv`` weights set to zero, in ``[0, 1)``.
    method : str, default="magnitude"
        A name in :data:`PRUNING_CRITERIA`: ``"magnitude"`` (``|w|``) or ``"obd"``
        (Optimal Brain Damage saliency, recomputed at each mask update).
    scope : {"layer", "global"}, default="global"
    epochs : int, default=0
        Fine-tuning epochs (0: one-shot, no fine-tuning).
    lr, batch_size, seed
        Fine-tuning settings (:func:`fine_tuner`).

    Returns
    -------
    The pruned copy, of the same kind as ``model``, masks folded.
    """
    sparsity = check_sparsity(sparsity)
    criterion = PRUNING_CRITERIA.get(method)
    _check_scope(scope)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0; got {epochs!r}.")
    if epochs == 0:
        return prune_unstructured(model, sparsity, scope=scope, scores=criterion(model, data), fold=True)
    end = max(1, int(0.6 * epochs * math.ceil(len(data) / batch_size)))
    schedule = PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end, frequency=max(1, min(100, end // 10)))
    saliency = None if method == "magnitude" else (lambda module: criterion(module, data))
    fine_tune = fine_tuner(data, lr=lr, batch_size=batch_size, seed=seed)
    return GradualPruner(schedule, scope=scope, saliency=saliency).fit(model, fine_tune, epochs).model_
