"""Pruning on Fashion-MNIST: 90% unstructured + int8 size, structured to 50% FLOPs vs torch.nn.utils.prune, lottery ticket.

Run from the repository root:

    MODELYARD_DATA_DIR=../shared/data .venv/bin/python bench/compress/prune.py [--out prune.json]
        [--epochs 12 --finetune-epochs 8 --structured-epochs 4 --wide 1024 --wide-epochs 8]
        [--lottery-rounds 10 --lottery-epochs 8] [--sections unstructured structured lottery] [--quick]

Models: LeNet-300-100 (``ImageNetConfig(arch="mlp", hidden_sizes=(300, 100))``, the
network of Frankle & Carbin's lottery-ticket experiments) and, for the latency of
structured pruning, a wider 784-W-W-10 MLP (``--wide W``; 0 skips it). Dense models are
fitted with :func:`modelyard.train.fit_image` (early stopping on the validation split).
Every variant is exported with :func:`modelyard.compress.export_onnx` and judged by
:func:`modelyard.compress.measure` on the 10,000 test images: ONNX file size raw and
gzip -9, ONNX Runtime p50 latency at batch 1 and 64 (one intra-op thread, pinned,
warm-up excluded), accuracy. Ratios compare variants measured in this one process.

Sections and goals (issue 4):

* ``unstructured``: 90% of the weights zeroed by global magnitude pruning along TF-MOT's
  polynomial-decay schedule (0 -> 90% over the first 60% of the fine-tuning steps, masks
  updated every 100 steps) while fine-tuning; masks folded; int8 by ONNX Runtime's
  dynamic quantizer. One-shot magnitude and one-shot Optimal Brain Damage (Gauss-Newton
  diagonal) at 90% without fine-tuning are shown for reference. Goals: accuracy drop
  <= 1 point; gzip size of pruned + int8 >= 10x smaller than the fp32 dense file (gzip
  of both; the raw fp32 ratio is printed too).
* ``structured``: neurons removed to 50% of the dense FLOPs (same fraction in each
  hidden layer, L2 norm of incoming weights), then fine-tuned. Peer: ``torch.nn.utils.prune
  .ln_structured`` at the same fraction of rows per layer, fine-tuned the same way, masks
  removed: same shapes, so no speed-up. Goals: latency <= 0.6x dense (p50, batch 1 and
  64, each reported), accuracy drop <= 1 point.
* ``lottery``: iterative magnitude pruning, 20% of the remaining weights per round (10%
  for the output layer, as in the paper), rewinding to the initialization, each round
  trained ``--lottery-epochs`` epochs with Adam (lr 1.2e-3, batch 60, as the paper). A
  random re-initialization with the last mask is the control. Goal: a ticket with <= 20%
  of the weights within 0.5 points of the dense test accuracy.

The pruned models train for more epochs than the early-stopped dense one, so each
section also fine-tunes a copy of the dense model the same epochs without pruning and
prints the pruned model's accuracy against it (the goals are judged against the dense
model as fitted, as TF-MOT reports them).

Torch trains on one thread (``torch.set_num_threads(1)``), CPU.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.utils import prune as torch_prune

from modelyard.compress import export_onnx, measure
from modelyard.compress._lottery import find_ticket, reinitialized_control
from modelyard.compress._obd import obd_saliency
from modelyard.compress._prune import (
    GradualPruner,
    PolynomialDecay,
    fine_tuner,
    fold_masks,
    prune_unstructured,
    sparse_sizes,
    weight_sparsity,
)
from modelyard.compress._structured import prune_structured
from modelyard.data import ImageSplit, load
from modelyard.models import ImageNetConfig
from modelyard.models._image import ImageNet, ImagePredictor
from modelyard.train import fit_image

LENET = (300, 100)


def log(msg: str) -> None:
    print(msg, flush=True)


def _subset(split: ImageSplit, n: int | None, seed: int) -> ImageSplit:
    if n is None or n >= len(split):
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), n, replace=False))
    return ImageSplit(split.x[idx], split.y[idx])


def accuracy(model: ImagePredictor, split: ImageSplit) -> float:
    return float((model.predict(split.x) == split.y).mean())


def quantize_int8(src: Path, dst: Path) -> Path:
    """ONNX Runtime dynamic int8 (signed, symmetric weights): zero weights stay exact zeros."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" advice, once per call
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


class Variants:
    """Export, quantize and measure variants in one folder; keep the measurements."""

    def __init__(self, folder: Path, test: ImageSplit, sample: np.ndarray, repeats: int) -> None:
        self.folder, self.test, self.sample, self.repeats = folder, test, sample, repeats
        self.found: dict[str, dict[str, Any]] = {}

    def add(self, name: str, model: ImagePredictor | None = None, *, path: Path | None = None) -> dict[str, Any]:
        if path is None:
            path = self.folder / f"{name}.onnx"
            export_onnx(model, path, sample=self.sample)
        m = measure(path, self.test, name=name, batch_sizes=(1, 64), repeats=self.repeats, warmup=20)
        row = {
            "size_bytes": m.size_bytes,
            "gzip_bytes": m.gzip_bytes,
            "p50_ms_b1": m.latency[1].p50_ms,
            "p50_ms_b64": m.latency[64].p50_ms,
            "p99_ms_b1": m.latency[1].p99_ms,
            "p99_ms_b64": m.latency[64].p99_ms,
            "accuracy": m.overall["accuracy"],
        }
        self.found[name] = row
        log(f"  {name:<28} size {row['size_bytes'] / 1e6:7.3f} MB  gzip {row['gzip_bytes'] / 1e6:7.3f} MB  "
            f"p50 b1 {row['p50_ms_b1']:.4f} ms  b64 {row['p50_ms_b64']:.4f} ms  accuracy {row['accuracy']:.4f}")
        return row

    def remeasure(self, names: list[str], rounds: int = 2) -> None:
        """Latency again, alternating variants, keeping each one's best p50 (less exposed to machine load)."""
        for _ in range(rounds):
            for name in names:
                m = measure(self.folder / f"{name}.onnx", self.test, name=name, batch_sizes=(1, 64),
                            repeats=self.repeats, warmup=20)
                for b in (1, 64):
                    key = f"p50_ms_b{b}"
                    self.found[name][key] = min(self.found[name][key], m.latency[b].p50_ms)


def fit_dense(data: Any, hidden: tuple[int, ...], epochs: int, seed: int) -> tuple[ImagePredictor, float]:
    t0 = time.perf_counter()
    config = ImageNetConfig(arch="mlp", hidden_sizes=hidden, max_epochs=epochs, patience=3, seed=seed)
    model = fit_image(data.train, data.valid, config, classes=data.classes)
    return model, time.perf_counter() - t0


# -- sections ---------------------------------------------------------------------------


def unstructured(args: argparse.Namespace, data: Any, dense: ImagePredictor, v: Variants) -> dict[str, Any]:
    log("\n== 90% unstructured: global magnitude, polynomial decay while fine-tuning; int8 ==")
    out: dict[str, Any] = {}
    train = data.train
    one_shot = prune_unstructured(dense, 0.9, scope="global", fold=True)
    one_shot_layer = prune_unstructured(dense, 0.9, scope="layer", fold=True)
    t0 = time.perf_counter()
    saliency = obd_saliency(dense, train, max_rows=args.obd_rows)
    obd_seconds = time.perf_counter() - t0
    obd = prune_unstructured(dense, 0.9, scope="global", scores=saliency, fold=True)
    out["one_shot_valid_accuracy"] = {
        "dense": accuracy(dense, data.valid),
        "magnitude_global": accuracy(one_shot, data.valid),
        "magnitude_layer": accuracy(one_shot_layer, data.valid),
        "obd_global": accuracy(obd, data.valid),
        "obd_seconds": obd_seconds,
    }
    log("  one-shot 90%, no fine-tuning (valid accuracy): "
        + ", ".join(f"{k} {val:.4f}" for k, val in out["one_shot_valid_accuracy"].items() if k != "obd_seconds")
        + f"  (OBD diagonal on {args.obd_rows} rows: {obd_seconds:.1f} s)")

    steps = math.ceil(len(train) / args.batch_size) * args.finetune_epochs
    schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=int(0.6 * steps), frequency=100)
    t0 = time.perf_counter()
    pruner = GradualPruner(schedule, scope="global").fit(
        dense, fine_tuner(train, lr=args.finetune_lr, batch_size=args.batch_size, seed=1), epochs=args.finetune_epochs
    )
    tune_seconds = time.perf_counter() - t0
    pruned = pruner.model_
    sparsity = weight_sparsity(pruned)
    log(f"  gradual: {pruner.steps_} steps, {len(pruner.updates_)} mask updates, {tune_seconds:.0f} s; "
        f"sparsity {sparsity['overall']:.4f} ({', '.join(f'{k} {s:.3f}' for k, s in sparsity.items() if k != 'overall')})")

    v.add("dense_fp32", dense)
    v.add("pruned90_fp32", pruned)
    quantize_int8(v.folder / "dense_fp32.onnx", v.folder / "dense_int8.onnx")
    quantize_int8(v.folder / "pruned90_fp32.onnx", v.folder / "pruned90_int8.onnx")
    v.add("dense_int8", path=v.folder / "dense_int8.onnx")
    v.add("pruned90_int8", path=v.folder / "pruned90_int8.onnx")
    f = v.found
    ref = f["dense_fp32"]
    sizes, dense_sizes = sparse_sizes(pruned), sparse_sizes(dense)
    control = _dense_control(dense, train, args.finetune_lr, args.batch_size, args.finetune_epochs, seed=1)
    control_test = accuracy(control, data.test)
    out.update({
        "sparsity": sparsity,
        "schedule": dataclasses.asdict(schedule),
        "steps": pruner.steps_,
        "fine_tune_seconds": tune_seconds,
        "accuracy_drop_points": 100 * (ref["accuracy"] - f["pruned90_fp32"]["accuracy"]),
        "accuracy_drop_points_int8": 100 * (ref["accuracy"] - f["pruned90_int8"]["accuracy"]),
        "gzip_ratio_fp32_gzip_over_pruned_int8_gzip": ref["gzip_bytes"] / f["pruned90_int8"]["gzip_bytes"],
        "ratio_fp32_raw_over_pruned_int8_gzip": ref["size_bytes"] / f["pruned90_int8"]["gzip_bytes"],
        "gzip_ratio_fp32_over_pruned_fp32": ref["gzip_bytes"] / f["pruned90_fp32"]["gzip_bytes"],
        "gzip_ratio_fp32_over_dense_int8": ref["gzip_bytes"] / f["dense_int8"]["gzip_bytes"],
        "safetensors_pruned": vars(sizes),
        "safetensors_dense": vars(dense_sizes),
        "dense_same_fine_tuning_test_accuracy": control_test,
        "accuracy_drop_points_vs_dense_same_fine_tuning": 100 * (control_test - f["pruned90_fp32"]["accuracy"]),
    })
    out["goals"] = {
        "accuracy_drop_le_1_point": out["accuracy_drop_points"] <= 1.0,
        "pruned_int8_gzip_ge_10x_smaller": out["gzip_ratio_fp32_gzip_over_pruned_int8_gzip"] >= 10.0,
    }
    log(f"  accuracy drop {out['accuracy_drop_points']:.2f} points (int8: {out['accuracy_drop_points_int8']:.2f}) "
        f"[goal <= 1: {'PASS' if out['goals']['accuracy_drop_le_1_point'] else 'FAIL'}]")
    log(f"  gzip: dense fp32 / pruned+int8 = {out['gzip_ratio_fp32_gzip_over_pruned_int8_gzip']:.1f}x "
        f"(raw fp32 / pruned+int8 gzip {out['ratio_fp32_raw_over_pruned_int8_gzip']:.1f}x; pruned fp32 alone "
        f"{out['gzip_ratio_fp32_over_pruned_fp32']:.1f}x; int8 alone {out['gzip_ratio_fp32_over_dense_int8']:.1f}x) "
        f"[goal >= 10x: {'PASS' if out['goals']['pruned_int8_gzip_ge_10x_smaller'] else 'FAIL'}]")
    log(f"  (the dense model fine-tuned the same {args.finetune_epochs} epochs without pruning: test {control_test:.4f}; "
        f"drop against it {out['accuracy_drop_points_vs_dense_same_fine_tuning']:.2f} points)")
    log(f"  safetensors weights: dense model {dense_sizes.dense_bytes / 1e6:.3f} MB (gzip "
        f"{dense_sizes.dense_gzip_bytes / 1e6:.3f}); pruned stored dense {sizes.dense_bytes / 1e6:.3f} MB (gzip "
        f"{sizes.dense_gzip_bytes / 1e6:.3f}); pruned as bitmask + values (save_sparse) {sizes.sparse_bytes / 1e6:.3f} MB "
        f"(gzip {sizes.sparse_gzip_bytes / 1e6:.3f})")
    return out


def _dense_control(dense: ImagePredictor, train: ImageSplit, lr: float, batch_size: int, epochs: int, seed: int) -> ImagePredictor:
    """The dense model trained the same extra epochs as a pruned one: what the fine-tuning alone gives."""
    control = copy.copy(dense)
    control.module = copy.deepcopy(dense.module)
    fine_tuner(train, lr=lr, batch_size=batch_size, seed=seed)(control.module, epochs)
    return control


def _torch_peer(dense: ImagePredictor, removed: dict[str, float]) -> ImagePredictor:
    """``torch.nn.utils.prune.ln_structured`` (L2, rows) at each layer's removed fraction: masks, same shapes."""
    peer = copy.copy(dense)
    peer.module = copy.deepcopy(dense.module)
    for name, fraction in removed.items():
        torch_prune.ln_structured(peer.module.get_submodule(name), "weight", amount=fraction, n=2, dim=0)
    return peer


def structured(
    args: argparse.Namespace, data: Any, dense: ImagePredictor, v: Variants, tag: str
) -> dict[str, Any]:
    log(f"\n== structured to 50% FLOPs ({tag}) vs torch.nn.utils.prune.ln_structured ==")
    result = prune_structured(dense, data.train, flops=0.5, scope="layer")
    tune = fine_tuner(data.train, lr=args.finetune_lr, batch_size=args.batch_size, seed=2)
    t0 = time.perf_counter()
    tune(result.model.module, args.structured_epochs)
    ours_seconds = time.perf_counter() - t0
    peer = _torch_peer(dense, result.removed_fraction)
    tune(peer.module, args.structured_epochs)  # masks stay attached while it trains
    control = _dense_control(dense, data.train, args.finetune_lr, args.batch_size, args.structured_epochs, seed=2)
    control_test = accuracy(control, data.test)
    fold_masks(peer)  # torch_prune.remove: dense shapes with zero rows
    log(f"  widths {result.widths}; FLOPs {result.flops_before} -> {result.flops_after} "
        f"({result.flops_ratio:.3f}); params {result.params_before} -> {result.params_after}; "
        f"fine-tuned {args.structured_epochs} epochs in {ours_seconds:.0f} s")
    names = [f"{tag}_dense", f"{tag}_structured50", f"{tag}_torch_ln_structured"]
    v.add(names[0], dense)
    v.add(names[1], result.model)
    v.add(names[2], peer)
    v.remeasure(names)
    f = v.found
    ref = f[names[0]]
    out = {
        "widths": result.widths,
        "flops_before": result.flops_before,
        "flops_after": result.flops_after,
        "flops_ratio": result.flops_ratio,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "latency_ratio_b1": f[names[1]]["p50_ms_b1"] / ref["p50_ms_b1"],
        "latency_ratio_b64": f[names[1]]["p50_ms_b64"] / ref["p50_ms_b64"],
        "peer_latency_ratio_b1": f[names[2]]["p50_ms_b1"] / ref["p50_ms_b1"],
        "peer_latency_ratio_b64": f[names[2]]["p50_ms_b64"] / ref["p50_ms_b64"],
        "accuracy_drop_points": 100 * (ref["accuracy"] - f[names[1]]["accuracy"]),
        "peer_accuracy_drop_points": 100 * (ref["accuracy"] - f[names[2]]["accuracy"]),
        "dense_same_fine_tuning_test_accuracy": control_test,
        "accuracy_drop_points_vs_dense_same_fine_tuning": 100 * (control_test - f[names[1]]["accuracy"]),
        "variants": names,
    }
    out["goals"] = {
        "latency_le_0.6_b1": out["latency_ratio_b1"] <= 0.6,
        "latency_le_0.6_b64": out["latency_ratio_b64"] <= 0.6,
        "accuracy_drop_le_1_point": out["accuracy_drop_points"] <= 1.0,
    }
    g = out["goals"]
    log(f"  latency ours/dense: b1 {out['latency_ratio_b1']:.3f} [{'PASS' if g['latency_le_0.6_b1'] else 'FAIL'}], "
        f"b64 {out['latency_ratio_b64']:.3f} [{'PASS' if g['latency_le_0.6_b64'] else 'FAIL'}]; "
        f"torch peer/dense: b1 {out['peer_latency_ratio_b1']:.3f}, b64 {out['peer_latency_ratio_b64']:.3f}")
    log(f"  accuracy drop: ours {out['accuracy_drop_points']:.2f} points "
        f"[{'PASS' if g['accuracy_drop_le_1_point'] else 'FAIL'}], torch peer {out['peer_accuracy_drop_points']:.2f}; "
        f"dense fine-tuned the same epochs: test {control_test:.4f} (ours "
        f"{out['accuracy_drop_points_vs_dense_same_fine_tuning']:.2f} points below it)")
    return out


def lottery(args: argparse.Namespace, data: Any) -> dict[str, Any]:
    log("\n== lottery ticket: IMP, 20% per round (output 10%), rewind to init ==")
    config = ImageNetConfig(arch="mlp", hidden_sizes=LENET, dropout=0.0, seed=args.seed)
    pixels = data.train.x.astype(np.float64) / 255.0
    mean, std = pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3))

    def fresh(seed: int) -> ImagePredictor:
        torch.manual_seed(seed)
        return ImagePredictor(ImageNet(data.train.image_shape, data.n_classes, config, mean=mean, std=std),
                              data.classes, config)

    init = fresh(args.seed)
    tune = fine_tuner(data.train, lr=1.2e-3, batch_size=60, seed=3)
    tests: list[float] = []

    def evaluate(module: torch.nn.Module) -> float:
        model = copy.copy(init)
        model.module = module
        tests.append(accuracy(model, data.test))
        return accuracy(model, data.valid)

    t0 = time.perf_counter()

    def progress(r: Any) -> None:
        log(f"  round {r.round}: {100 * r.remaining:5.1f}% of weights, valid {r.score:.4f}, test {tests[-1]:.4f} "
            f"({time.perf_counter() - t0:.0f} s)")

    rate = {"body.0": 0.2, "body.3": 0.2, "head": 0.1}
    result = find_ticket(init, tune, evaluate, rounds=args.lottery_rounds, epochs=args.lottery_epochs,
                         rate=rate, callback=progress)
    control = reinitialized_control(result, fresh(args.seed + 1000))
    tune(control.module, args.lottery_epochs)
    control_test = accuracy(control, data.test)
    dense_test = tests[0]
    rows = [dict(row, test_accuracy=t) for row, t in zip(result.table(), tests, strict=True)]
    eligible = [r for r in rows[1:] if r["remaining"] <= 0.2]
    winners = [r for r in eligible if r["test_accuracy"] >= dense_test - 0.005]
    best = min(winners, key=lambda r: r["remaining"]) if winners else None
    out = {
        "rounds": rows,
        "dense_test_accuracy": dense_test,
        "reinit_control_test_accuracy": control_test,
        "reinit_control_remaining": rows[-1]["remaining"],
        "winning_ticket": best,
        "seconds": time.perf_counter() - t0,
    }
    out["goals"] = {"ticket_le_20pct_within_0.5_points": best is not None}
    last = rows[-1]
    log(f"  dense test {dense_test:.4f}; last round {100 * last['remaining']:.1f}% of weights: ticket "
        f"{last['test_accuracy']:.4f}, random re-init with the same mask {control_test:.4f}")
    log("  winning ticket <= 20% within 0.5 points: "
        + (f"PASS ({100 * best['remaining']:.1f}% of weights, test {best['test_accuracy']:.4f})" if best else "FAIL"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12, help="max epochs of the dense fits (early stopping)")
    parser.add_argument("--finetune-epochs", type=int, default=8, help="fine-tuning epochs of 90%% pruning")
    parser.add_argument("--structured-epochs", type=int, default=4, help="fine-tuning epochs after structured pruning")
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--wide", type=int, default=1024, help="width W of the 784-W-W-10 latency model; 0 skips it")
    parser.add_argument("--wide-epochs", type=int, default=8)
    parser.add_argument("--lottery-rounds", type=int, default=10, help="0.8^10 = 11%% of the hidden weights left")
    parser.add_argument("--lottery-epochs", type=int, default=8)
    parser.add_argument("--obd-rows", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=300, help="timed ONNX Runtime runs per batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sections", nargs="+", default=["unstructured", "structured", "lottery"],
                        choices=["unstructured", "structured", "lottery"])
    parser.add_argument("--quick", action="store_true", help="smoke run: 6,000 training images, 1-2 epochs")
    parser.add_argument("--out", type=Path, default=None, help="write every figure as JSON")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.finetune_epochs, args.structured_epochs, args.wide_epochs = 2, 2, 1, 1
        args.lottery_rounds, args.lottery_epochs, args.repeats, args.obd_rows = 2, 1, 50, 1024
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = load("fashion_mnist")
    if args.quick:
        data.train = _subset(data.train, 6000, args.seed)
    log(f"Fashion-MNIST: {len(data.train)} train, {len(data.valid)} valid, {len(data.test)} test images")
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        v = Variants(Path(tmp), data.test, data.test.x[:64], args.repeats)
        if {"unstructured", "structured"} & set(args.sections):
            dense, seconds = fit_dense(data, LENET, args.epochs, args.seed)
            report["dense"] = {"fit_seconds": seconds, "valid_accuracy": accuracy(dense, data.valid),
                               "epochs": dense.best_epoch_}
            log(f"dense LeNet-300-100: {seconds:.0f} s, best epoch {dense.best_epoch_}, "
                f"valid accuracy {report['dense']['valid_accuracy']:.4f}")
            if "unstructured" in args.sections:
                report["unstructured"] = unstructured(args, data, dense, v)
            if "structured" in args.sections:
                report["structured_lenet"] = structured(args, data, dense, v, "lenet")
                if args.wide:
                    wide, seconds = fit_dense(data, (args.wide, args.wide), args.wide_epochs, args.seed)
                    log(f"dense 784-{args.wide}-{args.wide}-10: {seconds:.0f} s, valid {accuracy(wide, data.valid):.4f}")
                    report["structured_wide"] = structured(args, data, wide, v, f"wide{args.wide}")
        if "lottery" in args.sections:
            report["lottery"] = lottery(args, data)
        report["variants"] = v.found
    report["seconds"] = time.perf_counter() - start
    goals = {f"{section}.{name}": ok for section, part in report.items() if isinstance(part, dict) and "goals" in part
             for name, ok in part["goals"].items()}
    report["goals"] = goals
    log("\nGoals:")
    for name, ok in goals.items():
        log(f"  {'PASS' if ok else 'FAIL'}  {name}")
    log(f"total {report['seconds']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=float))
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
