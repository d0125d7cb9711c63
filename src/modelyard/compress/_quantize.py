"""Post-training quantization on ONNX Runtime: dynamic and static int8, and float16.

Every function here takes an ONNX file written by :func:`modelyard.compress.export_onnx`
(tabular models with their raw-column front end, or image models with one ``image``
input) and writes a new file beside it, atomically; the source file is never modified.
The result keeps the source's metadata (schema, classes), so
:func:`modelyard.compress.measure` and :class:`~modelyard.models.OnnxPredictor` serve it
as they serve the float model, and adds ``modelyard.quantization`` (a JSON record of
how it was made).

Variants (a :class:`QuantSpec` each)
------------------------------------
* ``mode="dynamic"``: weights int8 ahead of time, activations quantized at run time
  (``DynamicQuantizeLinear`` + ``MatMulInteger``); no calibration data. On convolutions
  ONNX Runtime falls back to slow kernels (a small CNN ran 7-12x *slower* than float
  on these machines), which is why every variant is measured before one is chosen
  (:func:`modelyard.compress.select_quantized`).
* ``mode="static"``: weights and activations int8, activation ranges calibrated on
  sample data by ``method`` ``"minmax"``, ``"entropy"`` (KL divergence, TensorRT's
  method) or ``"percentile"``; weights per tensor or per output channel. ``"qdq"``
  format writes QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into
  integer kernels; ``"qoperator"`` writes the integer operators directly.
* ``mode="fp16"``: float16 weights and arithmetic with float32 inputs and outputs
  (half the size; on CPUs without float16 units it is rarely faster).

Which int8 flavour is fastest depends on the CPU. Measured on this project's AVX-512
VNNI machines (784-2048-2048-10 MLP and a two-stage CNN, one thread; see
``bench/compress/RESULTS_int8.md``): in QDQ format, unsigned (U8S8) and signed (S8S8)
activations ran at the same speed (ONNX Runtime rewrites signed activations to
unsigned on x86), but S8S8 in QOperator format ran 11-65x slower than U8S8 (no fast
S8S8 integer kernel) and slower than float; dynamic int8 with *unsigned* weights ran
10x slower than with signed ones on the MLP at batch 64; per-channel weights cost up
to 18% at batch 1; 7-bit weights (``reduce_range``) gained nothing. Hence the defaults:
``activation_type="uint8"``, ``weight_type="int8"``, ``quant_format="qdq"``, and every
variant is measured before one is chosen. On x86 CPUs *without* VNNI the same U8S8
kernels saturate (int16 sums of pairs of products), so ``reduce_range=None`` (the
default) quantizes int8 weights to 7 bits there and to 8 bits elsewhere.

Front end
---------
Nodes of the raw-column front end (``front/...``: string lookups, concatenation of the
raw columns) are never quantized: quantizing a raw column such as capital-gain (up to
1e5) to 256 levels before the model's own standardization would destroy it. Static
quantization by default only quantizes the operators where int8 pays
(:data:`STATIC_OP_TYPES`): convolutions, matrix products and the shape or pooling
operators between them, not the numeric preprocessing or the final softmax.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
from onnxruntime.quantization import CalibrationDataReader

from modelyard._atomic import atomic_write_bytes
from modelyard._cpu import seven_bit_weights
from modelyard.errors import ModelFormatError, SchemaMismatchError
from modelyard.models._base import QUANT_KEY

__all__ = [
    "CALIBRATION_METHODS",
    "DYNAMIC_OP_TYPES",
    "QUANT_KEY",
    "STATIC_OP_TYPES",
    "CalibrationReader",
    "QuantSpec",
    "QuantizeResult",
    "prepare_for_quantization",
    "quantizable_nodes",
    "quantize",
]

#: Node-name prefix of the raw-column front end (see :func:`modelyard.compress.with_raw_inputs`).
FRONT_PREFIX = "front/"
#: Calibration methods by name.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: Operators static quantization touches by default: those whose int8 kernels pay, and
#: the pooling and shape operators between them, so int8 tensors flow from one integer
#: kernel to the next. ``Softmax`` is left out so probabilities stay float (an 8-bit
#: softmax output has 1/256 resolution, which ties scores and lowers AUC).
STATIC_OP_TYPES = (
    "Conv", "MatMul", "Gemm", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten",
)
#: Operators dynamic quantization touches by default (ONNX Runtime's dynamic quantizer supports these).
DYNAMIC_OP_TYPES = ("Conv", "MatMul", "Gemm")
#: Operators whose weights :func:`quantizable_nodes` lists (the layers per-layer fallback works on).
LAYER_OP_TYPES = ("Conv", "MatMul", "Gemm")

_MODES = ("dynamic", "static", "fp16")
_INT_TYPES = ("uint8", "int8")
_FORMATS = ("qdq", "qoperator")


@dataclass(frozen=True)
class QuantSpec:
    """One quantization variant.

    Parameters
    ----------
    mode : {"static", "dynamic", "fp16"}, default="static"
    method : {"minmax", "entropy", "percentile"}, default="minmax"
        Calibration of activation ranges (static only).
    per_channel : bool, default=False
        One weight scale per output channel instead of one per tensor (int8 modes).
    activation_type : {"uint8", "int8"}, default="uint8"
        Static activations. ``uint8`` with int8 weights (U8S8) is what x86 VNNI kernels
        run natively; ``int8`` is as fast in QDQ format, far slower in QOperator format.
    weight_type : {"int8", "uint8"}, default="int8"
    quant_format : {"qdq", "qoperator"}, default="qdq"
        Static only: QuantizeLinear/DequantizeLinear pairs, or integer operators.
    reduce_range : bool or None, default=None
        Quantize weights to 7 bits. None chooses for this CPU: 7 bits for int8 weights
        on x86 without VNNI, whose U8S8 kernels add pairs of products into a saturating
        int16 (see :mod:`modelyard._cpu`), 8 bits elsewhere (where 7 bits gain
        nothing).
    op_types : tuple of str or None, default=None
        Operator types to quantize; :data:`STATIC_OP_TYPES` or :data:`DYNAMIC_OP_TYPES` if None.
    exclude : tuple of str, default=()
        Node names left in float (per-layer fallback). Front-end nodes are always excluded.
    only : tuple of str or None, default=None
        If given, quantize only these nodes (used to measure one layer's sensitivity).
    percentile : float, default=99.999
        Percentile of ``method="percentile"``.
    float_first : bool, default=False
        Leave the first quantizable layer in float, whatever its name. A first
        convolution reads 1 or 3 channels, too few for int8 kernels (on a small
        Fashion-MNIST CNN, 3x slower as QLinearConv than in float).
    """

    mode: str = "static"
    method: str = "minmax"
    per_channel: bool = False
    activation_type: str = "uint8"
    weight_type: str = "int8"
    quant_format: str = "qdq"
    reduce_range: bool | None = None
    op_types: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None
    percentile: float = 99.999
    float_first: bool = False

    def __post_init__(self) -> None:
        checks = (("mode", _MODES), ("method", CALIBRATION_METHODS), ("activation_type", _INT_TYPES),
                  ("weight_type", _INT_TYPES), ("quant_format", _FORMATS))
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"QuantSpec.{name} must be one of {list(allowed)}; got {getattr(self, name)!r}.")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"QuantSpec.percentile must be in (50, 100]; got {self.percentile!r}.")
        for name in ("op_types", "exclude", "only"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"QuantSpec.{name} must be a tuple of node or operator names; got {value!r}.")
            object.__setattr__(self, name, tuple(value))

    @property
    def name(self) -> str:
        """A short readable name: ``static-minmax-u8s8-pc-qdq``, ``dynamic-s8``, ``fp16``."""
        if self.mode == "fp16":
            parts = ["fp16"]
        elif self.mode == "dynamic":
            parts = ["dynamic", "s8" if self.weight_type == "int8" else "u8"]
        else:
            a = "u8" if self.activation_type == "uint8" else "s8"
            w = "s8" if self.weight_type == "int8" else "u8"
            parts = ["static", self.method, f"{a}{w}"]
        if self.mode != "fp16":
            if self.per_channel:
                parts.append("pc")
            if self.reduce_range:  # chosen explicitly (None: for the CPU, recorded in the model)
                parts.append("rr")
            if self.mode == "static" and self.quant_format == "qoperator":
                parts.append("qop")
        if self.float_first:
            parts.append("ffirst")
        if self.exclude:
            parts.append(f"float{len(self.exclude)}")
        if self.only is not None:
            parts.append(f"only{len(self.only)}")
        return "-".join(parts)

    def replace(self, **changes: Any) -> QuantSpec:
        """A copy with ``changes`` applied (and validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        out = asdict(self)
        for key in ("op_types", "exclude", "only"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize` wrote.

    Attributes
    ----------
    path : pathlib.Path
    spec : QuantSpec
    quantized : tuple of str
        Layers (Conv/MatMul/Gemm nodes with constant weights) that were quantized.
    excluded : tuple of str
        Layers left in float (front end not counted).
    preprocessed : bool
        Whether ONNX Runtime's quantization pre-processing (shape inference, graph
        optimization) ran first.
    seconds : float
        Time spent, calibration included.
    """

    path: Path
    spec: QuantSpec
    quantized: tuple[str, ...]
    excluded: tuple[str, ...]
    preprocessed: bool
    seconds: float


# -- models ---------------------------------------------------------------------------
def _load(model: str | os.PathLike[str] | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """An ONNX model from a path, bytes or a ModelProto (copied, so the caller's is never changed)."""
    if isinstance(model, onnx.ModelProto):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    if isinstance(model, (bytes, bytearray)):
        data, where = bytes(model), "the given bytes"
    else:
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist; export one with modelyard.compress.export_onnx.")
        data, where = path.read_bytes(), str(path)
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelFormatError(f"{where} is not an ONNX model; export one with modelyard.compress.export_onnx.") from exc
    if not proto.graph.node:
        raise ModelFormatError(f"{where} is not an ONNX model (no graph nodes); export one with modelyard.compress.export_onnx.")
    return proto


def _initializer_names(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def _front_nodes(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.name.startswith(FRONT_PREFIX)]


def quantizable_nodes(model: str | os.PathLike[str] | bytes | onnx.ModelProto) -> list[str]:
    """Names of the layers int8 quantization works on: Conv, MatMul and Gemm nodes with a constant weight.

    Front-end nodes are left out. Run it on the model that will be quantized (after
    :func:`prepare_for_quantization`, whose graph optimizations may rename nodes).

    Parameters
    ----------
    model : path, bytes or onnx.ModelProto

    Returns
    -------
    list of str
        In graph order.
    """
    proto = _load(model)
    constants = _initializer_names(proto) | {
        o for n in proto.graph.node if n.op_type == "Constant" for o in n.output
    }
    return [
        n.name for n in proto.graph.node
        if n.op_type in LAYER_OP_TYPES and not n.name.startswith(FRONT_PREFIX) and n.name
        and len(n.input) > 1 and n.input[1] in constants
    ]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence ONNX Runtime's quantizer: it prints calibration progress and logs advice on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


#: Element-wise activations that are monotone non-decreasing: max pooling commutes with them.
MONOTONE_ACTIVATIONS = ("Relu", "Clip", "Sigmoid", "Tanh")


def pool_before_activation(model: onnx.ModelProto, after: Collection[str] | None = None) -> int:
    """Rewrite ``MaxPool(act(x))`` as ``act(MaxPool(x))`` in place; return how many pairs were swapped.

    Exact for a monotone non-decreasing activation (max commutes with it; padding is
    ignored by max pooling either way), and the activation then runs on the pooled,
    smaller tensor. :func:`quantize` applies it behind the layers it leaves in float
    (``after``: the names of the nodes whose activation may move): with a convolution
    left in float in front of ``Conv -> Relu -> MaxPool``, ONNX Runtime moves the
    quantize above the pooling and runs a uint8 MaxPool in NCHW layout (measured 5-7 ms
    at batch 64 for a 32-channel 28x28 map, against 0.5 ms in float); after the swap,
    convolution and pooling stay in float's blocked layout and the quantize follows
    them. Behind a quantized convolution the swap would cost speed and accuracy (its
    ``Conv + Relu`` fusion is lost), so it is not applied there. A pair is swapped only
    when the activation's output feeds the pooling alone, is not a graph output, and
    the pooling has no ``Indices`` output.
    """
    graph = model.graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    producer = {o: n.name for n in graph.node for o in n.output}
    swapped: list[str] = []
    nodes = list(graph.node)
    for act in list(nodes):
        if act.op_type not in MONOTONE_ACTIVATIONS or act.domain not in ("", "ai.onnx") or len(act.output) != 1:
            continue
        if after is not None and producer.get(act.input[0]) not in after:
            continue
        mid = act.output[0]
        users = consumers.get(mid, [])
        if mid in outputs or len(users) != 1:
            continue
        pool = users[0]
        if pool.op_type != "MaxPool" or pool.domain not in ("", "ai.onnx") or list(pool.input) != [mid]:
            continue
        if len([o for o in pool.output if o]) != 1:
            continue
        x, y = act.input[0], pool.output[0]
        pool.input[0], pool.output[0] = x, mid
        act.input[0], act.output[0] = mid, y
        nodes.remove(act)
        nodes.insert(nodes.index(pool) + 1, act)  # the activation now reads the pooling's output
        swapped.append(mid)
    if swapped:
        del graph.node[:]
        graph.node.extend(nodes)
        kept = [v for v in graph.value_info if v.name not in swapped]  # their shape is now the pooled one
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return len(swapped)


def prepare_for_quantization(
    model: str | os.PathLike[str] | bytes | onnx.ModelProto, output: str | os.PathLike[str]
) -> bool:
    """Run ONNX Runtime's quantization pre-processing (symbolic shape inference, graph optimization).

    ONNX Runtime recommends it before quantizing: folded constants and fused
    ``MatMul + Add`` give the quantizer whole layers to work on. The source's metadata
    is kept. If pre-processing fails on a graph (shape inference does not know every
    operator), the model is written unchanged.

    Parameters
    ----------
    model : path, bytes or onnx.ModelProto
    output : path
        Where to write the prepared model (atomically).

    Returns
    -------
    bool
        True if pre-processing ran, False if the model was copied unchanged.
    """
    from onnxruntime.quantization import quant_pre_process

    proto = _load(model)
    with tempfile.TemporaryDirectory(prefix="modelyard-prep-") as tmp:
        done = Path(tmp) / "prepared.onnx"
        try:
            with _quiet():
                quant_pre_process(proto, str(done))
            prepared = onnx.load(str(done))
            ok = True
        except Exception:  # noqa: BLE001 - shape inference raises many kinds; fall back to the raw graph
            prepared, ok = proto, False
    _copy_metadata(proto, prepared)
    atomic_write_bytes(output, prepared.SerializeToString())
    return ok


def _copy_metadata(source: onnx.ModelProto, target: onnx.ModelProto, extra: Mapping[str, str] | None = None) -> None:
    """Give ``target`` the metadata entries of ``source`` (and ``extra``), replacing same-named ones."""
    entries = {p.key: p.value for p in target.metadata_props}
    entries.update({p.key: p.value for p in source.metadata_props})
    entries.update(extra or {})
    del target.metadata_props[:]
    for key, value in entries.items():
        target.metadata_props.add(key=key, value=value)


# -- calibration data -----------------------------------------------------------------
class CalibrationReader(CalibrationDataReader):
    """ONNX Runtime calibration data: equal-sized batches of model inputs.

    Build it with :meth:`from_data`, which turns raw rows (tabular) or images into the
    model's own input feeds. Every batch has the same number of rows, because ONNX
    Runtime's histogram calibrators (entropy, percentile) stack the batches.

    Parameters
    ----------
    batches : list of dict of str to numpy.ndarray
        Session feeds, one dict per batch.
    """

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        if not batches:
            raise ValueError("CalibrationReader needs at least one batch of inputs.")
        self.batches = batches
        self._it = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None when all were read."""
        return next(self._it, None)

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._it = iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    @property
    def n_rows(self) -> int:
        """Rows over all batches."""
        return sum(len(next(iter(b.values()))) for b in self.batches)

    @classmethod
    def from_data(
        cls,
        model: str | os.PathLike[str] | bytes | onnx.ModelProto,
        data: Any,
        *,
        rows: int = 512,
        batch_size: int = 64,
        seed: int = 0,
    ) -> CalibrationReader:
        """Calibration batches for ``model`` from raw data.

        Parameters
        ----------
        model : path, bytes or onnx.ModelProto
            An exported modelyard model (tabular or image).
        data : TabularSplit, pandas.DataFrame, ImageSplit or numpy.ndarray
            Raw rows with the model's feature columns (other columns are ignored), or
            images ``(N, C, H, W)`` (uint8, or floats in ``[0, 1]``). Use training or
            validation data, never the test set.
        rows : int, default=512
            Rows drawn at random (seeded) when ``data`` has more; ONNX Runtime's
            examples use a few hundred.
        batch_size : int, default=64
            Rows per batch; the rows are cut to a multiple of it (one smaller batch
            if there are fewer rows than ``batch_size``).
        seed : int, default=0

        Raises
        ------
        SchemaMismatchError
            The data lack some of the model's columns, or images have another shape.
        ValueError
            No rows, or a non-positive ``rows`` or ``batch_size``.
        """
        from modelyard.data import ImageSplit, TabularSplit
        from modelyard.models._onnx import OnnxPredictor

        for name, value in (("rows", rows), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Calibration {name} must be a positive integer; got {value!r}.")
        proto = _load(model)
        data_bytes = proto.SerializeToString()
        inputs = [i.name for i in proto.graph.input if i.name not in _initializer_names(proto)]
        if isinstance(data, (ImageSplit, np.ndarray)):
            from modelyard.models._image import OnnxImagePredictor

            if inputs != ["image"]:
                raise SchemaMismatchError(
                    f"Calibration data are images but the model takes inputs {inputs}; pass raw rows "
                    "(a TabularSplit or DataFrame with the model's feature columns)."
                )
            images = data.x if isinstance(data, ImageSplit) else data
            n = len(images)
            if n == 0:
                raise ValueError("Calibration data have no images; pass at least one.")
            take = _sample(n, rows, batch_size, seed)
            feeds = OnnxImagePredictor(data_bytes).feeds(images[take])["image"]
            return cls([{"image": feeds[i : i + batch_size]} for i in range(0, len(take), batch_size)])
        frame = data.frame if isinstance(data, TabularSplit) else data
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(
                f"Calibration data must be a TabularSplit, DataFrame, ImageSplit or image array; got {type(data).__name__}."
            )
        if inputs == ["image"]:
            raise SchemaMismatchError(
                "The model takes images but the calibration data are a table; pass an ImageSplit or an image array."
            )
        predictor = OnnxPredictor(data_bytes)
        missing = [c for c in predictor.feature_names if c not in frame.columns]
        if missing:
            raise SchemaMismatchError(
                f"Calibration data lack the model's feature columns {missing}; the model was trained on "
                f"{predictor.feature_names}. Pass rows of the training or validation split."
            )
        if frame.empty:
            raise ValueError("Calibration data have no rows; pass at least one.")
        take = _sample(len(frame), rows, batch_size, seed)
        picked = frame.iloc[take]
        return cls([predictor.feeds(picked.iloc[i : i + batch_size]) for i in range(0, len(take), batch_size)])


def _sample(n: int, rows: int, batch_size: int, seed: int) -> np.ndarray:
    """Indices of ``min(n, rows)`` rows drawn without replacement, cut to whole batches."""
    k = min(n, rows)
    take = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)) if n > rows else np.arange(n)
    whole = (len(take) // batch_size) * batch_size
    return take[:whole] if whole else take


# -- quantization ---------------------------------------------------------------------
def _qtype(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if name == "uint8" else QuantType.QInt8


def quantize(
    model: str | os.PathLike[str] | bytes | onnx.ModelProto,
    output: str | os.PathLike[str],
    data: Any = None,
    spec: QuantSpec | None = None,
    *,
    calibration: CalibrationReader | None = None,
    calibration_rows: int = 512,
    calibration_batch_size: int = 64,
    preprocess: bool = True,
    **spec_fields: Any,
) -> QuantizeResult:
    """Quantize an exported ONNX model and write the result atomically.

    Parameters
    ----------
    model : path, bytes or onnx.ModelProto
        The float model (written by :func:`modelyard.compress.export_onnx`); not modified.
    output : path
        Where to write the quantized model (``.onnx``).
    data : TabularSplit, DataFrame, ImageSplit, ndarray or None
        Calibration data for ``mode="static"`` (training or validation rows, not the
        test set); not needed for the other modes.
    spec : QuantSpec or None
        The variant; built from ``spec_fields`` if None.
    calibration : CalibrationReader or None
        Ready-made calibration batches (instead of ``data``), e.g. to reuse them over
        several variants.
    calibration_rows, calibration_batch_size : int, default=512, 64
        Passed to :meth:`CalibrationReader.from_data`.
    preprocess : bool, default=True
        Run :func:`prepare_for_quantization` first. Pass False when ``model`` already
        went through it (the node names in ``spec.exclude`` must be that model's).
    **spec_fields
        Fields of :class:`QuantSpec` (``mode="dynamic"``, ``method="entropy"``, ...)
        when ``spec`` is None.

    Returns
    -------
    QuantizeResult

    Raises
    ------
    ValueError
        Static mode without calibration data, a bad spec field, or excluded node names
        the model does not have.
    SchemaMismatchError
        Calibration data whose columns (or image shape) do not match the model.
    ModelFormatError
        ``model`` is not an ONNX model.
    """
    output = Path(output)
    if output.suffix != ".onnx":
        raise ValueError(f"quantize writes .onnx files; got {str(output)!r}. Name it e.g. 'model.int8.onnx'.")
    if spec is None:
        spec = QuantSpec(**spec_fields)
    elif spec_fields:
        raise TypeError(f"Pass either spec or QuantSpec fields, not both; got spec and {sorted(spec_fields)}.")
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec; got {type(spec).__name__}.")
    t0 = time.perf_counter()
    source = _load(model)
    # None: 7 bits where this CPU's kernels saturate on 8-bit int8 weights (uint8 weights never do)
    reduce_range = seven_bit_weights(spec.reduce_range) if spec.weight_type == "int8" else bool(spec.reduce_range)
    if spec.mode == "static" and calibration is None and data is None:
        raise ValueError(
            "Static quantization needs calibration data: pass data= (training or validation rows or images) "
            "or calibration=CalibrationReader.from_data(...); or use mode='dynamic'."
        )
    with tempfile.TemporaryDirectory(prefix="modelyard-quant-") as tmp:
        tmp_dir = Path(tmp)
        src = tmp_dir / "source.onnx"
        if preprocess:
            preprocessed = prepare_for_quantization(source, src)
        else:
            src.write_bytes(source.SerializeToString())
            preprocessed = False
        prepared = onnx.load(str(src))
        layers = quantizable_nodes(prepared)
        names = {n.name for n in prepared.graph.node}
        unknown = [n for n in (*spec.exclude, *(spec.only or ())) if n not in names]
        if unknown:
            raise ValueError(
                f"Nodes {unknown} are not in the model{' after pre-processing' if preprocessed else ''}; "
                f"its quantizable layers are {layers}. Take names from quantizable_nodes() of the prepared model."
            )
        front = _front_nodes(prepared)
        first = [layers[0]] if spec.float_first and spec.mode != "fp16" and len(layers) > 1 else []
        exclude = sorted(set(front) | set(spec.exclude) | set(first))
        if spec.only is not None:
            quantized = tuple(n for n in layers if n in spec.only and n not in exclude)
        else:
            quantized = tuple(n for n in layers if n not in exclude)
        excluded = tuple(n for n in layers if n not in quantized)
        if excluded and spec.mode != "fp16" and pool_before_activation(prepared, after=excluded):
            src.write_bytes(prepared.SerializeToString())  # float layers keep their pooling in float
        out_tmp = tmp_dir / "quantized.onnx"
        if spec.mode == "fp16":
            _to_float16(prepared, out_tmp, block=excluded, keep_float32=_before_first_layer(prepared))
        elif spec.mode == "dynamic":
            from onnxruntime.quantization import quantize_dynamic

            with _quiet():
                quantize_dynamic(
                    str(src), str(out_tmp),
                    op_types_to_quantize=list(spec.op_types or DYNAMIC_OP_TYPES),
                    per_channel=spec.per_channel,
                    reduce_range=reduce_range,
                    weight_type=_qtype(spec.weight_type),
                    nodes_to_quantize=list(spec.only) if spec.only is not None else None,
                    nodes_to_exclude=exclude,
                )
        else:
            reader = calibration if calibration is not None else CalibrationReader.from_data(
                prepared, data, rows=calibration_rows, batch_size=calibration_batch_size)
            _static(src, out_tmp, reader, spec.replace(reduce_range=reduce_range), exclude)
        result = onnx.load(str(out_tmp))
    record = {**spec.to_dict(), "reduce_range": reduce_range if spec.mode != "fp16" else False,
              "quantized": list(quantized), "excluded": list(excluded), "preprocessed": preprocessed}
    _copy_metadata(source, result, {QUANT_KEY: json.dumps(record)})
    atomic_write_bytes(output, result.SerializeToString())
    return QuantizeResult(output, spec, quantized, excluded, preprocessed, time.perf_counter() - t0)


def _static(src: Path, out: Path, reader: CalibrationReader, spec: QuantSpec, exclude: Sequence[str]) -> None:
    """ONNX Runtime's static quantizer with calibration by ``spec.method``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[spec.method]
    extra: dict[str, Any] = {}
    if spec.method == "percentile":
        extra["CalibPercentile"] = float(spec.percentile)
    reader.rewind()
    with _quiet():
        quantize_static(
            str(src), str(out), reader,
            quant_format=QuantFormat.QDQ if spec.quant_format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=list(spec.op_types or STATIC_OP_TYPES),
            per_channel=spec.per_channel,
            reduce_range=spec.reduce_range,
            activation_type=_qtype(spec.activation_type),
            weight_type=_qtype(spec.weight_type),
            nodes_to_quantize=list(spec.only) if spec.only is not None else None,
            nodes_to_exclude=list(exclude),
            calibrate_method=method,
            extra_options=extra,
        )
    reader.rewind()


def _before_first_layer(model: onnx.ModelProto) -> list[str]:
    """Nodes before the first MatMul, Gemm or Conv (graph order is topological): the input's scaling."""
    names = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            break
        names.append(node.name)
    return names


def _toposort(nodes: Sequence[Any], ready: set[str]) -> list[Any]:
    """``nodes`` in an order where each runs after the nodes making its inputs (the converter appends its casts)."""
    ready, pending, ordered = set(ready), list(nodes), []
    while pending:
        runnable = [n for n in pending if all(i in ready for i in n.input)]
        if not runnable:
            raise ValueError(f"The float16 graph has a cycle or a missing input at {[n.name for n in pending][:5]}.")
        for n in runnable:
            ordered.append(n)
            ready.update(n.output)
        pending = [n for n in pending if all(n is not r for r in runnable)]
    return ordered


def _to_float16(model: onnx.ModelProto, out: Path, *, block: Sequence[str], keep_float32: Sequence[str] = ()) -> None:
    """Float16 weights and arithmetic, float32 inputs and outputs; ``block`` nodes stay float32.

    Uses the converter that ships with ONNX Runtime (``onnxruntime.transformers.float16``,
    a maintained fork of onnxconverter-common's), so no extra dependency is needed.

    ``keep_float32`` names a prefix of the graph (the raw-column front end and the
    input scaling) that runs entirely in float32: the converter casts every float graph
    input to float16 on entry, and a raw value such as a census weight (1.5 million) is
    beyond float16's 65504 until it is standardized: it would become inf, then NaN. So
    the rest of the graph is cut out at the prefix's outputs, converted on its own (its
    inputs, the scaled values, are cast on entry), and joined back behind the prefix.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    prefix = set(keep_float32)
    nodes = list(model.graph.node)
    if not prefix or len(prefix) == len(nodes):
        with _quiet():
            converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=list(block))
        onnx.save(converted, str(out))
        return
    head = [n for n in nodes if n.name in prefix]
    tail = [n for n in nodes if n.name not in prefix]
    made_by_head = {o for n in head for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    boundary: list[str] = []
    for n in tail:
        for name in n.input:
            if name and name not in inits and name not in boundary and (
                    name in made_by_head or name in {i.name for i in model.graph.input}):
                boundary.append(name)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    missing = [b for b in boundary if b not in types]
    if missing:  # no types to cut the graph at: convert the whole graph as it is
        with _quiet():
            converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=list(block))
        onnx.save(converted, str(out))
        return
    tail_inits = {i for n in tail for i in n.input if i in inits}
    sub = onnx.helper.make_model(
        onnx.helper.make_graph(tail, "fp16_part", [types[b] for b in boundary], list(model.graph.output),
                               [inits[i] for i in sorted(tail_inits)]),
        opset_imports=list(model.opset_import), ir_version=model.ir_version)
    with _quiet():
        converted = convert_float_to_float16(sub, keep_io_types=True, node_block_list=list(block))
    head_inits = {i for n in head for i in n.input if i in inits}
    shared = head_inits & {t.name for t in converted.graph.initializer}
    fp32_inits = [inits[i] for i in sorted(head_inits)]
    fp16_inits = list(converted.graph.initializer)
    if shared:  # a constant both parts read: the float16 part reads a renamed copy
        rename = {name: f"{name}__fp16" for name in shared}
        for t in fp16_inits:
            if t.name in rename:
                t.name = rename[t.name]
        for n in converted.graph.node:
            n.input[:] = [rename.get(i, i) for i in n.input]
    ready = {i.name for i in model.graph.input} | {t.name for t in (*fp32_inits, *fp16_inits)} | {""}
    graph = onnx.helper.make_graph(
        _toposort(head + list(converted.graph.node), ready), model.graph.name, list(model.graph.input),
        list(converted.graph.output), fp32_inits + fp16_inits)
    joined = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    joined.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(joined)
    onnx.save(joined, str(out))

