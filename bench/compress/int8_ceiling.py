"""How fast can any int8 model of the benchmark networks be on ONNX Runtime on this CPU? (issue 4, a ceiling)

    env -u OPENBLAS_CORETYPE .venv/bin/python bench/compress/int8_ceiling.py [--models cnn mlp] [--rounds 7]

The int8 goal of issue 4 asks for the small Fashion-MNIST CNN (``ImageNetConfig()``: conv
1->32 and 32->64, 3x3, each with ReLU and 2x2 max pooling, then 3136->128->10) and the MLP
784-2048-2048-10 at <= 0.3x of ONNX Runtime fp32 latency, at batch 1 and 64. This script
bounds what any int8 model of those networks can reach with ONNX Runtime's kernels on the
machine it runs on, without training anything:

* **fp32**: the whole network in float (Conv, Relu, MaxPool, Gemm), the goal's reference.
* **int8 floor**: each weighted layer alone as the int8 operator ONNX Runtime
  runs for a quantized model (QLinearConv, QLinearMatMul; uint8 activations, int8
  per-channel weights, already-quantized inputs), and as its float kernel inside the
  float network (ONNX Runtime's fused, blocked-layout Conv and Gemm), each timed by ONNX
  Runtime's profiler (kernel time only). The floor sums, per layer, the faster of the two
  (a mixed model may keep any layer in float, as ``select_quantized`` tries). A real
  model also quantizes and dequantizes between them, pools, applies ReLU and pays the
  session's per-call overhead, so it can only be slower than this sum: the sum over the
  float network's wall time is a lower bound on the ratio any int8 or mixed variant of
  this network reaches here.
* **GEMM peak**: a 256x1024x1024 MatMul in float against MatMulInteger (uint8 x int8),
  the CPU's integer-against-float throughput where overheads do not matter (AVX2 without
  VNNI multiplies uint8 by int8 in pairs into int16, ``vpmaddubsw``; VNNI does four into
  int32, ``vpdpbusd``).

Weights and inputs are random (latency does not depend on their values). Every graph runs
on one intra-op thread; the graphs are timed in ``--rounds`` interleaved rounds of
``--repeats`` runs after a warm-up, and each figure is the median over rounds of the
per-round medians. Prints the table, the CPU's integer-instruction flags and the verdict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from modelyard.compress import session_latency

GOAL = 0.3
OPSET = 17


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


# A network: its float input shape (without the batch axis) and its weighted layers in order,
# ("conv", c_in, c_out, input shape) for a 3x3 convolution followed by ReLU and 2x2 max pooling,
# ("fc", k, n, (k,)) for a dense layer (ReLU after every one but the last).
NETWORKS: dict[str, tuple[tuple[int, ...], list[tuple[str, int, int, tuple[int, ...]]]]] = {
    "cnn": ((1, 28, 28), [
        ("conv", 1, 32, (1, 28, 28)), ("conv", 32, 64, (32, 14, 14)),
        ("fc", 3136, 128, (3136,)), ("fc", 128, 10, (128,)),
    ]),
    "mlp": ((784,), [("fc", 784, 2048, (784,)), ("fc", 2048, 2048, (2048,)), ("fc", 2048, 10, (2048,))]),
}  # fmt: skip


def layer_name(kind: str, c_in: int, c_out: int) -> str:
    return f"{kind} {c_in}->{c_out}"


def fp32_network(rng: np.random.Generator, input_shape: tuple[int, ...], layers: list[Any]) -> bytes:
    """The whole network in float: Conv-Relu-MaxPool per conv layer, Flatten, Gemm(-Relu) per dense layer."""
    f = np.float32
    nodes, inits, x = [], [], "x"
    last = len(layers) - 1
    for i, (kind, c_in, c_out, _) in enumerate(layers):
        shape = (c_out, c_in, 3, 3) if kind == "conv" else (c_out, c_in)
        inits += [_init(f"w{i}", rng.normal(0, 0.05, shape).astype(f)), _init(f"b{i}", np.zeros(c_out, f))]
        if kind == "conv":
            nodes += [
                helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
                helper.make_node("MaxPool", [f"r{i}"], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]),
            ]
            x = f"p{i}"
            continue
        if len(input_shape) > 1 and i > 0 and layers[i - 1][0] == "conv":
            nodes.append(helper.make_node("Flatten", [x], [f"flat{i}"]))
            x = f"flat{i}"
        out = "y" if i == last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [out], transB=1))
        if i != last:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            x = f"r{i}"
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", layers[-1][2]])],
        inits,
    )


def _qparams(prefix: str, channels: int | None = None) -> list[Any]:
    scale = np.full(channels, 0.01, np.float32) if channels else np.float32(0.05)
    zero = np.zeros(channels, np.int8) if channels else np.uint8(128)
    return [_init(f"{prefix}_s", np.asarray(scale)), _init(f"{prefix}_z", np.asarray(zero))]


def qlinear_conv(rng: np.random.Generator, c_in: int, c_out: int) -> bytes:
    """One 3x3 QLinearConv (padding 1): uint8 input and output, int8 per-channel weights, int32 bias."""
    w = rng.integers(-63, 64, (c_out, c_in, 3, 3)).astype(np.int8)
    inits = [
        *_qparams("x"), _init("w", w), *_qparams("w", c_out), *_qparams("y"),
        _init("b", np.zeros(c_out, np.int32)),
    ]  # fmt: skip
    node = helper.make_node(
        "QLinearConv", ["x", "x_s", "x_z", "w", "w_s", "w_z", "y_s", "y_z", "b"], ["y"], pads=[1, 1, 1, 1]
    )
    return _model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", c_in, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, ["N", c_out, "H", "W"])],
        inits,
    )


def qlinear_matmul(rng: np.random.Generator, k: int, n: int) -> bytes:
    """One QLinearMatMul: uint8 [N, k] by int8 [k, n], per-column weight scales.

    ONNX Runtime turns a quantized Gemm into QLinearMatMul followed by an Add of the
    bias; the Add is left out (the floor only counts the product).
    """
    w = rng.integers(-63, 64, (k, n)).astype(np.int8)
    inits = [*_qparams("x"), _init("w", w), *_qparams("w", n), *_qparams("y")]
    node = helper.make_node("QLinearMatMul", ["x", "x_s", "x_z", "w", "w_s", "w_z", "y_s", "y_z"], ["y"])
    return _model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, ["N", n])],
        inits,
    )


def kernel_ms(model: bytes, feed: dict[str, np.ndarray], runs: int) -> list[tuple[str, float]]:
    """(operator, median kernel ms) of every node, in execution order, from ONNX Runtime's profiler.

    Kernel times exclude the session's own per-call overhead, so sums of them are lower
    bounds on what a graph made of those kernels takes.
    """
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(model, profile=Path(tmp) / "profile")
        for _ in range(runs + 10):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    durations: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            durations.setdefault(e["name"], []).append(e["dur"] / 1e3)  # microseconds
            ops[e["name"]] = e["args"].get("op_name", "?")
    # the last `runs` runs (warm); dict order is the first run's execution order
    return [(ops[n], statistics.median(d[-runs:])) for n, d in durations.items()]


def gemm(rng: np.random.Generator, k: int, n: int, *, integer: bool) -> bytes:
    """A [M, k] x [k, n] product: MatMul in float, or MatMulInteger uint8 x int8 into int32."""
    if integer:
        w = _init("w", rng.integers(-63, 64, (k, n)).astype(np.int8))
        node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
        x_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        w = _init("w", rng.normal(0, 1, (k, n)).astype(np.float32))
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x_type = y_type = TensorProto.FLOAT
    return _model(
        [node],
        [helper.make_tensor_value_info("x", x_type, ["M", k])],
        [helper.make_tensor_value_info("y", y_type, ["M", n])],
        [w],
    )


def session(model: bytes, *, profile: Path | None = None) -> ort.InferenceSession:
    """A one-thread CPU session with every graph optimization, as ``modelyard.compress.measure`` runs;
    with ``profile``, ONNX Runtime's profiler writes there."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(NETWORKS), default=["cnn", "mlp"],
                        help="networks to bound (cnn: the small CNN; mlp: 784-2048-2048-10)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median over rounds)")
    parser.add_argument("--repeats", type=int, default=200, help="runs per round at batch 1 (batch 64: a quarter)")
    parser.add_argument("--profile-runs", type=int, default=50, help="profiled runs per graph for kernel times")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    graphs: dict[str, tuple[ort.InferenceSession, dict[int, dict[str, np.ndarray]]]] = {}
    kernels: dict[tuple[str, int], float] = {}  # profiled kernel ms: int8 layer alone, float layer inside the network
    for net in args.models:
        input_shape, layers = NETWORKS[net]
        for kind, c_in, c_out, shape in layers:
            name = f"{net} {layer_name(kind, c_in, c_out)}"
            int8 = qlinear_conv(rng, c_in, c_out) if kind == "conv" else qlinear_matmul(rng, c_in, c_out)
            feeds = {b: {"x": rng.integers(0, 256, (b, *shape)).astype(np.uint8)} for b in (1, 64)}
            graphs[f"{name} int8"] = (session(int8), feeds)
            for b in (1, 64):
                # only the QLinear kernel: ONNX Runtime runs QLinearConv in NHWC and wraps a lone one in
                # Transposes, which a whole int8 network mostly avoids
                (kernel,) = [ms for op, ms in kernel_ms(int8, feeds[b], args.profile_runs) if op.startswith("QLinear")]
                kernels[(f"{name} int8", b)] = kernel
        x = {b: {"x": rng.random((b, *input_shape), dtype=np.float32)} for b in (1, 64)}
        model = fp32_network(rng, input_shape, layers)
        graphs[f"{net} fp32 network"] = (session(model), x)
        for b in (1, 64):  # the float network's weighted kernels, in execution order
            weighted = [
                ms for op, ms in kernel_ms(model, x[b], args.profile_runs)
                if op in ("Conv", "FusedConv", "FusedGemm", "Gemm", "MatMul")
            ]  # fmt: skip
            if len(weighted) != len(layers):
                raise SystemExit(f"expected {len(layers)} weighted kernels in the float {net}'s profile, got {len(weighted)}")
            for (kind, c_in, c_out, _), kernel in zip(layers, weighted, strict=True):
                kernels[(f"{net} {layer_name(kind, c_in, c_out)} fp32", b)] = kernel
    m = 256
    graphs["GEMM fp32"] = (session(gemm(rng, 1024, 1024, integer=False)), {m: {"x": rng.random((m, 1024), dtype=np.float32)}})
    graphs["GEMM u8s8"] = (
        session(gemm(rng, 1024, 1024, integer=True)),
        {m: {"x": rng.integers(0, 256, (m, 1024)).astype(np.uint8)}},
    )
    for sess, feeds in graphs.values():  # warm-up
        for feed in feeds.values():
            for _ in range(20):
                sess.run(None, feed)
    rounds: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for name, (sess, feeds) in graphs.items():
            for b, feed in feeds.items():
                repeats = args.repeats if b == 1 else max(args.repeats // 4, 10)
                if b == m and name.startswith("GEMM"):
                    repeats = 10
                latency = session_latency(sess, feed, warmup=0, repeats=repeats)
                rounds.setdefault((name, b), []).append(latency.p50_ms)
    ms = {key: statistics.median(v) for key, v in rounds.items()}

    flags = cpu_flags()
    print(f"CPU integer flags: {' '.join(flags) or 'none found'}; onnxruntime {ort.__version__}, 1 thread\n")
    print("kernel ms (profiled; int8: the layer alone, fp32: inside the float network)")
    print(f"{'layer':<32} {'b1':>9} {'b64':>9}")
    for key in dict.fromkeys(k for k, _ in kernels):  # layer names, first-seen order
        print(f"{key:<32} {kernels[(key, 1)]:9.4f} {kernels[(key, 64)]:9.4f}")
    print("\nwall ms per call (session.run, interleaved rounds)")
    for name in [g for g in graphs if not g.startswith("GEMM")]:
        print(f"{name:<32} {ms[(name, 1)]:9.4f} {ms[(name, 64)]:9.4f}")
    print()
    out: dict[str, Any] = {
        "cpu_flags": flags, "onnxruntime": ort.__version__,
        "wall_ms": {f"{n}|b{b}": v for (n, b), v in ms.items()},
        "kernel_ms": {f"{n}|b{b}": v for (n, b), v in kernels.items()},
    }  # fmt: skip
    for net in args.models:
        names = [f"{net} {layer_name(kind, c_in, c_out)}" for kind, c_in, c_out, _ in NETWORKS[net][1]]
        for b in (1, 64):
            # each layer as the faster of int8 and float (a mixed model may keep any layer in float)
            floor = sum(min(kernels[(f"{n} int8", b)], kernels[(f"{n} fp32", b)]) for n in names)
            whole = ms[(f"{net} fp32 network", b)]
            ratio = floor / whole
            out[f"{net}_floor_ratio_b{b}"] = ratio
            print(
                f"{net} batch {b:>2}: weighted kernels, each the faster of int8 and fp32, {floor:.4f} ms over the "
                f"fp32 network's {whole:.4f} ms = {ratio:.3f}x (a lower bound for any int8 model; goal <= {GOAL}x: "
                f"{'reachable' if ratio <= GOAL else 'out of reach on this CPU'})"
            )
    peak = ms[("GEMM u8s8", m)] / ms[("GEMM fp32", m)]
    out["gemm_u8s8_over_fp32"] = peak
    print(
        f"GEMM {m}x1024x1024: fp32 {ms[('GEMM fp32', m)]:.3f} ms, u8s8 {ms[('GEMM u8s8', m)]:.3f} ms = "
        f"{peak:.3f}x (the CPU's integer-over-float throughput, overheads aside)"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
