"""NAS on a Fashion-MNIST subset with a fixed budget of trained models (issue 3, "NAS").

Run from the repository root:

    MODELYARD_DATA_DIR=../shared/data .venv/bin/python bench/search/nas.py \\
        [--train 3000 --valid 1000 --models 40 --epochs 1 --seeds 0 1 2] [--quick] [--out nas.json]

Per seed, every strategy trains ``--models`` networks on the same seeded subset:

* ``rl``, ``evolution``, ``random``: the registered Optuna strategies over ``cell_space(3)``
  (3-block cells; evolution with a population of 10 and tournaments of 3, sized to the
  budget);
* ``pnas``: progressive NAS over the same cells (1, then 2, then 3 blocks; ``--initial``
  one-block cells, then rounds of ``--beam`` ranked by the surrogate);
* ``morphism``: network-morphism hill climbing on its own plain ConvNets (children
  inherit their parent's weights), and the same search with every child trained from
  scratch for the epochs its lineage had (``from_scratch=True``), stopped once it reaches
  the RL controller's best accuracy.

Every cell network is a ``CellNetwork`` (1 cell per stack, 2 stacks, 8 channels, stride-2
stem) trained by ``train_and_score`` (Adam 3e-3, batch 64, ``--epochs``, one thread,
seeded), so a cell gets the same accuracy whichever strategy proposes it; a cell trained
once per seed is reused (its recorded seconds are those of its training).

Prints per seed and strategy the best accuracy and when it was reached; then the goals:

* PNAS: models PNAS trained until one reached the RL controller's best accuracy, against
  the models RL trained to reach it (goal: at most half);
* morphism: wall seconds until a model reached the RL controller's best accuracy, with
  weight inheritance against from scratch (goal: less).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from modelyard.data import load
from modelyard.search._nas import NASRecord, NASResult, nas

STRATEGIES = ("rl", "pnas", "evolution", "random", "morphism")


def _fmt(x: float | None, spec: str = "") -> str:
    return "never" if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--train", type=int, default=3000, help="training images (seeded subset)"
    )
    parser.add_argument(
        "--valid", type=int, default=1000, help="validation images (seeded subset)"
    )
    parser.add_argument(
        "--models", type=int, default=40, help="budget: networks trained per strategy"
    )
    parser.add_argument("--epochs", type=int, default=1, help="epochs per network")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES
    )
    parser.add_argument(
        "--n-blocks", type=int, default=3, help="blocks per cell (PNAS: the most)"
    )
    parser.add_argument(
        "--beam",
        type=int,
        default=6,
        help="PNAS: cells trained per round after the first",
    )
    parser.add_argument(
        "--initial", type=int, default=12, help="PNAS: one-block cells trained first"
    )
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument(
        "--no-scratch", action="store_true", help="skip morphism's from-scratch run"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="600/300 images, 10 models, 2-block cells, one seed",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="write every record and figure as JSON"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no line per trained model"
    )
    args = parser.parse_args()
    if args.quick:
        args.train, args.valid, args.models, args.seeds = 600, 300, 10, args.seeds[:1]
        args.n_blocks, args.beam, args.initial = 2, 3, 4
    torch.set_num_threads(1)
    data = load("fashion_mnist")
    cache: dict = {}  # cells trained once per seed, shared by the strategies (in memory only)
    common = {
        "models": args.models,
        "epochs": args.epochs,
        "n_blocks": args.n_blocks,
        "channels": args.channels,
        "train_size": args.train,
        "valid_size": args.valid,
        "beam": args.beam,
        "initial": args.initial,
        "cache": cache,
    }
    # warm-up, untimed: a process's first convolutions are several times slower
    nas(data, "random", models=1, train_size=256, valid_size=128, n_blocks=1)

    def show(rec: NASRecord) -> None:
        if not args.quiet:
            extra = rec.extra
            note = " cached" if rec.cached else ""
            if "round" in extra:
                note += f" round {extra['round']}" + (
                    ""
                    if extra["predicted"] is None
                    else f" pred {extra['predicted']:.3f}"
                )
            if rec.inherited is not None:
                note += " inherited" if rec.inherited else " scratch"
            print(
                f"  {rec.index:3d} acc {rec.accuracy:.4f} {rec.seconds:5.1f}s params {rec.params:6d} "
                f"MFLOPs {rec.flops / 1e6:5.2f}{note}  {rec.description}",
                flush=True,
            )

    def run(strategy: str, seed: int, **kw: object) -> NASResult:
        print(f"== seed {seed} {strategy} {kw or ''}", flush=True)
        options = (
            {"population_size": 10, "sample_size": 3}
            if strategy == "evolution"
            else kw.pop("options", None)
        )
        result = nas(
            data,
            strategy,
            seed=seed,
            callback=show,
            strategy_options=options,
            **{**common, **kw},
        )
        return result

    report: dict = {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        },
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "seeds": {},
    }
    for seed in args.seeds:
        results: dict[str, NASResult] = {}
        t_seed = time.perf_counter()
        for strategy in args.strategies:
            results[strategy] = run(strategy, seed)
        target = results["rl"].best_accuracy if "rl" in results else None
        rl_at = results["rl"].best.index if "rl" in results else None
        if "morphism" in results and target is not None and not args.no_scratch:
            results["morphism-scratch"] = run(
                "morphism",
                seed,
                options={
                    "from_scratch": True,
                    "scratch_epochs": "lineage",
                    "stop_at": target,
                },
            )
        seed_report: dict = {
            "target": target,
            "rl_models_to_best": rl_at,
            "strategies": {},
        }
        print(
            f"\nseed {seed}: Fashion-MNIST {args.train} train / {args.valid} valid, {args.models} models, "
            f"{args.epochs} epoch(s) each; RL's best {_fmt(target, '.4f')} at model {_fmt(rl_at)}"
        )
        print(
            f"{'strategy':<17} {'models':>6} {'best acc':>8} {'at model':>8} {'train s':>8} "
            f"{'models to RL best':>17} {'train s to RL best':>18}"
        )
        for name, r in results.items():
            to_models = None if target is None else r.models_to_reach(target)
            to_seconds = None if target is None else r.seconds_to_reach(target)
            train_s = sum(x.seconds for x in r.records)
            print(
                f"{name:<17} {len(r.records):6d} {r.best_accuracy:8.4f} {r.best.index:8d} {train_s:8.1f} "
                f"{_fmt(to_models):>17} {_fmt(to_seconds, '.1f'):>18}"
            )
            seed_report["strategies"][name] = {
                "best_accuracy": r.best_accuracy,
                "best_at": r.best.index,
                "best": r.best.description,
                "train_seconds": train_s,
                "models_to_rl_best": to_models,
                "seconds_to_rl_best": to_seconds,
                "best_so_far": r.best_so_far(),
                "result": r.to_dict(),
            }
        if "pnas" in results and target is not None:
            m = results["pnas"].models_to_reach(target)
            ratio = None if m is None else m / rl_at
            seed_report["pnas_ratio"] = ratio
            print(
                f"PNAS models to reach RL's best / RL's models: {_fmt(m)} / {rl_at} = {_fmt(ratio, '.2f')} "
                f"(goal <= 0.5); of the budget: {_fmt(m)} / {args.models}"
            )
        if "morphism-scratch" in results:
            a = results["morphism"].seconds_to_reach(target)
            b = results["morphism-scratch"].seconds_to_reach(target)
            seed_report["morphism_seconds"] = {"inherit": a, "scratch": b}
            print(
                f"morphism seconds to reach RL's best: inherit {_fmt(a, '.1f')}, from scratch {_fmt(b, '.1f')}"
                + (
                    ""
                    if a is None or b is None
                    else f" (scratch / inherit = {b / a:.2f}x)"
                )
            )
        print(f"seed {seed} took {time.perf_counter() - t_seed:.0f} s\n", flush=True)
        report["seeds"][str(seed)] = seed_report

    ratios = [
        s.get("pnas_ratio") for s in report["seeds"].values() if "pnas_ratio" in s
    ]
    if ratios:
        finite = [r if r is not None else float("inf") for r in ratios]
        median = statistics.median(finite)
        report["pnas_ratio_median"] = median
        print(
            "PNAS / RL models to RL's best, per seed: "
            + ", ".join(_fmt(r, ".2f") for r in ratios)
            + f"; median {median:.2f} (goal <= 0.5: {'pass' if median <= 0.5 else 'fail'})"
        )
    for name in ("rl", "pnas", "evolution", "random", "morphism"):
        bests = [
            s["strategies"][name]["best_accuracy"]
            for s in report["seeds"].values()
            if name in s["strategies"]
        ]
        if bests:
            print(
                f"best accuracy {name:<10} per seed: "
                + ", ".join(f"{b:.4f}" for b in bests)
                + f"; median {statistics.median(bests):.4f}"
            )
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
