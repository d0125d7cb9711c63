"""Structured pruning: remove whole neurons and channels, and rebuild physically smaller layers.

Zeroing weights leaves every matrix its dense shape, so a dense runtime does the same
work (``torch.nn.utils.prune.ln_structured`` zeroes rows but keeps shapes). Here a unit
(a ``Linear`` output neuron, a ``Conv2d`` output channel) is *removed*: its row of the
layer's weight and its bias entry, its entries in a following ``BatchNorm``, and its
column(s) of the next layer's weight, so the next layer takes fewer inputs. It is the
reverse of the Net2WiderNet widening in :mod:`modelyard.search._morphism`, whose weight
helpers it reuses.

Which units can be removed is read from the module's ``torch.fx`` graph: a layer's
output must reach exactly one ``Linear``/``Conv2d`` (``groups=1``) through a chain of
channel-wise operations (activations, dropout, ``BatchNorm1d/2d``, max/average pooling,
``Flatten`` from dimension 1), and be used nowhere else. Layers whose output is added,
concatenated or returned (the head, skip connections) keep their units. After a
``Flatten`` a channel owns ``in_features / channels`` consecutive columns of the
``Linear`` that follows.

Units are ranked by the L1 or L2 norm of their incoming weights and bias (Li et al.,
"Pruning Filters for Efficient ConvNets", arXiv:1608.08710), or by the sum of any
per-weight score over the row (e.g. :func:`modelyard.compress.obd_saliency`). A unit
whose incoming weights and bias are all zero outputs ``activation(0)``; for ReLU, GELU,
SiLU and tanh that is 0, so removing it leaves the function exactly unchanged (no
BatchNorm in between).

The target is a fraction of units (``amount``) or of the dense model's multiply-adds
(``flops``, counted as :func:`modelyard.search.module_flops` counts them). A layer's
multiply-adds are bilinear in its input and output widths, so the FLOPs of any choice
of widths follow from one counted forward pass; the rebuilt model is counted again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F

from modelyard.compress._prune import (
    clone_module,
    effective_weight,
    fold_masks,
    rewrap,
    unwrap,
)

__all__ = ["StructuredResult", "UnitGroup", "example_inputs", "prune_structured", "unit_groups", "unit_importance"]

#: Modules applied channel by channel: a unit's output stays the same unit after them.
CHANNELWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Hardtanh, nn.Mish,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.BatchNorm1d, nn.BatchNorm2d,
)  # fmt: skip
#: Functions and tensor methods applied channel by channel.
CHANNELWISE_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, torch.tanh, F.tanh, torch.sigmoid, F.sigmoid, F.leaky_relu,
    F.elu, F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
}  # fmt: skip
CHANNELWISE_METHODS = {"relu", "tanh", "sigmoid"}
CRITERIA = ("l1", "l2")


@dataclass(frozen=True)
class UnitGroup:
    """A layer whose output units can be removed, and what must shrink with it.

    Attributes
    ----------
    producer : str
        The ``Linear``/``Conv2d`` whose output units (rows) are removed.
    consumer : str
        The ``Linear``/``Conv2d`` whose input columns shrink with them.
    norms : tuple of str
        ``BatchNorm`` layers in between (sliced with the units).
    span : int
        Consumer input columns per unit: 1, or the spatial size after a ``Flatten``.
    """

    producer: str
    consumer: str
    norms: tuple[str, ...]
    span: int


@dataclass
class StructuredResult:
    """What :func:`prune_structured` did.

    Attributes
    ----------
    model : nn.Module or predictor
        The smaller copy (same kind as the input).
    kept : dict of str to list of int
        Producer layer -> indices of the units it kept (ascending).
    widths : dict of str to tuple of int
        Producer layer -> ``(units before, units after)``.
    flops_before, flops_after : int
        Multiply-adds per row of the dense and of the pruned model.
    params_before, params_after : int
        Parameter counts.
    """

    model: Any
    kept: dict[str, list[int]]
    widths: dict[str, tuple[int, int]]
    flops_before: int
    flops_after: int
    params_before: int
    params_after: int

    @property
    def flops_ratio(self) -> float:
        """``flops_after / flops_before``."""
        return self.flops_after / self.flops_before

    @property
    def removed_fraction(self) -> dict[str, float]:
        """Fraction of units removed from each producer layer."""
        return {n: 1 - after / before for n, (before, after) in self.widths.items()}


# -- graph analysis ----------------------------------------------------------------------


def _is_unit_layer(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)


def _trace(module: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(module)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...) for untraceable code
        raise TypeError(
            f"Structured pruning reads the layer graph with torch.fx, which cannot trace {type(module).__name__} "
            f"({type(exc).__name__}: {exc}). Make its forward traceable (no control flow on tensor values), "
            "or use unstructured pruning (prune_unstructured)."
        ) from exc


def unit_groups(model: Any) -> list[UnitGroup]:
    """The layers of ``model`` whose output units can be removed (see the module docstring).

    Returns
    -------
    list of UnitGroup
        In graph order.
    """
    module = unwrap(model)
    graph = _trace(module).graph
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    groups: list[UnitGroup] = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        producer = module.get_submodule(node.target)
        if not _is_unit_layer(producer):
            continue
        group = _follow(module, node, producer, calls)
        if group is not None:
            groups.append(group)
    return groups


def _follow(module: nn.Module, node: fx.Node, producer: nn.Module, calls: dict[str, int]) -> UnitGroup | None:
    """Walk from ``node`` through channel-wise operations to the single consuming layer, if any."""
    norms: list[str] = []
    flattened = False
    cur = node
    while True:
        users = list(cur.users)
        if len(users) != 1:
            return None
        user = users[0]
        if any(isinstance(a, fx.Node) and a is not cur for a in (*user.args, *user.kwargs.values())):
            return None  # combined with another tensor (add, cat, ...)
        if user.op == "call_module":
            m = module.get_submodule(user.target)
            if calls[user.target] != 1:
                return None
            if _is_unit_layer(m):
                return _group(node.target, user.target, producer, m, norms, flattened)
            if isinstance(m, nn.Flatten):
                if m.start_dim != 1 or m.end_dim != -1:
                    return None
                flattened = True
            elif isinstance(m, CHANNELWISE_MODULES):
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    if m.num_features != _units(producer):
                        return None
                    norms.append(user.target)
            else:
                return None
        elif user.op == "call_function" and user.target in CHANNELWISE_FUNCTIONS:
            pass
        elif user.op == "call_function" and user.target is torch.flatten:
            if _flatten_dims(user) != (1, -1):
                return None
            flattened = True
        elif user.op == "call_method" and user.target in CHANNELWISE_METHODS:
            pass
        elif user.op == "call_method" and user.target == "flatten":
            if _flatten_dims(user) != (1, -1):
                return None
            flattened = True
        else:
            return None
        cur = user


def _flatten_dims(node: fx.Node) -> tuple[int, int]:
    args = list(node.args[1:])
    start = node.kwargs.get("start_dim", args[0] if args else 0)
    end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
    return int(start), int(end)


def _units(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _group(
    producer_name: str, consumer_name: str, producer: nn.Module, consumer: nn.Module, norms: list[str], flattened: bool
) -> UnitGroup | None:
    units = _units(producer)
    if isinstance(consumer, nn.Linear):
        if isinstance(producer, nn.Conv2d) and not flattened:
            return None  # a Linear on (N, C, H, W) acts on W, not on channels
        if consumer.in_features % units:
            return None
        return UnitGroup(producer_name, consumer_name, tuple(norms), consumer.in_features // units)
    if flattened or isinstance(producer, nn.Linear) or consumer.in_channels != units:
        return None
    return UnitGroup(producer_name, consumer_name, tuple(norms), 1)


# -- importance and FLOPs ------------------------------------------------------------------


def unit_importance(
    model: Any,
    groups: Sequence[UnitGroup] | None = None,
    *,
    criterion: str = "l2",
    scores: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Importance of each removable unit: norm of its incoming weights and bias, or its summed scores.

    Parameters
    ----------
    model : nn.Module or predictor
    groups : list of UnitGroup or None, default=None
        :func:`unit_groups` of the model if None.
    criterion : {"l1", "l2"}, default="l2"
        Norm of the unit's row of the weight (with its bias entry).
    scores : dict of str to Tensor or None, default=None
        Per-weight scores by layer (e.g. :func:`obd_saliency`); if given, a unit's
        importance is the sum over its row and ``criterion`` is not used.

    Returns
    -------
    dict of str to Tensor
        Producer layer -> ``(units,)`` float64 importances.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}. Pass scores= for OBD.")
    module = unwrap(model)
    groups = unit_groups(module) if groups is None else groups
    out: dict[str, torch.Tensor] = {}
    for g in groups:
        layer = module.get_submodule(g.producer)
        w = effective_weight(layer).to(torch.float64)
        rows = w.reshape(w.shape[0], -1)  # (units, fan_in)
        if scores is not None:
            if g.producer not in scores:
                raise ValueError(f"scores has no entry for layer {g.producer!r}; give a score for every pruned layer.")
            s = torch.as_tensor(scores[g.producer]).to(torch.float64)
            if s.shape != w.shape:
                raise ValueError(f"scores[{g.producer!r}] has shape {tuple(s.shape)}; the weight is {tuple(w.shape)}.")
            out[g.producer] = s.reshape(s.shape[0], -1).sum(1)
            continue
        if layer.bias is not None:
            rows = torch.cat([rows, layer.bias.detach().to(torch.float64)[:, None]], dim=1)  # (units, fan_in + 1)
        out[g.producer] = rows.abs().sum(1) if criterion == "l1" else rows.square().sum(1).sqrt()
    return out


def _layer_flops(module: nn.Module, inputs: tuple[Any, ...]) -> dict[str, int]:
    """Multiply-adds per row of every Linear/Conv layer, counted as :func:`modelyard.search.module_flops` does."""
    counts: dict[str, int] = {}

    def hook(name: str):
        def fn(m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            if isinstance(m, nn.Linear):
                n = out.numel() * m.in_features
            elif m.transposed:
                n = args[0].numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)
            else:
                n = out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
            counts[name] = counts.get(name, 0) + n

        return fn

    handles = [
        m.register_forward_hook(hook(name))
        for name, m in module.named_modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    ]
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            module(*inputs)
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    rows = int(inputs[0].shape[0]) if inputs and hasattr(inputs[0], "shape") else 1
    return {n: c / max(rows, 1) for n, c in counts.items()}


class _FlopsModel:
    """FLOPs of the model for any widths of the producer layers (bilinear in each layer's widths)."""

    def __init__(self, module: nn.Module, groups: Sequence[UnitGroup], inputs: tuple[Any, ...]) -> None:
        self.flops = _layer_flops(module, inputs)
        self.units = {g.producer: _units(module.get_submodule(g.producer)) for g in groups}
        self.feeds = {g.consumer: g.producer for g in groups}  # consumer -> producer

    def total(self, widths: Mapping[str, int]) -> float:
        total = 0.0
        for name, f in self.flops.items():
            scale = 1.0
            if name in self.units:
                scale *= widths[name] / self.units[name]
            if name in self.feeds:
                p = self.feeds[name]
                scale *= widths[p] / self.units[p]
            total += f * scale
        return total


# -- the transform -----------------------------------------------------------------------------


def example_inputs(model: Any, data: Any, rows: int = 8) -> tuple[Any, ...]:
    """A batch of ``rows`` inputs in the form ``model``'s module takes, from data or tensors.

    ``data`` may be a tensor or tuple of tensors (used as they are), a TabularSplit or
    DataFrame (encoded for a :class:`~modelyard.models.TorchPredictor`), or an ImageSplit
    or uint8 image array (scaled to ``[0, 1]`` for an :class:`~modelyard.models.ImagePredictor`).
    """
    if isinstance(data, torch.Tensor):
        return (data,)
    if isinstance(data, tuple) and all(isinstance(t, torch.Tensor) for t in data):
        return data
    import numpy as np
    import pandas as pd

    from modelyard.data import ImageSplit, TabularSplit

    if isinstance(data, (TabularSplit, pd.DataFrame)):
        from modelyard.data import encode_frame

        schema = getattr(model, "schema", None)
        if schema is None:
            raise TypeError("Tabular data needs a TorchPredictor (it holds the schema); for a bare module pass tensors.")
        frame = data.X if isinstance(data, TabularSplit) else data
        x_num, x_cat = encode_frame(frame.iloc[:rows], schema)
        return torch.from_numpy(x_num), torch.from_numpy(x_cat)
    if isinstance(data, (ImageSplit, np.ndarray)):
        from modelyard.models._image import as_pixels

        shape = getattr(model, "image_shape", None) or getattr(unwrap(model), "image_shape", None)
        x = data.x if isinstance(data, ImageSplit) else data
        if shape is None:
            return (torch.as_tensor(x[:rows]),)
        return (as_pixels(x[:rows], shape),)
    raise TypeError(
        f"example must be input tensors, a TabularSplit/DataFrame or an ImageSplit/image array; got {type(data).__name__}."
    )


def _check_fraction(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{what} must be a number; got {value!r}.")
    return float(value)


def prune_structured(
    model: Any,
    example: Any,
    *,
    flops: float | None = None,
    amount: float | Mapping[str, float] | None = None,
    criterion: str = "l2",
    scores: Mapping[str, torch.Tensor] | None = None,
    scope: str = "layer",
    layers: Sequence[str] | None = None,
) -> StructuredResult:
    """A copy of ``model`` with its least important neurons/channels removed and its layers rebuilt smaller.

    Parameters
    ----------
    model : nn.Module or predictor
        Not modified. Masks of unstructured pruning are folded first (on the copy).
    example : tensors or data
        A batch the module can run (see :func:`example_inputs`): counts FLOPs
        (convolution costs depend on the image size).
    flops : float or None
        Keep at most this fraction of the dense model's multiply-adds, in ``(0, 1]``.
    amount : float, dict of str to float, or None
        Instead of ``flops``: the fraction of units to remove, in ``[0, 1)``, from each
        producer layer (a dict per layer; ``scope="global"``: of all units together).
    criterion : {"l1", "l2"}, default="l2"
        Unit importance: norm of the incoming weights and bias.
    scores : dict of str to Tensor or None, default=None
        Per-weight scores (e.g. :func:`obd_saliency`) summed per unit, instead of a norm.
    scope : {"layer", "global"}, default="layer"
        ``"layer"``: every prunable layer loses the same fraction of its units (for a
        ``flops`` target, the largest common fraction found by bisection).
        ``"global"``: units are removed in order of importance divided by their layer's
        mean importance (norms differ in scale between layers), until the target is met.
    layers : list of str or None, default=None
        Producer layers allowed to shrink; every removable one if None.

    Returns
    -------
    StructuredResult

    Raises
    ------
    ValueError
        Neither or both targets given, a target out of range, no removable units, or a
        ``flops`` target that removing units cannot reach (one unit stays per layer).
    """
    from modelyard.search._morphism import _set_weights, _with_hidden_sizes
    from modelyard.search._objectives import module_flops

    if (flops is None) == (amount is None):
        raise ValueError("Give exactly one target: flops=<fraction of FLOPs to keep> or amount=<fraction of units to remove>.")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global'; got {scope!r}.")
    original = unwrap(model)
    module = fold_masks(clone_module(original))
    module.eval()
    groups = unit_groups(module)
    if layers is not None:
        if isinstance(layers, str):
            raise TypeError(f"layers is a string; pass a list of layer names, e.g. [{layers!r}].")
        known = {g.producer for g in groups}
        unknown = [n for n in layers if n not in known]
        if unknown:
            raise ValueError(f"Layers {unknown} have no removable units; removable: {sorted(known)}.")
        groups = [g for g in groups if g.producer in set(layers)]
    if not groups:
        raise ValueError(
            f"{type(module).__name__} has no removable units: no Linear/Conv2d layer feeds exactly one other "
            "Linear/Conv2d through channel-wise operations."
        )
    inputs = example_inputs(model, example)
    importance = unit_importance(module, groups, criterion=criterion, scores=scores)
    fm = _FlopsModel(module, groups, inputs)
    full = {g.producer: fm.units[g.producer] for g in groups}
    dense = fm.total(full)
    if flops is not None:
        target = _check_fraction(flops, "flops")
        if not 0.0 < target <= 1.0:
            raise ValueError(f"flops is the fraction of FLOPs to keep, in (0, 1]; got {flops!r}.")
        widths = _widths_for_flops(fm, full, importance, target * dense, scope)
    else:
        widths = _widths_for_amount(full, importance, amount, scope)
    kept: dict[str, list[int]] = {}
    with torch.no_grad():
        for g in groups:
            order = torch.argsort(importance[g.producer], descending=True, stable=True)
            keep = torch.sort(order[: widths[g.producer]]).values  # (kept,) ascending: units keep their order
            kept[g.producer] = keep.tolist()
            if len(keep) == full[g.producer]:
                continue
            producer, consumer = module.get_submodule(g.producer), module.get_submodule(g.consumer)
            _set_weights(producer, producer.weight[keep], producer.bias[keep] if producer.bias is not None else None)
            for name in g.norms:
                _slice_norm(module.get_submodule(name), keep)
            cols = (keep[:, None] * g.span + torch.arange(g.span)).reshape(-1)  # (kept * span,)
            _set_weights(consumer, consumer.weight[:, cols], None)
    body = getattr(module, "body", None)
    if isinstance(body, nn.Sequential):
        _with_hidden_sizes(module, [m.out_features for m in body if isinstance(m, nn.Linear)])
    return StructuredResult(
        model=rewrap(model, module),
        kept=kept,
        widths={g.producer: (full[g.producer], widths[g.producer]) for g in groups},
        flops_before=module_flops(original, *inputs),
        flops_after=module_flops(module, *inputs),
        params_before=sum(p.numel() for p in original.parameters()),
        params_after=sum(p.numel() for p in module.parameters()),
    )


def _slice_norm(norm: nn.Module, keep: torch.Tensor) -> None:
    """Keep entries ``keep`` of a BatchNorm's affine parameters and running statistics."""
    for name in ("weight", "bias"):
        p = getattr(norm, name)
        if p is not None:
            setattr(norm, name, nn.Parameter(p.detach()[keep].clone()))
    for name in ("running_mean", "running_var"):
        b = getattr(norm, name)
        if b is not None:
            setattr(norm, name, b[keep].clone())
    norm.num_features = len(keep)


def _widths_for_amount(
    full: dict[str, int], importance: dict[str, torch.Tensor], amount: Any, scope: str
) -> dict[str, int]:
    if isinstance(amount, Mapping):
        if scope == "global":
            raise TypeError("scope='global' takes one amount for all layers; got a dict. Use scope='layer'.")
        unknown = [n for n in amount if n not in full]
        if unknown:
            raise ValueError(f"amount names layers {unknown} without removable units; removable: {sorted(full)}.")
        fractions = {n: _check_fraction(amount.get(n, 0.0), f"amount[{n!r}]") for n in full}
    else:
        fractions = dict.fromkeys(full, _check_fraction(amount, "amount"))
    for n, a in fractions.items():
        if not 0.0 <= a < 1.0:
            raise ValueError(f"amount must be in [0, 1) (the fraction of units removed); got {a!r} for {n!r}.")
    if scope == "layer":
        return {n: max(1, units - round(fractions[n] * units)) for n, units in full.items()}
    n_remove = round(fractions[next(iter(fractions))] * sum(full.values()))
    widths = dict(full)
    for name in _global_order(importance):
        if n_remove == 0:
            break
        if widths[name] > 1:
            widths[name] -= 1
            n_remove -= 1
    return widths


def _global_order(importance: dict[str, torch.Tensor]) -> list[str]:
    """Layer names, one per unit, from the least important unit to the most (importance / layer mean)."""
    keys, names = [], []
    for name, imp in importance.items():
        mean = float(imp.mean())
        rel = imp / mean if mean > 0 else torch.zeros_like(imp)
        keys.append(rel)
        names.extend([name] * len(imp))
    order = torch.argsort(torch.cat(keys), stable=True)
    return [names[i] for i in order.tolist()]


def _widths_for_flops(
    fm: _FlopsModel, full: dict[str, int], importance: dict[str, torch.Tensor], budget: float, scope: str
) -> dict[str, int]:
    floor = {n: 1 for n in full}
    if fm.total(floor) > budget + 1e-9:
        raise ValueError(
            f"A FLOPs target of {budget:.0f} multiply-adds per row cannot be reached by removing units: with one unit "
            f"left in every prunable layer the model still needs {fm.total(floor):.0f}. Raise flops."
        )
    if fm.total(full) <= budget:
        return dict(full)
    if scope == "layer":

        def widths_at(q: float) -> dict[str, int]:
            return {n: max(1, round(q * u)) for n, u in full.items()}

        lo, hi = 0.0, 1.0  # keep fraction: lo meets the budget, hi does not
        for _ in range(60):
            mid = (lo + hi) / 2
            if fm.total(widths_at(mid)) <= budget:
                lo = mid
            else:
                hi = mid
        return widths_at(lo)
    widths = dict(full)
    for name in _global_order(importance):
        if fm.total(widths) <= budget:
            break
        if widths[name] > 1:
            widths[name] -= 1
    return widths
