"""int8 against fp32 on Fashion-MNIST: our selected int8 model against its peers (issue 4, "int8 against fp32").

    env -u OPENBLAS_CORETYPE MODELYARD_DATA_DIR=../shared/data \\
        .venv/bin/python bench/compress/int8.py [--models mlp cnn] [--epochs 2] [--rounds 5] [--out int8.json]

Two models are trained briefly with ``modelyard.train.fit_image``: the MLP
784-2048-2048-10 (``ImageNetConfig(arch="mlp", hidden_sizes=(2048, 2048))``) and the
small CNN (``ImageNetConfig()``: conv 32 and 64 channels, 3x3, each with ReLU and 2x2
max pooling, then 128 units). Each is exported to ONNX, and the contenders are:

* torch fp32 eager, and torch's dynamic int8 (``torch.ao.quantization.quantize_dynamic``
  on ``nn.Linear``), both with one thread;
* ONNX Runtime fp32 (the exported file), dynamic int8 (``quantize_dynamic`` with its
  defaults) and static int8 (``quant_pre_process`` then ``quantize_static`` with its
  defaults: QDQ, S8S8, min-max, the same 512 calibration images as ours);
* ours: ``modelyard.compress.select_quantized`` (every variant measured on the
  validation split; the fastest within an accuracy budget of 0.5 points kept, ranked
  by the geometric mean of its batch-1 and batch-64 latency relative to fp32, since
  the goals are at both; never one slower than fp32). Candidates: the default ones, the kernel flavours in
  :data:`FLAVOURS` (unsigned dynamic weights, 7-bit weights, S8S8 QOperator), and,
  unless ``--no-qat``, a QAT variant (one epoch of ``qat_finetune``, exported by
  ``export_qat_onnx``). Trained models are saved in ``--workdir``; ``--reuse`` loads
  them (and the QAT exports) and ``--retime`` also the selection, so the contenders
  can be timed again when the machine is quieter.

All ONNX Runtime latencies come from ``modelyard.compress.measure`` (one intra-op
thread, warm-up excluded); the contenders are timed in ``--rounds`` interleaved rounds
and each p50 is the median over rounds, so a burst of load on a shared machine hits
every contender alike. Accuracy is on the 10,000 test images. Prints the selection
table, then latency at batch 1 and 64, the ratios and each goal's pass or fail.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import modelyard as my
from modelyard.compress import (
    CalibrationReader,
    QuantSpec,
    default_candidates,
    export_onnx,
    export_qat_onnx,
    measure,
    qat_finetune,
    select_quantized,
)
from modelyard.data import ImageSplit
from modelyard.models import ImageNetConfig, load_predictor, save_torch
from modelyard.models._image import as_pixels
from modelyard.train import fit_image

CONFIGS = {
    "mlp": ImageNetConfig(arch="mlp", hidden_sizes=(2048, 2048)),
    "cnn": ImageNetConfig(),
}
BATCHES = (1, 64)
#: Kernel flavours measured beside the default candidates, to show what each costs on this CPU
#: (they compete in the selection like any other variant).
FLAVOURS = [
    QuantSpec(mode="dynamic", weight_type="uint8"),
    QuantSpec(mode="dynamic", reduce_range=True),
    QuantSpec(mode="static", per_channel=True, reduce_range=True),
    QuantSpec(mode="static", activation_type="int8", quant_format="qoperator"),
]
GOALS = {
    "size_ratio_max": 0.27,
    "vs_fastest_int8_peer_max": 1.0,
    "vs_ort_fp32_max": 0.3,
    "never_above_ort_fp32": 1.0,
    "accuracy_drop_points_max": 0.5,
}


def torch_latency(module: nn.Module, pixels: torch.Tensor, batch: int, repeats: int, warmup: int = 10) -> float:
    """p50 milliseconds of ``module(x)`` on one thread under inference mode."""
    x = pixels[np.arange(batch) % len(pixels)]
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            module(x)
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            module(x)
            times.append((time.perf_counter_ns() - t0) / 1e6)
    return float(np.percentile(times, 50))


def torch_accuracy(module: nn.Module, split: ImageSplit, image_shape: tuple[int, int, int]) -> float:
    with torch.inference_mode():
        pred = torch.cat([module(as_pixels(split.x[i : i + 2048], image_shape)).argmax(1)
                          for i in range(0, len(split), 2048)])
    return float((pred.numpy() == split.y).mean())


def torch_size(module: nn.Module) -> int:
    """Bytes of the module's state as torch.save writes them (measured in memory, never loaded)."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def ort_peers(kind: str, fp32: Path, folder: Path, calibration: ImageSplit) -> dict[str, Path]:
    """ONNX Runtime's own dynamic and static int8 with their default settings."""
    from onnxruntime.quantization import (
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    dyn, pre, static = (folder / f"{kind}.ort_dynamic_int8.onnx", folder / f"{kind}.ort_pre.onnx",
                        folder / f"{kind}.ort_static_int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_dynamic(str(fp32), str(dyn))
            quant_pre_process(str(fp32), str(pre))
            reader = CalibrationReader.from_data(fp32, calibration, rows=512, batch_size=64)
            quantize_static(str(pre), str(static), reader)
    finally:
        root.setLevel(level)
    return {"ort_dynamic_int8": dyn, "ort_static_int8": static}


def run_model(kind: str, data: Any, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    config = CONFIGS[kind].model_copy(update={"max_epochs": args.epochs, "patience": args.epochs})
    weights = folder / f"{kind}.safetensors"
    t0 = time.perf_counter()
    if (args.reuse or args.retime) and weights.is_file():
        predictor = load_predictor(weights)
        print(f"[{kind}] reused the model trained earlier ({weights})", flush=True)
    else:
        predictor = fit_image(data.train, data.valid, config, classes=data.classes)
        save_torch(predictor, weights)
        print(f"[{kind}] trained {predictor.best_epoch_} epoch(s) in {time.perf_counter() - t0:.0f} s", flush=True)
    fit_s = time.perf_counter() - t0
    fp32 = folder / f"{kind}.fp32.onnx"
    export_onnx(predictor, fp32, sample=data.valid.x[:256])
    calib = ImageSplit(data.train.x[:4096], data.train.y[:4096])
    extra = {}
    if not args.no_qat:
        t0 = time.perf_counter()
        qat_path = folder / f"{kind}.qat.onnx"
        if (args.reuse or args.retime) and qat_path.is_file():
            print(f"[{kind}] reused the QAT export made earlier ({qat_path})", flush=True)
        else:
            qat = qat_finetune(predictor, data.train, data.valid, epochs=1)
            export_qat_onnx(qat, qat_path, sample=data.valid.x[:256])
            print(f"[{kind}] QAT fine-tuning and export in {time.perf_counter() - t0:.0f} s", flush=True)
        extra["qat"] = qat_path
    t0 = time.perf_counter()
    ours = folder / f"{kind}.ours.onnx"
    report = ours.with_name(f"{ours.stem}.selection.json")
    if args.retime and ours.is_file() and report.is_file():
        saved = json.loads(report.read_text())
        chosen, reason, fallback = saved["chosen"], saved["reason"], saved["fallback"]
        table = pd.DataFrame(saved["table"])
        print(f"[{kind}] reused the selection made earlier ({report})", flush=True)
    else:
        selection = select_quantized(
            fp32, data.valid, ours, calibration=calib, budget=0.005, batch_size=None,
            candidates=[*default_candidates(), *FLAVOURS], extra=extra, workdir=folder / f"{kind}-variants",
            measure_options={"repeats": args.repeats},
        )
        chosen, reason, fallback, table = selection.chosen, selection.reason, selection.fallback, selection.table
    select_s = time.perf_counter() - t0
    cols = ["variant", "kind", "size_bytes", "p50_ms_b1", "p50_ms_b64", "accuracy", "drop", "eligible", "error"]
    print(f"[{kind}] selection in {select_s:.0f} s: {chosen}. {reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        print(table[[c for c in cols if c in table.columns]].to_string(index=False))

    peers = ort_peers(kind, fp32, folder, calib)
    onnx_contenders = {"ours": ours, "ort_fp32": fp32, **peers}
    module = copy.deepcopy(predictor.module).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao warns that it is deprecated
        torch_int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(module), {nn.Linear}, dtype=torch.qint8)
    torch_contenders = {"torch_fp32": module, "torch_dynamic_int8": torch_int8}
    pixels = as_pixels(data.test.x[:64], predictor.image_shape)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    lat: dict[str, dict[int, list[float]]] = {n: {b: [] for b in BATCHES}
                                               for n in [*onnx_contenders, *torch_contenders]}
    results: dict[str, dict[str, Any]] = {}
    try:
        for r in range(args.rounds):
            for name, path in onnx_contenders.items():
                m = measure(path, data.test, name=name, batch_sizes=BATCHES, repeats=args.repeats)
                for b in BATCHES:
                    lat[name][b].append(m.latency[b].p50_ms)
                if r == 0:
                    results[name] = {"size_bytes": m.size_bytes, "accuracy": m.overall["accuracy"]}
            for name, mod in torch_contenders.items():
                for b in BATCHES:
                    lat[name][b].append(torch_latency(mod, pixels, b, args.repeats))
                if r == 0:
                    results[name] = {"size_bytes": torch_size(mod),
                                     "accuracy": torch_accuracy(mod, data.test, predictor.image_shape)}
    finally:
        torch.set_num_threads(threads)
    for name, res in results.items():
        for b in BATCHES:
            res[f"p50_ms_b{b}"] = statistics.median(lat[name][b])
            res[f"p50_ms_b{b}_rounds"] = lat[name][b]

    ours, fp = results["ours"], results["ort_fp32"]
    peers_int8 = ["ort_dynamic_int8", "ort_static_int8", "torch_dynamic_int8"]
    ratios: dict[str, float] = {"size_vs_ort_fp32": ours["size_bytes"] / fp["size_bytes"]}
    for b in BATCHES:
        key = f"p50_ms_b{b}"
        fastest = min(peers_int8, key=lambda n: results[n][key])
        ratios[f"b{b}_vs_torch_fp32"] = ours[key] / results["torch_fp32"][key]
        ratios[f"b{b}_vs_ort_fp32"] = ours[key] / fp[key]
        ratios[f"b{b}_vs_fastest_int8_peer"] = ours[key] / results[fastest][key]
        ratios[f"b{b}_fastest_int8_peer"] = fastest  # type: ignore[assignment]
    drop_points = 100 * (fp["accuracy"] - ours["accuracy"])
    goals = {
        "size <= 0.27x fp32": ratios["size_vs_ort_fp32"] <= GOALS["size_ratio_max"],
        "latency <= 1.0x fastest int8 peer (b1, b64)": all(
            ratios[f"b{b}_vs_fastest_int8_peer"] <= GOALS["vs_fastest_int8_peer_max"] for b in BATCHES),
        "latency <= 0.3x ORT fp32 (b1, b64)": all(ratios[f"b{b}_vs_ort_fp32"] <= GOALS["vs_ort_fp32_max"]
                                                  for b in BATCHES),
        "never above 1.0x ORT fp32 (b1, b64)": all(ratios[f"b{b}_vs_ort_fp32"] <= GOALS["never_above_ort_fp32"]
                                                   for b in BATCHES),
        "accuracy drop <= 0.5 points": drop_points <= GOALS["accuracy_drop_points_max"],
    }
    print(f"\n[{kind}] contenders (test split, p50 = median of {args.rounds} interleaved rounds, one thread)")
    print(f"{'contender':<20}{'size MB':>9}{'accuracy':>10}{'b1 ms':>9}{'b64 ms':>9}")
    for name, res in results.items():
        print(f"{name:<20}{res['size_bytes'] / 1e6:9.3f}{res['accuracy']:10.4f}"
              f"{res['p50_ms_b1']:9.3f}{res['p50_ms_b64']:9.3f}")
    for key, value in ratios.items():
        print(f"  {key:<30} {value if isinstance(value, str) else f'{value:.3f}'}")
    print(f"  accuracy drop vs ORT fp32: {drop_points:+.2f} points (vs torch fp32: "
          f"{100 * (results['torch_fp32']['accuracy'] - ours['accuracy']):+.2f})")
    for goal, ok in goals.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {goal}")
    return {
        "config": config.model_dump(), "fit_s": fit_s, "select_s": select_s, "chosen": chosen,
        "reason": reason, "selection_table": json.loads(table.to_json(orient="records")),
        "fallback": fallback, "results": results, "ratios": ratios,
        "accuracy_drop_points": drop_points, "goals": goals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=sorted(CONFIGS))
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of each model (brief on purpose)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds of the final contenders")
    parser.add_argument("--repeats", type=int, default=100, help="timed runs per batch size per measurement")
    parser.add_argument("--no-qat", action="store_true", help="leave the QAT variant out of the candidates")
    parser.add_argument("--train-rows", type=int, default=None, help="train on the first N images (smoke runs)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the model files here")
    parser.add_argument("--reuse", action="store_true",
                        help="load the trained models and QAT exports from --workdir when there")
    parser.add_argument("--retime", action="store_true",
                        help="as --reuse, and also reuse the selection: only time the contenders again")
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = my.data.load("fashion_mnist")
    if args.train_rows:
        data.train = ImageSplit(data.train.x[: args.train_rows], data.train.y[: args.train_rows])
    print(f"Fashion-MNIST: {len(data.train)} train, {len(data.valid)} valid, {len(data.test)} test images")
    out: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "models": {}}
    with tempfile.TemporaryDirectory(prefix="modelyard-int8-") as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for kind in args.models:
            out["models"][kind] = run_model(kind, data, args, folder)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, default=str))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
