"""Quantization-aware training: fake quantization with a straight-through estimator, exported as QDQ ONNX.

The scheme is that of Jacob et al., "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference" (arXiv:1712.05877):

* **weights**: int8, symmetric, one scale per output channel,
  ``s_c = max|w_c| / 127``, values in ``[-127, 127]`` (zero point 0), recomputed from
  the current weights at every forward pass; 7 bits (``/ 63``, ``[-63, 63]``) with
  ``reduce_range``, by default on x86 CPUs without VNNI, whose integer kernels would
  saturate on 8-bit weights (:mod:`modelyard._cpu`);
* **activations** (the input of every quantized layer): 8-bit affine per tensor,
  ``q = clamp(round(x / s) + z, qmin, qmax)``, with the range ``[min, max]`` tracked
  as an exponential moving average of the batch extremes during training, widened to
  contain 0 so that zero is exact (the paper's "nudging");
* **biases**: int32 with scale ``s_x * s_w`` (zero point 0), as integer kernels add them;
* **gradients**: the straight-through estimator. ``round`` has zero gradient almost
  everywhere, so the backward pass treats fake quantization as the identity for
  inputs inside the representable range and as zero outside it (where ``clamp``
  saturates), as the paper and ``torch.ao``'s ``FakeQuantize`` do.

:func:`prepare_qat` swaps every ``nn.Linear`` and ``nn.Conv2d`` of a copy of the model
for :class:`QATLinear` / :class:`QATConv2d` (same parameter names, plus an
:class:`ActivationQuantizer`), and dropout for identity (dropout's train-time scaling
would skew the activation ranges away from those seen at inference).
:func:`qat_finetune` calibrates the ranges and fine-tunes with modelyard's trainer.
:func:`export_qat_onnx` exports the float graph and inserts QuantizeLinear /
DequantizeLinear pairs whose scales and zero points are exactly the learned ones, so
ONNX Runtime runs the same integer model the fake-quantized torch model simulates
(its graph optimizer then fuses the pairs into integer kernels).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn
from torch.nn import functional as F

from modelyard._atomic import atomic_write_bytes
from modelyard._cpu import weight_qmax
from modelyard.compress._quantize import QUANT_KEY
from modelyard.errors import ModelFormatError

__all__ = [
    "ActivationQuantizer",
    "QATConv2d",
    "QATExport",
    "QATLinear",
    "calibrate_qat",
    "export_qat_onnx",
    "fake_quantize",
    "prepare_qat",
    "qat_finetune",
    "qat_layers",
    "to_float",
    "weight_qparams",
]

#: Weight range of symmetric int8 (restricted to +-127 so that -w is representable).
WEIGHT_QMAX = 127
_INT32 = (-(2**31), 2**31 - 1)
_ACT_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}
#: Smallest scale, so an all-zero channel or a constant activation still gives a valid (positive) scale.
_MIN_SCALE = 1e-8


class _FakeQuantSTE(torch.autograd.Function):
    """Quantize-dequantize forward; straight-through (clipped) backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                qmin: int, qmax: int) -> torch.Tensor:
        v = torch.round(x / scale) + zero_point  # same shape as x; round half to even, as ONNX QuantizeLinear
        inside = (v >= qmin) & (v <= qmax)
        ctx.save_for_backward(inside)
        return (torch.clamp(v, qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    zero_point: torch.Tensor | int,
    qmin: int,
    qmax: int,
    axis: int | None = None,
) -> torch.Tensor:
    """Quantize and dequantize ``x``: ``(clamp(round(x / s) + z, qmin, qmax) - z) * s``.

    The gradient with respect to ``x`` is the straight-through estimator: 1 where
    ``qmin <= round(x / s) + z <= qmax``, 0 outside. Scale and zero point get no gradient.

    Parameters
    ----------
    x : torch.Tensor
    scale : torch.Tensor or float
        A scalar, or one value per slice along ``axis``.
    zero_point : torch.Tensor or int
        Same shape as ``scale``; integer-valued.
    qmin, qmax : int
        The integer range (``0, 255`` for uint8, ``-127, 127`` for symmetric int8 weights).
    axis : int or None, default=None
        The axis ``scale`` runs along (per-channel quantization), or None (per tensor).

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.
    """
    scale_t = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    zp_t = torch.as_tensor(zero_point, dtype=x.dtype, device=x.device)
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale_t, zp_t = scale_t.reshape(shape), zp_t.reshape(shape)
    return _FakeQuantSTE.apply(x, scale_t, zp_t, qmin, qmax)


def weight_qparams(weight: torch.Tensor, qmax: int = WEIGHT_QMAX) -> torch.Tensor:
    """Per-output-channel symmetric int8 scales of a weight ``(out, ...)``: ``max|w_c| / qmax`` (float32)."""
    w = weight.detach().to(torch.float32)
    amax = w.reshape(w.shape[0], -1).abs().amax(dim=1)  # (out,)
    return torch.clamp(amax, min=_MIN_SCALE * qmax) / qmax


class ActivationQuantizer(nn.Module):
    """Per-tensor affine 8-bit fake quantization with EMA-tracked ranges.

    In training mode (or while :attr:`calibrating`), each forward pass updates
    ``min_val``/``max_val`` to ``(1 - momentum) * old + momentum * batch`` (the first
    batch sets them). In eval mode the ranges are frozen.

    Parameters
    ----------
    dtype : {"uint8", "int8"}, default="uint8"
        The integer type ONNX Runtime will use (uint8 activations with int8 weights run
        fastest on x86 VNNI CPUs).
    momentum : float, default=0.01
        EMA weight of the newest batch.
    """

    def __init__(self, dtype: str = "uint8", momentum: float = 0.01) -> None:
        super().__init__()
        if dtype not in _ACT_RANGES:
            raise ValueError(f"Activation dtype must be one of {list(_ACT_RANGES)}; got {dtype!r}.")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1]; got {momentum!r}.")
        self.dtype = dtype
        self.qmin, self.qmax = _ACT_RANGES[dtype]
        self.momentum = float(momentum)
        self.calibrating = False
        self.register_buffer("min_val", torch.zeros(()))
        self.register_buffer("max_val", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Fold the extremes of ``x`` into the running range."""
        lo, hi = x.detach().min().to(torch.float32), x.detach().max().to(torch.float32)
        if not bool(self.initialized):
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
            self.initialized.fill_(True)
        else:
            self.min_val.mul_(1 - self.momentum).add_(self.momentum * lo)
            self.max_val.mul_(1 - self.momentum).add_(self.momentum * hi)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` as float32 scalars; the range is widened to contain 0.

        Raises
        ------
        RuntimeError
            If no data were observed yet (call :func:`calibrate_qat` or train first).
        """
        if not bool(self.initialized):
            raise RuntimeError(
                "This activation quantizer has seen no data; run calibrate_qat(module, batches) or train "
                "the module before evaluating or exporting it."
            )
        lo = torch.clamp(self.min_val, max=0.0)
        hi = torch.clamp(self.max_val, min=0.0)
        scale = torch.clamp((hi - lo) / float(self.qmax - self.qmin), min=_MIN_SCALE)
        zero_point = torch.clamp(torch.round(self.qmin - lo / scale), self.qmin, self.qmax)
        return scale.to(torch.float32), zero_point.to(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantized ``x`` (updating the range first in training mode or while calibrating)."""
        if self.training or self.calibrating:
            self.observe(x)
        scale, zero_point = self.qparams()
        return fake_quantize(x, scale, zero_point, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, momentum={self.momentum}"


class _QATMixin:
    """Fake-quantized input, weight (per channel) and bias shared by the QAT layers."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    input_quant: ActivationQuantizer
    #: Largest weight magnitude in integers: 127 (8 bits) or 63 (7 bits, ``reduce_range``).
    weight_qmax: int = WEIGHT_QMAX

    def quantized_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(x_q, w_q, b_q)``: the fake-quantized input, weight and bias of a forward pass."""
        x_q = self.input_quant(x)
        s_x, _ = self.input_quant.qparams()
        s_w = self.weight_scales()  # (out,)
        w_q = fake_quantize(self.weight, s_w, 0, -self.weight_qmax, self.weight_qmax, axis=0)
        b_q = None
        if self.bias is not None:
            b_q = fake_quantize(self.bias, s_x * s_w, 0, *_INT32, axis=0)
        return x_q, w_q, b_q

    def weight_scales(self) -> torch.Tensor:
        """The per-channel weight scales the export writes."""
        return weight_qparams(self.weight, self.weight_qmax)


class QATLinear(_QATMixin, nn.Linear):
    """``nn.Linear`` with fake-quantized input, weight (per output channel, symmetric int8) and bias (int32).

    Build it with :meth:`from_float`; parameter names stay ``weight`` and ``bias``.
    """

    input_quant: ActivationQuantizer

    @classmethod
    def from_float(cls, layer: nn.Linear, quantizer: ActivationQuantizer, qmax: int = WEIGHT_QMAX) -> QATLinear:
        """A QAT layer sharing ``layer``'s parameters, its weights quantized to ``[-qmax, qmax]``."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = layer.in_features, layer.out_features
        new.weight = layer.weight
        new.bias = layer.bias
        new.input_quant = quantizer
        new.weight_qmax = int(qmax)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q, w_q, b_q = self.quantized_params(x)
        return F.linear(x_q, w_q, b_q)

    def to_float(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the same parameters."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        out.weight, out.bias = self.weight, self.bias
        return out


class QATConv2d(_QATMixin, nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized input, weight (per output channel, symmetric int8) and bias (int32).

    Build it with :meth:`from_float`; parameter names stay ``weight`` and ``bias``.
    """

    input_quant: ActivationQuantizer

    @classmethod
    def from_float(cls, layer: nn.Conv2d, quantizer: ActivationQuantizer, qmax: int = WEIGHT_QMAX) -> QATConv2d:
        """A QAT layer sharing ``layer``'s parameters and geometry, its weights quantized to ``[-qmax, qmax]``."""
        new = copy.copy(layer)  # shares parameters; copies geometry attributes
        new.__class__ = cls
        new._modules = dict(layer._modules)
        new._parameters = dict(layer._parameters)
        new._buffers = dict(layer._buffers)
        new.input_quant = quantizer
        new.weight_qmax = int(qmax)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q, w_q, b_q = self.quantized_params(x)
        return self._conv_forward(x_q, w_q, b_q)

    def to_float(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the same parameters and geometry."""
        out = copy.copy(self)
        out.__class__ = nn.Conv2d
        out._modules = {k: v for k, v in self._modules.items() if k != "input_quant"}
        out._parameters = dict(self._parameters)
        out._buffers = dict(self._buffers)
        out.__dict__.pop("weight_qmax", None)
        return out


QAT_LAYERS = (QATLinear, QATConv2d)


def _set_child(root: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, child)


def prepare_qat(
    module: nn.Module,
    *,
    activation_type: str = "uint8",
    momentum: float = 0.01,
    layers: Iterable[str] | None = None,
    reduce_range: bool | None = None,
) -> nn.Module:
    """A copy of ``module`` with fake quantization on its Linear and Conv2d layers.

    Parameters
    ----------
    module : torch.nn.Module
        Not modified.
    activation_type : {"uint8", "int8"}, default="uint8"
    momentum : float, default=0.01
        EMA weight of the newest batch in the activation ranges.
    layers : iterable of str or None, default=None
        Qualified names of the layers to quantize (``"body.0"``); all Linear and Conv2d
        layers if None. The others stay float.
    reduce_range : bool or None, default=None
        7-bit weights (``[-63, 63]``) instead of 8-bit. None chooses for this CPU: 7 bits
        on x86 without VNNI, whose int8 kernels saturate on 8-bit weights.

    Returns
    -------
    torch.nn.Module
        The copy, of the same class, with :class:`QATLinear` / :class:`QATConv2d` in
        place of the chosen layers and ``nn.Identity`` in place of dropout.

    Raises
    ------
    ValueError
        If the module has no Linear or Conv2d layer, or ``layers`` names one it lacks.
    """
    qat = copy.deepcopy(module)
    found = {n: m for n, m in qat.named_modules() if type(m) in (nn.Linear, nn.Conv2d)}
    if not found:
        raise ValueError(
            f"{type(module).__name__} has no nn.Linear or nn.Conv2d layer to quantize; QAT needs at least one."
        )
    chosen = list(found) if layers is None else list(layers)
    missing = [n for n in chosen if n not in found]
    if missing:
        raise ValueError(f"Layers {missing} are not Linear or Conv2d layers of the module; it has {list(found)}.")
    qmax = weight_qmax(reduce_range)
    for name in chosen:
        layer = found[name]
        cls = QATLinear if isinstance(layer, nn.Linear) else QATConv2d
        _set_child(qat, name, cls.from_float(layer, ActivationQuantizer(activation_type, momentum), qmax))
    for name, m in list(qat.named_modules()):
        if isinstance(m, nn.Dropout):
            _set_child(qat, name, nn.Identity())
    return qat


def qat_layers(module: nn.Module) -> dict[str, QATLinear | QATConv2d]:
    """The fake-quantized layers of a module, by qualified name."""
    return {n: m for n, m in module.named_modules() if isinstance(m, QAT_LAYERS)}


def to_float(module: nn.Module) -> nn.Module:
    """A copy of a QAT module with plain float layers holding the (trained) weights."""
    out = copy.deepcopy(module)
    for name, layer in qat_layers(out).items():
        _set_child(out, name, layer.to_float())
    return out


@torch.no_grad()
def calibrate_qat(module: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Initialize the activation ranges of a QAT module by running it on ``batches`` in eval mode.

    Parameters
    ----------
    module : torch.nn.Module
        From :func:`prepare_qat`; calibrated in place (and returned).
    batches : iterable
        Each item is the module's positional input: a tensor, or a tuple of tensors
        (``(x_num, x_cat)`` for tabular modules).
    """
    quantizers = [m for m in module.modules() if isinstance(m, ActivationQuantizer)]
    was_training = module.training
    module.eval()
    for q in quantizers:
        q.calibrating = True
    try:
        for batch in batches:
            module(*batch) if isinstance(batch, tuple) else module(batch)
    finally:
        for q in quantizers:
            q.calibrating = False
        module.train(was_training)
    return module


def _check_predictor(predictor: Any) -> None:
    """Raise a TypeError naming the fix unless ``predictor`` is a torch predictor."""
    from modelyard.models._image import ImagePredictor
    from modelyard.models._torch import TorchPredictor

    if not isinstance(predictor, (ImagePredictor, TorchPredictor)):
        raise TypeError(
            f"QAT works on torch predictors (TorchPredictor, ImagePredictor); got {type(predictor).__name__}. "
            "Use post-training quantization (modelyard.compress.quantize) for other models."
        )


def _wrap(predictor: Any, module: nn.Module) -> Any:
    """A predictor of the same kind as ``predictor`` around ``module``."""
    from modelyard.models._image import ImagePredictor
    from modelyard.models._torch import TorchPredictor

    _check_predictor(predictor)
    if isinstance(predictor, ImagePredictor):
        return ImagePredictor(module, predictor.classes, predictor.config, batch_size=predictor.batch_size)
    return TorchPredictor(module, predictor.schema, config=predictor.config, batch_size=predictor.batch_size)


def qat_finetune(
    predictor: Any,
    train: Any,
    valid: Any,
    *,
    epochs: int = 2,
    lr: float = 1e-4,
    batch_size: int = 128,
    activation_type: str = "uint8",
    momentum: float = 0.01,
    calibration_rows: int = 2048,
    layers: Iterable[str] | None = None,
    reduce_range: bool | None = None,
    seed: int = 0,
    callback: Any = None,
) -> Any:
    """Quantization-aware fine-tuning of a trained torch predictor (the original is not modified).

    Steps: :func:`prepare_qat` on a copy of the module, :func:`calibrate_qat` on up to
    ``calibration_rows`` training rows, then ``epochs`` of training with
    :class:`modelyard.train.Trainer` (AdamW, the best validation epoch kept) while the
    activation ranges follow their moving averages.

    Parameters
    ----------
    predictor : TorchPredictor or ImagePredictor
        A trained float model.
    train, valid : TabularSplit or ImageSplit
    epochs : int, default=2
    lr : float, default=1e-4
        Fine-tuning starts from trained weights, so a tenth of the usual rate.
    batch_size : int, default=128
    activation_type : {"uint8", "int8"}, default="uint8"
    momentum : float, default=0.01
    calibration_rows : int, default=2048
    layers : iterable of str or None, default=None
        Layers to quantize (qualified names); all Linear and Conv2d if None.
    reduce_range : bool or None, default=None
        7-bit weights; None chooses for this CPU (see :func:`prepare_qat`).
    seed : int, default=0
    callback : callable or None
        ``callback(epoch, max_epochs, logs)`` after every epoch.

    Returns
    -------
    TorchPredictor or ImagePredictor
        Predicting with fake quantization; export it with :func:`export_qat_onnx`.
    """
    from modelyard.data import ImageSplit, TabularSplit
    from modelyard.models._image import ImagePredictor, as_pixels
    from modelyard.train import Trainer

    _check_predictor(predictor)
    qat = prepare_qat(predictor.module, activation_type=activation_type, momentum=momentum, layers=layers,
                      reduce_range=reduce_range)
    n = min(len(train), calibration_rows)
    rows = np.random.default_rng(seed).choice(len(train), size=n, replace=False)
    if isinstance(predictor, ImagePredictor):
        if not isinstance(train, ImageSplit):
            raise TypeError("An image predictor fine-tunes on ImageSplit train and valid splits.")
        x = as_pixels(train.x[np.sort(rows)], predictor.image_shape)
        batches: list[Any] = [x[i : i + batch_size] for i in range(0, n, batch_size)]
    else:
        if not isinstance(train, TabularSplit):
            raise TypeError("A tabular predictor fine-tunes on TabularSplit train and valid splits.")
        x_num, x_cat = predictor.encode(train.X.iloc[np.sort(rows)])
        batches = [(x_num[i : i + batch_size], x_cat[i : i + batch_size]) for i in range(0, n, batch_size)]
    calibrate_qat(qat, batches)
    trainer = Trainer(max_epochs=epochs, batch_size=batch_size, lr=lr, patience=epochs, seed=seed,
                      callback=callback)
    trainer.fit(qat, train, valid)
    out = _wrap(predictor, qat)
    out.history_ = trainer.history_
    out.best_epoch_ = trainer.best_epoch_
    return out


# -- export ---------------------------------------------------------------------------
@dataclass(frozen=True)
class QATExport:
    """What :func:`export_qat_onnx` wrote.

    Attributes
    ----------
    path : pathlib.Path
    layers : dict of str to str
        QAT layer name -> ONNX node name it was matched to.
    max_abs_diff : float
        Largest absolute difference of probabilities between ONNX Runtime and the
        fake-quantized torch model on the sample.
    """

    path: Path
    layers: dict[str, str]
    max_abs_diff: float


def _find_node(graph: onnx.GraphProto, weight: np.ndarray, name_hint: str) -> tuple[onnx.NodeProto, bool]:
    """The Gemm/MatMul/Conv node whose constant weight is ``weight`` (``(out, in)`` or conv layout).

    Returns the node and whether the stored weight is transposed (``(in, out)``: MatMul,
    or Gemm without ``transB``). Matches by initializer name suffix first, then by value.
    """
    inits = {t.name: t for t in graph.initializer}
    candidates = []
    for node in graph.node:
        if node.op_type not in ("Gemm", "MatMul", "Conv") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not trans_b)
        candidates.append((node, transposed))
    for node, transposed in candidates:
        if node.input[1].endswith(f"{name_hint}.weight"):
            return node, transposed
    for node, transposed in candidates:
        stored = numpy_helper.to_array(inits[node.input[1]])
        if stored.shape == (weight.T.shape if transposed else weight.shape) and np.array_equal(
            stored, weight.T if transposed else weight
        ):
            return node, transposed
    raise ModelFormatError(
        f"No Gemm, MatMul or Conv node in the exported graph holds the weight of layer {name_hint!r}; "
        "the exporter changed the layer (a fused or folded weight). Export the model without folding it."
    )


def _insert_qdq(model: onnx.ModelProto, name: str, layer: QATLinear | QATConv2d) -> str:
    """Rewrite the node of ``layer`` as DQ(int8 weight), DQ(int32 bias) and a QDQ pair on its input."""
    graph = model.graph
    weight = layer.weight.detach().to(torch.float32)
    node, transposed = _find_node(graph, weight.numpy(), name)
    s_x, z_x = layer.input_quant.qparams()
    s_w = layer.weight_scales()  # (out,)
    act_np = np.uint8 if layer.input_quant.dtype == "uint8" else np.int8
    tag = f"qat/{name}"
    # Integers computed with the same torch ops as the fake quantization, so they are the same numbers.
    w_shape = [-1] + [1] * (weight.dim() - 1)
    qmax = layer.weight_qmax
    w_int = torch.clamp(torch.round(weight / s_w.reshape(w_shape)), -qmax, qmax).to(torch.int8).numpy()
    if transposed:
        w_int = w_int.T
    axis = 1 if transposed else 0
    inits = [
        numpy_helper.from_array(np.asarray(s_x.item(), dtype=np.float32), f"{tag}/x_scale"),
        numpy_helper.from_array(np.asarray(z_x.item(), dtype=act_np), f"{tag}/x_zero_point"),
        numpy_helper.from_array(np.ascontiguousarray(w_int), f"{tag}/w_int8"),
        numpy_helper.from_array(s_w.numpy().astype(np.float32), f"{tag}/w_scale"),
        numpy_helper.from_array(np.zeros(len(s_w), dtype=np.int8), f"{tag}/w_zero_point"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", [node.input[0], f"{tag}/x_scale", f"{tag}/x_zero_point"],
                         [f"{tag}/x_q"], name=f"{tag}/QuantizeLinear"),
        helper.make_node("DequantizeLinear", [f"{tag}/x_q", f"{tag}/x_scale", f"{tag}/x_zero_point"],
                         [f"{tag}/x_dq"], name=f"{tag}/DequantizeLinear"),
        helper.make_node("DequantizeLinear", [f"{tag}/w_int8", f"{tag}/w_scale", f"{tag}/w_zero_point"],
                         [f"{tag}/w_dq"], name=f"{tag}/weight/DequantizeLinear", axis=axis),
    ]
    old_weight = node.input[1]
    node.input[0], node.input[1] = f"{tag}/x_dq", f"{tag}/w_dq"
    old_bias = None
    if layer.bias is not None and len(node.input) > 2 and node.input[2]:
        s_b = s_x * s_w  # (out,) float32, as in QATLinear/QATConv2d.quantized_params
        b_int = torch.clamp(torch.round(layer.bias.detach().to(torch.float32) / s_b), *_INT32)
        inits += [
            numpy_helper.from_array(b_int.to(torch.int64).numpy().astype(np.int32), f"{tag}/b_int32"),
            numpy_helper.from_array(s_b.numpy().astype(np.float32), f"{tag}/b_scale"),
            numpy_helper.from_array(np.zeros(len(s_b), dtype=np.int32), f"{tag}/b_zero_point"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", [f"{tag}/b_int32", f"{tag}/b_scale", f"{tag}/b_zero_point"],
                                      [f"{tag}/b_dq"], name=f"{tag}/bias/DequantizeLinear", axis=0))
        old_bias, node.input[2] = node.input[2], f"{tag}/b_dq"
    graph.initializer.extend(inits)
    # Insert the new nodes right before the layer's node, keeping the graph topologically sorted.
    position = list(graph.node).index(node)
    for offset, new in enumerate(nodes):
        graph.node.insert(position + offset, new)
    node_name = node.name
    # The graph holds copies of the inserted nodes; hoist those.
    _hoist(graph, graph.node[position], graph.node[position + 1])
    used = {i for n in graph.node for i in n.input}
    for stale in (old_weight, old_bias):
        if stale is not None and stale not in used:
            keep = [t for t in graph.initializer if t.name != stale]
            del graph.initializer[:]
            graph.initializer.extend(keep)
    return node_name


#: Operators in front of which a QuantizeLinear/DequantizeLinear pair is repeated without changing any
#: value: they only move or select elements (max pooling commutes with the monotone quantize-dequantize).
_TRANSPARENT = ("Flatten", "Reshape", "MaxPool", "Identity", "Squeeze", "Unsqueeze")


def _hoist(graph: onnx.GraphProto, q: onnx.NodeProto, dq: onnx.NodeProto) -> None:
    """Repeat the pair ``q -> dq`` in front of the shape and pooling operators that feed it.

    ``layer(flatten(maxpool(relu(conv(x)))))`` with the pair before ``layer`` becomes
    ``relu(conv(x)) -> Q -> DQ -> maxpool -> Q -> DQ -> flatten -> Q -> DQ -> layer``,
    all pairs with the same scale and zero point. The values are unchanged (a pair is
    idempotent, and max pooling commutes with the monotone quantize-dequantize; see
    :data:`_TRANSPARENT`), but ONNX Runtime now sees ``Conv -> Relu -> Q`` and runs the
    convolution as an integer kernel with an 8-bit output, and the pooling and
    flattening on int8 tensors, as in the graphs its own static quantizer writes.
    """
    graph_outputs = {o.name for o in graph.output}
    added: list[onnx.NodeProto] = []
    first_input = q.input[0]
    k = 0
    while True:
        producer = next((n for n in graph.node if first_input in n.output), None)
        if producer is None or producer.op_type not in _TRANSPARENT or producer.output[0] in graph_outputs:
            break
        if sum(producer.output[0] in n.input for n in [*graph.node, *added]) != 1:
            break
        k += 1
        source = producer.input[0]
        q_out, dq_out = f"{q.output[0]}/{k}", f"{dq.output[0]}/{k}"
        added += [
            helper.make_node("QuantizeLinear", [source, *q.input[1:]], [q_out], name=f"{q.name}/{k}"),
            helper.make_node("DequantizeLinear", [q_out, *dq.input[1:]], [dq_out], name=f"{dq.name}/{k}"),
        ]
        producer.input[0] = dq_out
        first_input = source
    if added:
        graph.node.extend(added)
        _toposort(graph)


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (stable otherwise)."""
    nodes = list(graph.node)
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    ordered: list[onnx.NodeProto] = []
    pending = nodes
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ModelFormatError("The exported graph has a cycle or a dangling input; cannot insert QDQ nodes.")
        pending = rest
    copies = [onnx.NodeProto() for _ in ordered]
    for c, n in zip(copies, ordered, strict=True):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def export_qat_onnx(
    predictor: Any,
    path: str | os.PathLike[str],
    *,
    sample: Any,
    atol: float = 0.02,
) -> QATExport:
    """Export a QAT predictor as a QDQ ONNX model whose scales are the learned ones.

    The float graph is exported by :func:`modelyard.compress.export_onnx` (same inputs
    as the float model: raw columns or ``image``); then each fake-quantized layer's node
    gets a QuantizeLinear/DequantizeLinear pair on its input (learned scale and zero
    point), an int8 weight with per-channel scales and an int32 bias, each behind a
    DequantizeLinear. The result is checked against the torch model on ``sample``
    before it is written (atomically).

    Parameters
    ----------
    predictor : TorchPredictor or ImagePredictor
        From :func:`qat_finetune` (its module holds QAT layers).
    path : path
        Destination ``.onnx``.
    sample : DataFrame or ndarray
        Raw rows or uint8 images to check parity on.
    atol : float, default=0.02
        Largest allowed difference of probabilities. ONNX Runtime and torch compute
        ``x / s`` in float32 alike, but integer kernels sum in another order and may
        requantize intermediate results, so an activation lying on a rounding boundary
        can land one quantization step away; that moves a probability by far less than
        0.02 (measured: about 1e-3 on the Fashion-MNIST MLP), while a wrong scale or a
        missed layer moves it by much more.

    Returns
    -------
    QATExport

    Raises
    ------
    ValueError
        The module has no QAT layer.
    ModelFormatError
        A layer's node cannot be found, or parity fails; nothing is written.
    """
    from modelyard.compress._export import export_onnx
    from modelyard.models._image import ImagePredictor, OnnxImagePredictor
    from modelyard.models._onnx import OnnxPredictor

    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"export_qat_onnx writes .onnx files; got {str(path)!r}.")
    layers = qat_layers(predictor.module)
    if not layers:
        raise ValueError("The predictor's module has no QAT layer; prepare it with qat_finetune or prepare_qat first.")
    float_predictor = _wrap(predictor, to_float(predictor.module))
    with tempfile.TemporaryDirectory(prefix="modelyard-qat-") as tmp:
        float_path = Path(tmp) / "float.onnx"
        export_onnx(float_predictor, float_path, sample=sample)
        model = onnx.load(str(float_path))
    matched = {name: _insert_qdq(model, name, layer) for name, layer in layers.items()}
    record = {"mode": "qat", "scheme": "weights int8 symmetric per channel, activations 8-bit affine per tensor (EMA)",
              "activation_type": next(iter(layers.values())).input_quant.dtype,
              "weight_bits": sorted({8 if layer.weight_qmax > 63 else 7 for layer in layers.values()}),
              "layers": matched}
    model.metadata_props.add(key=QUANT_KEY, value=json.dumps(record))
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    image = isinstance(predictor, ImagePredictor)
    served = OnnxImagePredictor(data) if image else OnnxPredictor(data)
    expected, got = predictor.predict_proba(sample), served.predict_proba(sample)
    diff = float(np.max(np.abs(expected - got))) if len(expected) else 0.0
    if not diff <= atol:
        raise ModelFormatError(
            f"QAT export failed the parity check: max |onnx - torch fake-quant| = {diff:.3g} exceeds atol={atol:g}; "
            f"nothing was written to {path}."
        )
    atomic_write_bytes(path, data)
    return QATExport(path=path, layers=matched, max_abs_diff=diff)
