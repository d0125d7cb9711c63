"""Quantizers and pruners by name, for YAML specs and the CLI.

The Python API takes instances (:class:`~modelyard.compress.QuantSpec`, a pruner
object); names are looked up only where a spec's ``compress.variants`` or the
``modelyard compress --variants`` option names a method. Both resolve here:

* :data:`QUANTIZERS`: name -> :class:`~modelyard.compress.QuantSpec` (ONNX Runtime
  post-training quantization, see :mod:`modelyard.compress._quantize`).
* :data:`PRUNERS`: name -> a :class:`BasePruner` subclass. ``magnitude`` and ``obd``
  zero individual weights (:func:`modelyard.compress.prune`); ``structured_l1`` and
  ``structured_l2`` remove whole neurons and channels
  (:func:`modelyard.compress.prune_structured`).

A *variant* chains at most one structured pruner, one unstructured pruner and one
quantizer, applied in that order (torch first, then ONNX). Its short form, used by the
CLI and accepted in YAML, joins parts with ``+``; a pruner part carries its amount
after a colon::

    dynamic_int8                      quantize only
    magnitude:0.9                     90% of the weights zeroed by magnitude
    prune:0.9                         the same (``prune`` = ``magnitude``)
    structured:0.5                    half of the units removed (``structured`` = ``structured_l2``)
    magnitude:0.5+static_int8         pruned, then quantized

To add a method, subclass :class:`BasePruner` and register it::

    @PRUNERS.register("random")
    class RandomPruner(BasePruner):
        structured = False
        def apply(self, model, train): ...
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from modelyard._registry import Registry
from modelyard.compress._quantize import QuantSpec

__all__ = [
    "PRUNERS",
    "PRUNER_ALIASES",
    "QUANTIZERS",
    "BasePruner",
    "MagnitudePruner",
    "OBDPruner",
    "StructuredPruner",
    "known_parts",
    "parse_variant",
]


class BasePruner(ABC):
    """A pruning method applied to a torch model (an ``nn.Module`` or a predictor holding one).

    Attributes
    ----------
    structured : bool
        True if whole units are removed (the model gets physically smaller layers),
        False if single weights are zeroed (same shapes; only compressed files shrink).
    amount_key : str
        The option that carries the amount in a variant (``sparsity`` or ``fraction``).
    """

    structured: ClassVar[bool] = False
    amount_key: ClassVar[str] = "sparsity"

    @abstractmethod
    def apply(self, model: Any, train: Any) -> tuple[Any, dict[str, Any]]:
        """Return a pruned copy of ``model`` (``model`` is not modified) and figures describing it.

        Parameters
        ----------
        model : nn.Module or predictor
        train : TabularSplit or ImageSplit
            Training rows: fine-tuning, Hessian estimates, example inputs.
        """


def _fraction(value: Any, what: str, *, upper_closed: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (0 < value < 1 or (upper_closed and value == 1)):
        bound = "(0, 1]" if upper_closed else "(0, 1)"
        raise ValueError(f"{what} must be a number in {bound}; got {value!r}")
    return float(value)


def _epochs(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"epochs must be an integer >= 0; got {value!r}.")
    return value


class _Unstructured(BasePruner):
    """Zero the lowest-scoring weights to ``sparsity`` (:func:`modelyard.compress.prune`)."""

    criterion: ClassVar[str] = "magnitude"

    def __init__(self, sparsity: float, *, scope: str = "global", epochs: int = 0, lr: float = 5e-4,
                 batch_size: int = 128, seed: int = 0) -> None:
        self.sparsity = _fraction(sparsity, "sparsity")
        if scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer'; got {scope!r}.")
        self.scope, self.epochs, self.lr, self.batch_size, self.seed = scope, _epochs(epochs), lr, batch_size, seed

    def apply(self, model: Any, train: Any) -> tuple[Any, dict[str, Any]]:
        from modelyard.compress._prune import prune, weight_sparsity

        pruned = prune(model, train, sparsity=self.sparsity, method=self.criterion, scope=self.scope,
                       epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed)
        return pruned, {"weight_sparsity": weight_sparsity(pruned)["overall"]}


class MagnitudePruner(_Unstructured):
    """Zero the weights of smallest ``|w|`` (Han et al., 2015; TF Model Optimization's schedule with ``epochs``)."""

    criterion = "magnitude"


class OBDPruner(_Unstructured):
    """Zero the weights of smallest Optimal Brain Damage saliency ``h_ii w_i^2 / 2`` (LeCun et al., 1990)."""

    criterion = "obd"


class StructuredPruner(BasePruner):
    """Remove the ``fraction`` of units (or keep ``flops`` of the multiply-adds) of least L1/L2 norm.

    See :func:`modelyard.compress.prune_structured`; with ``epochs`` the smaller model is
    then fine-tuned on the training rows (:func:`modelyard.compress.fine_tuner`).
    """

    structured = True
    amount_key = "fraction"
    norm: ClassVar[str] = "l2"

    def __init__(self, fraction: float | None = None, *, flops: float | None = None, scope: str = "layer",
                 epochs: int = 0, lr: float = 5e-4, batch_size: int = 128, seed: int = 0) -> None:
        if (fraction is None) == (flops is None):
            raise ValueError("Give exactly one of fraction (of units removed) or flops (share of multiply-adds kept).")
        self.fraction = None if fraction is None else _fraction(fraction, "fraction")
        self.flops = None if flops is None else _fraction(flops, "flops", upper_closed=True)
        if scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'layer' or 'global'; got {scope!r}.")
        self.scope, self.epochs, self.lr, self.batch_size, self.seed = scope, _epochs(epochs), lr, batch_size, seed

    def apply(self, model: Any, train: Any) -> tuple[Any, dict[str, Any]]:
        from modelyard.compress._prune import fine_tuner, unwrap
        from modelyard.compress._structured import example_inputs, prune_structured

        result = prune_structured(model, example_inputs(model, train), amount=self.fraction, flops=self.flops,
                                  criterion=self.norm, scope=self.scope)
        if self.epochs:
            fine_tuner(train, lr=self.lr, batch_size=self.batch_size, seed=self.seed)(unwrap(result.model),
                                                                                     self.epochs)
        return result.model, {"flops_ratio": result.flops_ratio, "params_before": result.params_before,
                              "params_after": result.params_after,
                              "widths": {k: list(v) for k, v in result.widths.items()}}


class StructuredL1Pruner(StructuredPruner):
    """Structured pruning ranking units by the L1 norm of their incoming weights (Li et al., 2016)."""

    norm = "l1"


class StructuredL2Pruner(StructuredPruner):
    """Structured pruning ranking units by the L2 norm of their incoming weights."""

    norm = "l2"


#: Pruning methods by name (a spec's ``prune.method`` / ``structured.criterion``, a CLI variant part).
PRUNERS: Registry[type[BasePruner]] = Registry("pruner", BasePruner)
PRUNERS.register("magnitude")(MagnitudePruner)
PRUNERS.register("obd")(OBDPruner)
PRUNERS.register("structured_l1")(StructuredL1Pruner)
PRUNERS.register("structured_l2")(StructuredL2Pruner)

#: Short names of the CLI and YAML short form.
PRUNER_ALIASES: dict[str, str] = {"prune": "magnitude", "structured": "structured_l2"}

#: Post-training quantization variants by name (:class:`~modelyard.compress.QuantSpec`).
QUANTIZERS: Registry[QuantSpec] = Registry("quantizer")
for _name, _spec in {
    "dynamic_int8": QuantSpec(mode="dynamic"),
    "dynamic_int8_per_channel": QuantSpec(mode="dynamic", per_channel=True),
    "static_int8": QuantSpec(mode="static", method="minmax"),
    "static_int8_per_channel": QuantSpec(mode="static", method="minmax", per_channel=True),
    "static_int8_entropy": QuantSpec(mode="static", method="entropy"),
    "static_int8_percentile": QuantSpec(mode="static", method="percentile"),
    # the first layer (a CNN's 1- or 3-channel convolution) in float: int8 kernels are slow there
    "static_int8_float_first": QuantSpec(mode="static", method="minmax", float_first=True),
    "fp16": QuantSpec(mode="fp16"),
}.items():
    QUANTIZERS.register(_name)(_spec)


def known_parts() -> list[str]:
    """Every name a short-form variant part may use: quantizers, pruners and their aliases."""
    return sorted({*QUANTIZERS.names(), *PRUNERS.names(), *PRUNER_ALIASES})


def parse_variant(text: str) -> dict[str, Any]:
    """The short form of a variant (``magnitude:0.9+static_int8``) as its YAML mapping.

    Returns
    -------
    dict
        ``{"name": text, "prune": {...}, "structured": {...}, "quantize": name}`` with
        only the parts given, e.g. ``{"name": "magnitude:0.9+static_int8",
        "prune": {"method": "magnitude", "sparsity": 0.9}, "quantize": "static_int8"}``.

    Raises
    ------
    ValueError
        An unknown name (the message lists the known ones), an amount outside (0, 1),
        an amount on a quantizer or none on a pruner, or two parts of one kind.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a variant must be a non-empty string such as 'dynamic_int8'; got {text!r}")
    out: dict[str, Any] = {"name": text.strip()}
    for part in text.strip().split("+"):
        name, sep, amount_text = part.strip().partition(":")
        name = name.strip()
        if name in QUANTIZERS:
            if sep:
                raise ValueError(f"quantizer {name!r} takes no amount; write {name!r} (in {text!r})")
            if "quantize" in out:
                raise ValueError(f"variant {text!r} names two quantizers; give one")
            out["quantize"] = name
            continue
        method = PRUNER_ALIASES.get(name, name)
        if method not in PRUNERS:
            raise ValueError(f"unknown variant part {name!r} in {text!r}; known: {', '.join(known_parts())} "
                             "(pruners take an amount, e.g. magnitude:0.9)")
        cls = PRUNERS.get(method)
        if not sep:
            raise ValueError(f"pruner {name!r} needs an amount in (0, 1), e.g. {name}:0.5 (in {text!r})")
        try:
            amount = float(amount_text)
        except ValueError:
            raise ValueError(f"the amount of {name!r} must be a number in (0, 1); got {amount_text!r} "
                             f"(in {text!r})") from None
        _fraction(amount, f"the {cls.amount_key} of {name!r}")
        key = "structured" if cls.structured else "prune"
        if key in out:
            raise ValueError(f"variant {text!r} names two {'structured' if cls.structured else 'unstructured'} "
                             "pruners; give one")
        if cls.structured:
            out[key] = {"criterion": method.removeprefix("structured_"), "fraction": amount}
        else:
            out[key] = {"method": method, "sparsity": amount}
    return out
