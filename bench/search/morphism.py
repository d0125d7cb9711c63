"""Network morphism with weight inheritance against training each child from scratch (issue 3, "NAS").

Run from the repository root:

    MODELYARD_DATA_DIR=../shared/data .venv/bin/python bench/search/morphism.py \
        [--train 3000 --valid 1000 --models 20 --epochs 2 --seeds 0 1 2] [--target 0.88] [--out morphism.json]

On a seeded Fashion-MNIST subset the same NASH hill-climbing search (``morphism_search``:
per round, ``--neighbors`` children of the parent, each made by one to three random
function-preserving transforms, plus the parent trained further; the round's best is the
next parent) runs in three modes, per seed, one after the other in this process:

* ``scratch``  -- each child is re-initialized and trains the epochs its lineage has had
  (its parent's lineage epochs + ``--epochs``), so each final model has seen as much
  training as an inherited one: the baseline "training each child from scratch". It
  runs ``--models`` models; its best accuracy is the seed's target unless ``--target``
  is given (e.g. the RL controller's best accuracy from ``bench/search/nas.py``);
* ``inherit``  -- each child starts from its parent's weights and trains ``--epochs``;
  it stops as soon as a model reaches the target, after at most ``--inherit-models``
  (default ``2 * --models``: the question is wall time to the target, not models);
* ``scratch-same`` -- re-initialized and trained ``--epochs`` only, ``--models`` models
  (as cheap per model as ``inherit``; shows what inheritance adds at equal epochs).

Prints, per seed and mode, the best validation accuracy, the wall time, the epochs
trained, and the time until a model first reached the target and each of
``--thresholds``, in wall seconds and in this process's CPU seconds (which other
processes on a shared machine barely move); then the ratio ``scratch time / inherit
time`` to the target per seed and its median. CPU, one thread
(``torch.set_num_threads(1)``); an untimed warm-up run comes first, since a process's
first convolutions are several times slower.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from modelyard.data import ImageSplit, load
from modelyard.search._conv_morphism import morphism_search


def _subset(split: ImageSplit, n: int, seed: int) -> ImageSplit:
    if n > len(split):
        sys.exit(f"Asked for {n} images but the split holds {len(split)}.")
    idx = np.sort(np.random.default_rng(seed).choice(len(split), n, replace=False))
    return ImageSplit(split.x[idx], split.y[idx])


def time_to(records: list[dict], target: float, clock: str = "seconds") -> float | None:
    """Seconds (``clock``: "seconds" wall or "cpu_seconds") until the first model with accuracy >= target."""
    for r in records:
        if r["accuracy"] >= target - 1e-12:
            return r[clock]
    return None


def _fmt(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=3000, help="training images (seeded subset)")
    parser.add_argument("--valid", type=int, default=1000, help="validation images (seeded subset)")
    parser.add_argument("--models", type=int, default=20, help="models of the scratch runs, the first included")
    parser.add_argument("--inherit-models", type=int, default=None,
                        help="most models of the inheriting run (default 2 * --models); it stops at the target")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per inherited child")
    parser.add_argument("--neighbors", type=int, default=3,
                        help="morphed children per round (the parent trained further is one more)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--no-scratch-same", action="store_true", help="skip the equal-epochs scratch run")
    parser.add_argument("--target", type=float, default=None,
                        help="accuracy to reach; default each seed's best accuracy of the 'scratch' run")
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.80, 0.85, 0.87, 0.88],
                        help="further accuracies whose time to reach is printed")
    parser.add_argument("--out", type=Path, default=None, help="write every record and figure as JSON")
    parser.add_argument("--quiet", action="store_true", help="no line per trained model")
    args = parser.parse_args()
    inherit_models = args.inherit_models or 2 * args.models
    torch.set_num_threads(1)

    data = load("fashion_mnist")
    train = _subset(data.train, args.train, 0)
    valid = _subset(data.valid, args.valid, 1)
    morphism_search(_subset(train, 256, 0), _subset(valid, 128, 0), models=2, epochs=1, seed=0,
                    n_classes=data.n_classes)  # warm-up, untimed

    def show(rec: dict, _model: torch.nn.Module) -> None:
        if not args.quiet:
            print(f"  model {rec['model']:2d} parent {rec['parent']!s:>4} acc {rec['accuracy']:.4f} "
                  f"t {rec['seconds']:7.1f}s ep {rec['epochs']:2d} params {rec['params']:7d} "
                  f"MFLOPs {rec['flops'] / 1e6:6.2f}  {rec['description']}  {rec['morphisms']}", flush=True)

    def run(mode: str, seed: int, **kw) -> dict:
        print(f"== seed {seed} {mode}", flush=True)
        t0 = time.perf_counter()
        records = morphism_search(train, valid, epochs=args.epochs, seed=seed, n_classes=data.n_classes,
                                  neighbors=args.neighbors, callback=show, **kw)
        return {"records": records, "best_accuracy": max(r["accuracy"] for r in records),
                "seconds": time.perf_counter() - t0, "models": len(records),
                "epochs_trained": sum(r["epochs"] for r in records)}

    results: dict[str, dict] = {}

    def summary(final: bool) -> dict[str, float | None]:
        medians: dict[str, float | None] = {}
        for clock, name in (("seconds", "wall"), ("cpu_seconds", "CPU")):
            ratios = [r["ratio"][clock] for r in results.values()]
            medians[clock] = statistics.median(ratios) if None not in ratios else None
            if final:
                print(f"ratio of {name} time to the target, scratch / inherit, per seed: "
                      + ", ".join("n/a" if r is None else f"{r:.2f}x" for r in ratios)
                      + ("" if medians[clock] is None else f"; median {medians[clock]:.2f}x"))
        if args.out:  # written after every seed, so a long run leaves its finished seeds behind
            args.out.write_text(json.dumps({
                "command": " ".join(["python", *sys.argv]),
                "config": vars(args) | {"out": str(args.out), "inherit_models": inherit_models},
                "machine": {"python": platform.python_version(), "torch": torch.__version__,
                            "processor": platform.processor() or platform.machine(), "threads": 1},
                "complete": final,
                "seeds": results,
                "median_ratio": medians,
            }, indent=1))
        return medians

    for seed in args.seeds:
        runs = {"scratch": run("scratch", seed, models=args.models, from_scratch=True, scratch_epochs="lineage")}
        target = runs["scratch"]["best_accuracy"] if args.target is None else args.target
        runs["inherit"] = run("inherit", seed, models=inherit_models, stop_at=target)
        if not args.no_scratch_same:
            runs["scratch-same"] = run("scratch-same", seed, models=args.models, from_scratch=True,
                                       scratch_epochs="same")
        marks = sorted({*args.thresholds, target})
        ratio: dict[str, float | None] = {}
        for clock in ("seconds", "cpu_seconds"):
            for r in runs.values():
                r.setdefault("time_to", {})[clock] = {f"{m:.4f}": time_to(r["records"], m, clock) for m in marks}
                r.setdefault("time_to_target", {})[clock] = time_to(r["records"], target, clock)
            a, b = runs["inherit"]["time_to_target"][clock], runs["scratch"]["time_to_target"][clock]
            ratio[clock] = None if a is None or b is None else b / a
        results[str(seed)] = {"target": target, "runs": runs, "ratio": ratio}

        print(f"\nseed {seed}: Fashion-MNIST {args.train} train / {args.valid} valid, {args.epochs} epochs per "
              f"child, target accuracy {target:.4f}; times to reach each accuracy as wall s / CPU s")
        print(f"{'mode':<13} {'models':>6} {'best acc':>8} {'wall s':>7} {'CPU s':>7} {'epochs':>6}  "
              + " ".join(f"{'t@' + format(m, '.3f'):>13}" for m in marks))
        for mode, r in runs.items():
            cpu = r["records"][-1]["cpu_seconds"]
            cells = [f"{_fmt(r['time_to']['seconds'][f'{m:.4f}'])}/{_fmt(r['time_to']['cpu_seconds'][f'{m:.4f}'])}"
                     for m in marks]
            print(f"{mode:<13} {r['models']:6d} {r['best_accuracy']:8.4f} {r['seconds']:7.1f} {cpu:7.1f} "
                  f"{r['epochs_trained']:6d}  " + " ".join(f"{c:>13}" for c in cells))
        print("time to target, scratch / inherit: "
              + ", ".join(f"{name} {'n/a (not reached)' if v is None else f'{v:.2f}x'}"
                          for name, v in (("wall", ratio["seconds"]), ("CPU", ratio["cpu_seconds"])))
              + "\n", flush=True)
        summary(final=False)

    summary(final=True)
    if args.out:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
