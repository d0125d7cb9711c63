"""Export a predictor to an ONNX file that takes raw columns, checked for parity before it is written.

How an export runs
------------------
:func:`export_onnx` looks up the exporter registered for the predictor's type in
:data:`ONNX_EXPORTERS` (walking the type's MRO, so subclasses inherit an exporter),
calls it to get a *core* ``onnx.ModelProto``, wraps that with
:func:`modelyard.compress.with_raw_inputs` so the final model takes one input per raw
column, runs the result in a real ``onnxruntime.InferenceSession`` on ``sample`` and
compares it with the predictor's own output. Only when the largest absolute
difference is within ``atol`` is the file written, atomically.

Contract for an exporter
------------------------
An exporter is ``fn(predictor) -> onnx.ModelProto`` returning the core graph:

* inputs: ``x_num`` float32 ``[N, n_numeric]`` and/or ``x_cat`` int64
  ``[N, n_categorical]`` (only those the schema has), or ``x`` float32
  ``[N, n_numeric + n_categorical]`` (numeric columns, then categorical codes as
  floats). Encoding as :func:`modelyard.data.encode_frame`: NaN for a missing
  number, code 0 for a missing or unseen category, ``i + 1`` for
  ``categories[i]``. The batch axis must be dynamic.
* output: ``probabilities`` float32 ``[N, n_classes]`` for classifiers (matching
  ``predict_proba``), ``prediction`` float32 ``[N]`` for regression (matching
  ``predict``).
* any opset ONNX Runtime runs; ``ai.onnx.ml`` operators (tree ensembles) are fine.

Register it from the module that defines the predictor, at import time::

    from modelyard.compress._export import ONNX_EXPORTERS

    @ONNX_EXPORTERS.register(GradientBoostingPredictor)
    def _gbm_core(predictor: GradientBoostingPredictor) -> onnx.ModelProto:
        ...

(import ``modelyard.compress._export`` itself, not the ``modelyard.models`` package,
to keep import order free of cycles).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import torch
from torch import nn

from modelyard.compress._onnx_frontend import OUTPUT_NAMES, with_raw_inputs
from modelyard.errors import ModelFormatError
from modelyard.models._io import atomic_write_bytes
from modelyard.models._onnx import OnnxPredictor
from modelyard.models._torch import TorchPredictor

__all__ = ["ExportResult", "ExporterRegistry", "ONNX_EXPORTERS", "export_onnx", "TORCH_OPSET"]

#: ONNX opset of torch exports: supported by torch's TorchScript exporter and by every
#: ONNX Runtime since 1.12.
TORCH_OPSET = 17

#: Default parity tolerance. The same float32 computation run by torch and by ONNX
#: Runtime differs only in summation order and in exp/log/sin kernels: about 1e-7 on
#: probabilities. 1e-5 leaves a 100x margin, yet any real export bug (a wrong
#: preprocessing constant, a dropped layer) moves outputs by far more.
DEFAULT_ATOL = 1e-5

Exporter = Callable[[Any], onnx.ModelProto]


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes
    ----------
    path : pathlib.Path
        The ONNX file.
    max_abs_diff : float
        Largest absolute difference between ONNX Runtime and the source predictor on the sample.
    n_rows : int
        Rows of the sample the parity check ran on.
    opset : int
        The model's default-domain ONNX opset.
    """

    path: Path
    max_abs_diff: float
    n_rows: int
    opset: int


class ExporterRegistry:
    """Core-graph exporters keyed by predictor type; lookup follows the type's MRO."""

    def __init__(self) -> None:
        self._items: dict[type, Exporter] = {}

    def register(self, predictor_type: type) -> Callable[[Exporter], Exporter]:
        """Decorator registering ``fn(predictor) -> onnx.ModelProto`` for ``predictor_type``.

        Raises ``TypeError`` unless ``predictor_type`` is a class, ``ValueError`` if one is
        already registered for it.
        """
        if not isinstance(predictor_type, type):
            raise TypeError(f"ONNX exporters are registered for a predictor class; got {predictor_type!r}.")

        def decorator(fn: Exporter) -> Exporter:
            if not callable(fn):
                raise TypeError(f"An ONNX exporter must be callable(predictor) -> onnx.ModelProto; got {fn!r}.")
            if predictor_type in self._items:
                raise ValueError(f"An ONNX exporter for {predictor_type.__name__} is already registered.")
            self._items[predictor_type] = fn
            return fn

        return decorator

    def get(self, predictor: Any) -> Exporter:
        """The exporter for ``predictor``'s type or its nearest registered base class."""
        for cls in type(predictor).__mro__:
            if cls in self._items:
                return self._items[cls]
        raise TypeError(
            f"No ONNX exporter for {type(predictor).__name__}; known: {self.names()}. "
            "Register one with modelyard.compress.ONNX_EXPORTERS.register(YourPredictor)."
        )

    def __contains__(self, predictor_type: object) -> bool:
        return predictor_type in self._items

    def names(self) -> list[str]:
        return sorted(t.__name__ for t in self._items)


#: Exporters of core ONNX graphs, by predictor type (see the module docstring).
ONNX_EXPORTERS = ExporterRegistry()


class _TorchCore(nn.Module):
    """The module with a softmax (classifiers) and only the inputs the schema needs, for tracing."""

    def __init__(self, module: nn.Module, inputs: list[str], classify: bool) -> None:
        super().__init__()
        self.module = module
        self.inputs = inputs
        self.classify = classify

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.inputs, xs, strict=True))
        out = self.module(named.get("x_num"), named.get("x_cat"))  # (N, n_classes) or (N,)
        return torch.softmax(out, dim=1) if self.classify else out.reshape(-1)  # (N, n_classes) or (N,)


@ONNX_EXPORTERS.register(TorchPredictor)
def export_torch_core(predictor: TorchPredictor) -> onnx.ModelProto:
    """The core graph of a :class:`TorchPredictor`, traced by torch's TorchScript exporter.

    Inputs ``x_num`` float32 ``[N, n_numeric]`` and/or ``x_cat`` int64
    ``[N, n_categorical]``; output ``probabilities`` after a softmax, or ``prediction``.
    """
    schema = predictor.schema
    classify = schema.task != "regression"
    inputs, example = [], []
    if schema.numeric:
        inputs.append("x_num")
        example.append(torch.zeros(2, len(schema.numeric), dtype=torch.float32))  # (2, n_num)
    if schema.categorical:
        inputs.append("x_cat")
        example.append(torch.zeros(2, len(schema.categorical), dtype=torch.int64))  # (2, n_cat); 0 is always valid
    output = OUTPUT_NAMES[0] if classify else OUTPUT_NAMES[1]
    core = _TorchCore(predictor.module, inputs, classify)
    was_training = predictor.module.training
    predictor.module.eval()
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch warns that the TorchScript exporter is legacy; we choose it on purpose
            # (see dynamo=False below), so the warning would only be noise for users.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                core,
                tuple(example),
                buffer,
                input_names=inputs,
                output_names=[output],
                dynamic_axes={name: {0: "N"} for name in [*inputs, output]},
                opset_version=TORCH_OPSET,
                do_constant_folding=True,
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, a stable graph
            )
    finally:
        predictor.module.train(was_training)
    return onnx.load_from_string(buffer.getvalue())


def export_onnx(
    predictor: Any,
    path: str | os.PathLike[str],
    *,
    sample: pd.DataFrame,
    atol: float = DEFAULT_ATOL,
) -> ExportResult:
    """Export ``predictor`` to an ONNX file that takes raw columns, after a parity check.

    Parameters
    ----------
    predictor : Predictor
        A predictor whose type (or a base of it) has an exporter in :data:`ONNX_EXPORTERS`.
    path : str or os.PathLike
        Destination, ending in ``.onnx``; written atomically, and only if parity holds.
    sample : pandas.DataFrame or numpy.ndarray
        Raw rows (the feature columns; the target and sensitive columns may be present)
        on which ONNX Runtime and the predictor must agree. Include rows with missing
        values and unseen categories to check those paths too. For an
        :class:`~modelyard.models.ImagePredictor`: uint8 images ``(N, C, H, W)``; the
        model then takes one input ``image`` float32 ``[N, C, H, W]`` in ``[0, 1]``.
    atol : float, default=1e-5
        Largest allowed absolute difference of probabilities (classifiers). For
        regression the bound is ``atol * max(1, max |prediction|)``: predictions are in
        target units, and float32 resolves only about 6e-8 of a value's size.

    Returns
    -------
    ExportResult

    Raises
    ------
    ModelFormatError
        If ONNX Runtime and the predictor differ by more than ``atol``; nothing is written.
    TypeError
        If no exporter is registered for the predictor's type.
    """
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"export_onnx writes .onnx files; got {str(path)!r}. Name it e.g. 'model.onnx'.")
    from modelyard.models._image import ImagePredictor

    if isinstance(predictor, ImagePredictor):
        return _export_image(predictor, path, sample, atol)
    if not isinstance(sample, pd.DataFrame) or len(sample) == 0:
        raise ValueError("export_onnx needs a non-empty DataFrame `sample` of raw rows to check parity on.")
    if not (isinstance(atol, (int, float)) and atol >= 0):
        raise ValueError(f"atol must be a number >= 0; got {atol!r}.")
    exporter = ONNX_EXPORTERS.get(predictor)
    core = exporter(predictor)
    if not isinstance(core, onnx.ModelProto):
        raise TypeError(
            f"The ONNX exporter for {type(predictor).__name__} returned {type(core).__name__}, not an onnx.ModelProto."
        )
    model = with_raw_inputs(core, predictor.schema, doc=f"Exported by modelyard from {type(predictor).__name__}.")
    from modelyard import __version__

    for key, value in (("modelyard.version", __version__), ("modelyard.source", type(predictor).__name__)):
        model.metadata_props.add(key=key, value=value)
    data = model.SerializeToString()

    served = OnnxPredictor(data)
    if predictor.task == "regression":
        expected, got = predictor.predict(sample), served.predict(sample)
    else:
        expected, got = predictor.predict_proba(sample), served.predict_proba(sample)
    if expected.shape != got.shape:
        raise ModelFormatError(
            f"ONNX export of {type(predictor).__name__} gives outputs of shape {got.shape}, the predictor "
            f"{expected.shape}; nothing was written to {path}. Fix the exporter's output."
        )
    diff = float(np.max(np.abs(expected - got)))
    bound, scaled = float(atol), ""
    if predictor.task == "regression":
        # float32 resolves a value to about 6e-8 of its size, so an absolute bound in
        # target units (house prices near 1e5) would fail every export: scale it.
        scale = max(1.0, float(np.max(np.abs(expected))))
        bound, scaled = atol * scale, f" x max(1, max |prediction|) = {atol * scale:.3g}"
    if not diff <= bound:  # also catches NaN
        raise ModelFormatError(
            f"ONNX export of {type(predictor).__name__} failed the parity check: max |onnx - source| = {diff:.3g} "
            f"on {len(sample)} sample rows exceeds atol={atol:g}{scaled}; nothing was written to {path}. "
            "Fix the exporter, or raise atol if the difference is expected."
        )
    atomic_write_bytes(path, data)
    opset = next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))
    return ExportResult(path=path, max_abs_diff=diff, n_rows=len(sample), opset=opset)


def _export_image(predictor: Any, path: Path, sample: Any, atol: float) -> ExportResult:
    """Export an image classifier: input ``image`` float32 ``[N, C, H, W]`` in [0, 1], output ``probabilities``."""
    import json

    from modelyard import __version__
    from modelyard.models._image import IMAGE_INPUT, IMAGE_KEY, OnnxImagePredictor, as_pixels

    if not (isinstance(atol, (int, float)) and atol >= 0):
        raise ValueError(f"atol must be a number >= 0; got {atol!r}.")
    pixels = as_pixels(sample, predictor.image_shape)
    if len(pixels) == 0:
        raise ValueError("export_onnx needs a non-empty array of sample images to check parity on.")

    class _Softmax(nn.Module):
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.module(x), dim=1)  # (N, n_classes)

    module = predictor.module
    was_training = module.training
    module.eval()
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                _Softmax(module), (pixels[:2],), buffer, input_names=[IMAGE_INPUT], output_names=[OUTPUT_NAMES[0]],
                dynamic_axes={IMAGE_INPUT: {0: "N"}, OUTPUT_NAMES[0]: {0: "N"}}, opset_version=TORCH_OPSET,
                dynamo=False,
            )
    finally:
        module.train(was_training)
    model = onnx.load_from_string(buffer.getvalue())
    info = {"classes": list(predictor.classes), "image_shape": list(predictor.image_shape)}
    for key, value in ((IMAGE_KEY, json.dumps(info)), ("modelyard.version", __version__),
                       ("modelyard.source", type(predictor).__name__)):
        model.metadata_props.add(key=key, value=value)
    data = model.SerializeToString()
    served = OnnxImagePredictor(data)
    expected, got = predictor.predict_proba(pixels), served.predict_proba(pixels)
    diff = float(np.max(np.abs(expected - got)))
    if not diff <= atol:
        raise ModelFormatError(
            f"ONNX export of {type(predictor).__name__} failed the parity check: max |onnx - source| = {diff:.3g} "
            f"on {len(pixels)} sample images exceeds atol={atol:g}; nothing was written to {path}."
        )
    atomic_write_bytes(path, data)
    return ExportResult(path=path, max_abs_diff=diff, n_rows=len(pixels), opset=TORCH_OPSET)
