"""Post-training quantization on ONNX Runtime: dynamic and static int8, calibration, float16, bad input."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

# tests/compress_tests/_quant_data.py: pytest puts this folder on sys.path.
from _quant_data import adult_like

from modelyard._cpu import int8_weights_overflow
from modelyard.compress import export_onnx, measure
from modelyard.compress._quantize import (
    QUANT_KEY,
    CalibrationReader,
    QuantSpec,
    prepare_for_quantization,
    quantizable_nodes,
    quantize,
)
from modelyard.data import ImageSplit, TabularSplit, infer_schema
from modelyard.errors import ModelFormatError, SchemaMismatchError
from modelyard.models import ImageNetConfig, MLPConfig, OnnxPredictor
from modelyard.train import fit_image, fit_mlp


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> tuple[Path, TabularSplit, TabularSplit]:
    """A 512-512 MLP on Adult-like rows, exported (wide enough that its matrices dominate the file)."""
    train, valid = adult_like()
    model = fit_mlp(train, valid, MLPConfig(max_epochs=5, hidden_sizes=(512, 512)))
    path = tmp_path_factory.mktemp("quant") / "wide.onnx"
    export_onnx(model, path, sample=valid.X)
    return path, train, valid


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(mode="dynamic"),
        QuantSpec(mode="static", method="minmax"),
        QuantSpec(mode="static", method="entropy", per_channel=True),
        QuantSpec(mode="static", method="percentile"),
    ],
    ids=lambda s: s.name,
)
def test_int8_runs_in_onnx_runtime_close_to_fp32(wide, tmp_path: Path, spec: QuantSpec) -> None:
    path, train, valid = wide
    before = _digest(path)
    result = quantize(path, tmp_path / "q.onnx", train, spec)
    assert _digest(path) == before  # the source is never modified
    fp32 = measure(path, valid, batch_sizes=(1,), repeats=2, warmup=0)
    q = measure(result.path, valid, batch_sizes=(1,), repeats=2, warmup=0)
    # 400 validation rows: one row is 0.0025 of accuracy. int8 rounding moves the
    # probability of a handful of rows near 0.5 across it; 0.02 (8 rows) is a generous
    # bound that a broken quantization (wrong scale, quantized raw inputs) far exceeds.
    assert abs(q.overall["accuracy"] - fp32.overall["accuracy"]) <= 0.02
    assert abs(q.overall["auc"] - fp32.overall["auc"]) <= 0.01
    # The two 512x512-ish matrices dominate: int8 is a quarter of float32, plus embeddings and scales.
    assert q.size_bytes <= 0.3 * fp32.size_bytes
    assert result.quantized and not result.excluded and result.preprocessed
    record = json.loads(OnnxPredictor(result.path).metadata[QUANT_KEY])
    assert record["mode"] == spec.mode and record["quantized"] == list(result.quantized)


def test_formats_leave_their_operators(wide, tmp_path: Path) -> None:
    path, train, _ = wide
    qdq = quantize(path, tmp_path / "qdq.onnx", train, mode="static").path
    qop = quantize(path, tmp_path / "qop.onnx", train, mode="static", quant_format="qoperator").path
    dyn = quantize(path, tmp_path / "dyn.onnx", mode="dynamic").path
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(_ops(qdq))
    assert {"QGemm", "QLinearMatMul"} & set(_ops(qop))
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= set(_ops(dyn)) or "DynamicQuantizeMatMul" in _ops(dyn)
    # The front end (string lookups, raw numeric columns) stays float: no raw column is quantized.
    model = onnx.load(str(qdq))
    raw = {i.name for i in model.graph.input}
    assert not [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in raw]
    assert all(n.op_type == "LabelEncoder" for n in model.graph.node if n.name.startswith("front/encode/"))


def test_excluded_layer_stays_float(wide, tmp_path: Path) -> None:
    path, train, _ = wide
    prepared = tmp_path / "prepared.onnx"
    assert prepare_for_quantization(path, prepared)
    layers = quantizable_nodes(prepared)
    assert len(layers) >= 3 and all(not n.startswith("front/") for n in layers)
    head = layers[-1]
    result = quantize(prepared, tmp_path / "q.onnx", train, mode="static", exclude=(head,), preprocess=False)
    assert result.excluded == (head,) and head not in result.quantized
    node = next(n for n in onnx.load(str(result.path)).graph.node if n.name == head)
    inits = {t.name: t for t in onnx.load(str(result.path)).graph.initializer}
    assert node.input[1] in inits and inits[node.input[1]].data_type == onnx.TensorProto.FLOAT


def test_float16_halves_the_size_and_keeps_predictions(wide, tmp_path: Path) -> None:
    path, _, valid = wide
    result = quantize(path, tmp_path / "fp16.onnx", mode="fp16")
    served, source = OnnxPredictor(result.path), OnnxPredictor(path)
    # float16 keeps ~3 significant digits; probabilities move by ~1e-3 at most on this model.
    assert np.max(np.abs(served.predict_proba(valid.X) - source.predict_proba(valid.X))) < 1e-2
    assert result.path.stat().st_size < 0.6 * path.stat().st_size
    assert [i.type.tensor_type.elem_type for i in onnx.load(str(result.path)).graph.input] == [
        i.type.tensor_type.elem_type for i in onnx.load(str(path)).graph.input]


def test_float16_keeps_raw_inputs_beyond_its_range_in_float32(tmp_path: Path) -> None:
    """A census weight of ~2e5 (over float16's 65504) must be scaled in float32, or it becomes inf, then NaN."""
    train, valid = adult_like(n=600)
    for split in (train, valid):
        split.frame["weight"] = np.random.default_rng(1).uniform(1e5, 1.5e6, len(split.frame))
    train, valid = (TabularSplit(s.frame, infer_schema(train.frame, "income")) for s in (train, valid))
    model = fit_mlp(train, valid, MLPConfig(max_epochs=2, hidden_sizes=(16,)))
    path = tmp_path / "fp32.onnx"
    export_onnx(model, path, sample=valid.X)
    result = quantize(path, tmp_path / "fp16.onnx", mode="fp16")
    served = OnnxPredictor(result.path).predict_proba(valid.X)
    assert np.isfinite(served).all()
    # float16 keeps ~3 significant digits: probabilities move by ~1e-3 (1e-2 leaves room).
    assert np.max(np.abs(served - OnnxPredictor(path).predict_proba(valid.X))) < 1e-2


def test_calibration_reader_gives_equal_batches_and_checks_columns(wide) -> None:
    path, train, _ = wide
    reader = CalibrationReader.from_data(path, train, rows=300, batch_size=64)
    sizes = [len(b["age"]) for b in reader.batches]
    assert sizes == [64] * 4 and reader.n_rows == 256  # cut to whole batches: the entropy calibrator stacks them
    assert reader.get_next() is not None
    reader.rewind()
    assert sum(1 for _ in iter(reader.get_next, None)) == 4
    with pytest.raises(SchemaMismatchError, match="'gain'"):
        CalibrationReader.from_data(path, train.frame.drop(columns=["gain"]))
    with pytest.raises(SchemaMismatchError, match="images"):
        CalibrationReader.from_data(path, np.zeros((4, 1, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="no rows"):
        CalibrationReader.from_data(path, train.frame.iloc[:0])


def test_bad_input_is_refused(wide, tmp_path: Path) -> None:
    path, train, _ = wide
    with pytest.raises(ValueError, match="calibration data"):
        quantize(path, tmp_path / "q.onnx", mode="static")
    with pytest.raises(ValueError, match="method"):
        QuantSpec(method="kl")
    with pytest.raises(ValueError, match="not in the model"):
        quantize(path, tmp_path / "q.onnx", train, exclude=("no/such/node",))
    with pytest.raises(ValueError, match=".onnx"):
        quantize(path, tmp_path / "q.bin", mode="dynamic")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="not an ONNX model"):
        quantize(junk, tmp_path / "q.onnx", mode="dynamic")
    with pytest.raises(SchemaMismatchError):
        quantize(path, tmp_path / "q.onnx", train.frame[["age", "hours"]], mode="static")
    assert not (tmp_path / "q.onnx").exists()


def test_static_int8_on_an_image_cnn(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(600, 1, 12, 12), dtype=np.uint8)
    y = (x[:, 0, :6].mean(axis=(1, 2)) > x[:, 0, 6:].mean(axis=(1, 2))).astype(np.int64)  # top half brighter
    train, valid = ImageSplit(x[:400], y[:400]), ImageSplit(x[400:], y[400:])
    model = fit_image(train, valid, ImageNetConfig(channels=(4, 8), hidden_sizes=(16,), max_epochs=3))
    fp32 = tmp_path / "cnn.onnx"
    export_onnx(model, fp32, sample=valid.x[:16])
    result = quantize(fp32, tmp_path / "cnn.int8.onnx", train.x, mode="static", per_channel=True)
    assert sum(op == "Conv" for op in _ops(result.path)) == 2 and "QuantizeLinear" in _ops(result.path)
    m0 = measure(fp32, valid, batch_sizes=(1,), repeats=2, warmup=0)
    m1 = measure(result.path, valid, batch_sizes=(1,), repeats=2, warmup=0)
    # 200 images; int8 moves only images whose two class scores are nearly tied.
    assert abs(m1.overall["accuracy"] - m0.overall["accuracy"]) <= 0.03
    with pytest.raises(SchemaMismatchError, match="shape"):
        CalibrationReader.from_data(fp32, np.zeros((4, 1, 8, 8), dtype=np.uint8))


def test_pooling_moves_before_a_monotone_activation_exactly(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from modelyard.compress._quantize import pool_before_activation, prepare_for_quantization

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(64, 1, 12, 12), dtype=np.uint8)
    model = fit_image(ImageSplit(x[:48], np.arange(48) % 2), ImageSplit(x[48:], np.arange(16) % 2),
                      ImageNetConfig(channels=(4, 8), hidden_sizes=(8,), max_epochs=1))
    fp32 = tmp_path / "cnn.onnx"
    export_onnx(model, fp32, sample=x[:8])
    prepare_for_quantization(fp32, tmp_path / "prepared.onnx")
    proto = onnx.load(str(tmp_path / "prepared.onnx"))
    assert pool_before_activation(proto) == 2
    onnx.save(proto, str(tmp_path / "swapped.onnx"))
    ops = _ops(tmp_path / "swapped.onnx")
    assert [op for op in ops if op in ("Relu", "MaxPool")][:4] == ["MaxPool", "Relu", "MaxPool", "Relu"]
    feeds = {"image": x.astype(np.float32)}
    want = ort.InferenceSession(str(fp32)).run(None, feeds)[0]
    got = ort.InferenceSession(str(tmp_path / "swapped.onnx")).run(None, feeds)[0]
    np.testing.assert_array_equal(got, want)  # max commutes with a monotone function: bit-identical

    # quantize() swaps only behind the layers it leaves in float: there the pooling stays in float
    # before the first quantize; the quantized second convolution keeps its Conv -> Relu -> MaxPool.
    first = quantizable_nodes(tmp_path / "prepared.onnx")[0]
    result = quantize(fp32, tmp_path / "q.onnx", x[:48], mode="static", exclude=(first,))
    ops = _ops(result.path)
    q = ops.index("QuantizeLinear")
    assert ops[:q].count("MaxPool") == 1 and ops[:q].count("Conv") == 1 and "Relu" in ops[:q]
    assert ops[q:].count("MaxPool") == 1

    # Not swapped: the activation's output is also read elsewhere, or the activation is not monotone.
    def graph(act: str, shared: bool) -> onnx.ModelProto:
        nodes = [helper.make_node(act, ["x"], ["a"], name="act", **({"alpha": -1.0} if act == "LeakyRelu" else {})),
                 helper.make_node("MaxPool", ["a"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
        if shared:
            outputs.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, None))
        return helper.make_model(helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])], outputs))

    assert pool_before_activation(graph("Relu", shared=False)) == 1
    assert pool_before_activation(graph("Relu", shared=True)) == 0
    assert pool_before_activation(graph("LeakyRelu", shared=False)) == 0  # alpha < 0: not monotone


def test_saturation_warning_names_eight_bit_weights_only(monkeypatch) -> None:
    import modelyard._cpu as cpu

    monkeypatch.setattr(cpu, "int8_weights_overflow", lambda: True)  # as on an x86 CPU without VNNI
    rec = lambda **kw: json.dumps(kw)  # noqa: E731
    assert "7-bit" in cpu.saturation_warning(rec(mode="static", weight_type="int8", reduce_range=False), "m.onnx")
    assert cpu.saturation_warning(rec(mode="dynamic", weight_type="int8"), "m") is not None  # older files: 8 bits
    assert cpu.saturation_warning(rec(mode="qat", weight_bits=[8]), "m") is not None
    assert cpu.saturation_warning(rec(mode="qat"), "m") is not None  # written before 7-bit QAT existed
    for quiet in (rec(mode="static", weight_type="int8", reduce_range=True), rec(mode="dynamic", weight_type="uint8"),
                  rec(mode="qat", weight_bits=[7]), rec(mode="fp16"), None, "not json"):
        assert cpu.saturation_warning(quiet, "m") is None
    monkeypatch.setattr(cpu, "int8_weights_overflow", lambda: False)  # VNNI: nothing saturates
    assert cpu.saturation_warning(rec(mode="static", weight_type="int8", reduce_range=False), "m") is None


def test_serving_an_eight_bit_model_warns_where_it_saturates(wide, tmp_path: Path) -> None:
    path, _, valid = wide
    default = quantize(path, tmp_path / "auto.onnx", mode="dynamic").path
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        OnnxPredictor(default)  # the default picks weights this CPU runs exactly: no warning
    assert json.loads(OnnxPredictor(default).metadata[QUANT_KEY])["reduce_range"] is int8_weights_overflow()
    forced = quantize(path, tmp_path / "8bit.onnx", mode="dynamic", reduce_range=False).path
    if int8_weights_overflow():
        with pytest.warns(RuntimeWarning, match="saturate"):
            OnnxPredictor(forced)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            OnnxPredictor(forced)
