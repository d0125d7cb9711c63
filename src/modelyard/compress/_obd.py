"""Optimal Brain Damage: weight saliency from a diagonal estimate of the loss Hessian.

LeCun, Denker & Solla, "Optimal Brain Damage", NIPS 1989 (1990). Deleting weight
``w_i`` from a trained network (gradient about zero) raises the loss by about
``s_i = 0.5 * h_ii * w_i^2``, where ``h_ii`` is the i-th diagonal entry of the Hessian of
the training loss. OBD prunes the weights of smallest saliency instead of the smallest
magnitude; saliencies are in loss units, so they compare across layers (global pruning).

Two estimates of ``diag(H)`` for the mean loss over the rows of ``data``:

* ``method="gauss-newton"`` (default): the diagonal of the generalized Gauss-Newton
  matrix ``G = mean_i J_i^T H_f,i J_i``, computed **exactly** (no sampling). For
  softmax cross-entropy ``H_f = diag(p) - p p^T = sum_k p_k (e_k - p)(e_k - p)^T``, so
  ``diag(G) = mean_i sum_k p_ik g_ik^2`` with ``g_ik`` the gradient of row i's loss if
  its label were ``k``: the *true Fisher* (labels drawn from the model), taken as an
  exact expectation over the classes rather than sampled. For mean squared error
  ``H_f = 2``. ``g_ik`` is formed per row from each layer's input and output gradient
  (``Linear``: an outer product; ``Conv2d``: the unfolded input patches), one backward
  pass per class. ``G`` drops the term ``sum_k dL/df_k * d^2 f_k / dw^2`` of the
  Hessian, as LeCun et al.'s own approximation does; for a weight followed only by
  piecewise-linear operations (ReLU, max pooling, linear layers) ``f`` is piecewise
  linear in that weight, the dropped term's diagonal is zero, and ``diag(G)`` *is* the
  Hessian diagonal (tested against ``torch.autograd.functional.hessian``). ``G`` is
  positive semi-definite, so saliencies are ``>= 0``.
* ``method="hutchinson"``: ``diag(H) = E[z * (H z)]`` over Rademacher vectors ``z``
  (Bekas, Kokiopoulou & Saad 2007), with ``H z`` by double back-propagation. Unbiased
  for the full Hessian, whatever the activations, but noisy: the variance of entry
  ``i`` is ``sum_{j != i} H_ij^2 / n_probes``, and estimates can be negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from modelyard.compress._prune import (
    clone_module,
    effective_weight,
    fold_masks,
    prunable_layers,
    unwrap,
)

__all__ = ["HESSIAN_METHODS", "hessian_diagonal", "obd_saliency"]

HESSIAN_METHODS = ("gauss-newton", "hutchinson")
#: Rademacher probes per batched Hessian-vector product (memory: this many copies of the weights).
_PROBE_CHUNK = 32


def _batches(data: Any, max_rows: int | None, batch_size: int, seed: int) -> tuple[list[tuple[tuple[torch.Tensor, ...], torch.Tensor]], bool, int]:
    """``([(inputs, targets), ...], classify, n_rows)`` of at most ``max_rows`` seeded-random rows."""
    from modelyard.data import ImageSplit, TabularSplit

    if isinstance(data, (TabularSplit, ImageSplit)):
        from modelyard.train._trainer import _classify, _tensors

        classify = _classify(data)
        xs, y = _tensors(data, classify)
    elif isinstance(data, tuple) and len(data) == 2:
        inputs, y = data
        xs = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        if not all(isinstance(x, torch.Tensor) for x in (*xs, y)):
            raise TypeError("data=(inputs, targets) must hold torch tensors.")
        classify = not y.is_floating_point()
    else:
        raise TypeError(
            f"data must be a TabularSplit, an ImageSplit or (inputs, targets) tensors; got {type(data).__name__}."
        )
    n = len(y)
    if n == 0:
        raise ValueError("The Hessian estimate needs at least one row of data.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    idx = torch.arange(n)
    if max_rows is not None and max_rows < n:
        if max_rows < 1:
            raise ValueError(f"max_rows must be a positive integer or None; got {max_rows!r}.")
        idx = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False)))
    out = []
    for lo in range(0, len(idx), batch_size):
        sel = idx[lo : lo + batch_size]
        out.append((tuple(x[sel] for x in xs), y[sel]))
    return out, classify, len(idx)


def _per_row_square(layer: nn.Module, x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum_i weight_i * (per-row gradient of layer.weight)^2`` from the layer's input and output gradient."""
    if isinstance(layer, nn.Linear):
        if x.dim() == 2:  # x (B, in), delta (B, out)
            return (delta.square() * weight[:, None]).T @ x.square()  # (out, in)
        g = torch.einsum("b...o,b...i->boi", delta, x)  # (B, out, in): summed over positions
        return (g.square() * weight[:, None, None]).sum(0)
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            raise ValueError(
                "The Gauss-Newton diagonal handles Conv2d with groups=1 and numeric zero padding; "
                f"this layer has groups={layer.groups}, padding={layer.padding!r}, padding_mode={layer.padding_mode!r}. "
                "Use method='hutchinson'."
            )
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)  # (B, in*kh*kw, L)
        d = delta.reshape(delta.shape[0], delta.shape[1], -1)  # (B, out, L)
        g = torch.bmm(d, cols.transpose(1, 2))  # (B, out, in*kh*kw)
        return (g.square() * weight[:, None, None]).sum(0).reshape(layer.weight.shape)
    raise ValueError(
        f"The Gauss-Newton diagonal handles Linear and Conv2d layers; got {type(layer).__name__}. Use method='hutchinson'."
    )


def _gauss_newton(module: nn.Module, layers: dict[str, nn.Module], batches: list, classify: bool, n_rows: int) -> dict[str, torch.Tensor]:
    names = list(layers)
    acc = {n: torch.zeros_like(layers[n].weight) for n in names}
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(mod: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            inputs[name], outputs[name] = args[0].detach(), out

        return fn

    handles = [layers[n].register_forward_hook(hook(n)) for n in names]
    try:
        for xs, _ in batches:
            with torch.enable_grad():
                out = module(*xs)  # (B, C) logits or (B,) values
            outs = [outputs[n] for n in names]
            if classify:
                if out.dim() != 2:
                    raise ValueError(f"A classifier must return logits (B, n_classes); got shape {tuple(out.shape)}.")
                p = torch.softmax(out.detach(), dim=1)  # (B, C)
                for k in range(out.shape[1]):
                    g_out = p.clone()
                    g_out[:, k] -= 1.0  # d CE(f, label k) / d f = p - e_k
                    deltas = torch.autograd.grad(out, outs, grad_outputs=g_out, retain_graph=True)
                    for n, delta in zip(names, deltas, strict=True):
                        acc[n] += _per_row_square(layers[n], inputs[n], delta, p[:, k])
            else:
                deltas = torch.autograd.grad(out, outs, grad_outputs=torch.ones_like(out))
                two = torch.full((out.shape[0],), 2.0, dtype=out.dtype)  # H_f of (f - y)^2
                for n, delta in zip(names, deltas, strict=True):
                    acc[n] += _per_row_square(layers[n], inputs[n], delta, two)
    finally:
        for h in handles:
            h.remove()
    return {n: a / n_rows for n, a in acc.items()}


def _hutchinson(
    module: nn.Module, layers: dict[str, nn.Module], batches: list, classify: bool, n_rows: int, n_probes: int, seed: int
) -> dict[str, torch.Tensor]:
    from modelyard.train._trainer import _loss

    weights = [m.weight for m in layers.values()]
    acc = [torch.zeros_like(w) for w in weights]
    generator = torch.Generator().manual_seed(seed)
    for xs, y in batches:
        with torch.enable_grad():
            loss = _loss(module(*xs), y, classify)  # mean over the batch
            grads = torch.autograd.grad(loss, weights, create_graph=True)
            share = len(y) / n_rows / n_probes  # the batch's weight in the mean over all rows
            for lo in range(0, n_probes, _PROBE_CHUNK):
                k = min(_PROBE_CHUNK, n_probes - lo)
                zs = [torch.randint(0, 2, (k, *w.shape), generator=generator).to(w.dtype) * 2 - 1 for w in weights]
                # k Hessian-vector products at once (autograd vmaps over the leading axis).
                hz = torch.autograd.grad(grads, weights, grad_outputs=zs, retain_graph=True, is_grads_batched=True)
                for a, z, h in zip(acc, zs, hz, strict=True):
                    a += share * (z * h).sum(0)
    return dict(zip(layers, acc, strict=True))


def hessian_diagonal(
    model: Any,
    data: Any,
    *,
    method: str = "gauss-newton",
    layers: Sequence[str] | None = None,
    max_rows: int | None = 4096,
    batch_size: int = 256,
    n_probes: int = 16,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Diagonal of the Hessian of the mean training loss with respect to each prunable layer's weight.

    The loss is cross-entropy of the logits for classifiers, mean squared error for
    regression (as :class:`modelyard.train.Trainer` trains them), with the model in
    eval mode (no dropout). See the module docstring for the two methods.

    Parameters
    ----------
    model : nn.Module or predictor
        Not modified (a copy is used, masks folded).
    data : TabularSplit, ImageSplit or (inputs, targets)
        ``inputs`` a tensor or tuple of tensors the module takes; integer targets mean
        a classifier, float targets regression.
    method : {"gauss-newton", "hutchinson"}, default="gauss-newton"
    layers : list of str or None, default=None
        Every ``Linear``/``Conv`` layer if None.
    max_rows : int or None, default=4096
        A seeded random subset of this many rows (all rows if None).
    batch_size : int, default=256
    n_probes : int, default=16
        Rademacher probes per batch (``"hutchinson"`` only).
    seed : int, default=0
        Seeds the row subset and the probes.

    Returns
    -------
    dict of str to Tensor
        Layer name -> ``diag(H)`` entries shaped like the weight.
    """
    if method not in HESSIAN_METHODS:
        raise ValueError(f"method must be one of {HESSIAN_METHODS}; got {method!r}.")
    if method == "hutchinson" and (isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1):
        raise ValueError(f"n_probes must be a positive integer; got {n_probes!r}.")
    module = fold_masks(clone_module(unwrap(model)))
    module.eval()
    found = prunable_layers(module, layers)
    for m in found.values():
        m.weight.requires_grad_(True)
    batches, classify, n_rows = _batches(data, max_rows, batch_size, seed)
    if method == "gauss-newton":
        return _gauss_newton(module, found, batches, classify, n_rows)
    return _hutchinson(module, found, batches, classify, n_rows, n_probes, seed)


def obd_saliency(model: Any, data: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
    """Optimal Brain Damage saliency ``0.5 * h_ii * w_i^2`` of every weight of each prunable layer.

    Parameters
    ----------
    model : nn.Module or predictor
    data : TabularSplit, ImageSplit or (inputs, targets)
    **kwargs
        Passed to :func:`hessian_diagonal` (method, layers, max_rows, batch_size, n_probes, seed).

    Returns
    -------
    dict of str to Tensor
        Layer name -> saliency shaped like the weight; pass it as ``scores`` to
        :func:`modelyard.compress.prune_unstructured` (``scope="global"`` suits it:
        saliencies are loss increases, comparable across layers).

    References
    ----------
    Y. LeCun, J. S. Denker, S. A. Solla, "Optimal Brain Damage", NIPS 2 (1990).
    """
    h = hessian_diagonal(model, data, **kwargs)
    found = prunable_layers(unwrap(model), list(h))

    return {n: 0.5 * h[n] * effective_weight(found[n]).square() for n in h}
