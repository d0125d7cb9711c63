"""Early stopping (issue 3): time to reach a target validation accuracy with ASHA against none.

    MODELYARD_DATA_DIR=../shared/data .venv/bin/python bench/search/early_stopping.py \\
        [--seeds 3] [--budget-s 240] [--strategy tpe] [--space mlp|wide] [--task adult|fashion] [--quick] \\
        [--out results.json]

Two searches of the tabular MLP space (``spaces.mlp()``, or with ``--space wide`` the
same parameters over the wide ranges of ASHA's own benchmarks) on Adult (or, with ``--task
fashion``, on Fashion-MNIST as a table of pixels) per seed, the same
strategy, seed and wall-time budget: ``early_stopping="none"`` and ``"asha"`` (the
rule registered in ``modelyard.search._pruners``: successive halving with rungs at
epochs 1, 3, 9, 27, keeping the top third). Every trial may train up to
``--epochs`` epochs (27 by default, so the last rung is the full budget) on a
subsample of the training split, scored on the full validation split. The trainer's
own patience is the same in both searches and by default as long as the budget, so the
search "without early stopping" trains every trial to the end (with ``--patience 5``
both searches also stop a trial after 5 epochs without improvement).

The target of a seed is ``--target`` if given, else the best validation accuracy
the search without early stopping reached in its budget, less ``--tolerance``
(0.002 by default, about six validation rows): a level the plain search reaches
only late, and a fair one for ASHA, whose finished trials are fully trained too.
The time to the target is the wall time from the first trial's start to the end of
the first *completed* trial at or above it (a pruned trial's model is discarded, so
its intermediate accuracy does not count). The speed-up is that time without early
stopping over the time with ASHA; the goal is at least 3x (median over seeds). A
search that does not reach the target in its budget counts as taking the whole
budget (flagged ``not reached``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

import modelyard.search._auto  # noqa: F401 - registers "auto" (until modelyard.search imports it)

GOAL = 3.0


def adult_subsample(n_train: int, seed: int = 0) -> Any:
    """Adult with ``n_train`` training rows drawn at random (seeded) and the full validation split."""
    from modelyard.data import TabularData, TabularSplit, load

    data = load("adult")
    train = TabularSplit(data.train.frame.sample(n=n_train, random_state=seed), data.schema)
    return TabularData(
        name=f"adult-{n_train}", schema=data.schema, train=train, valid=data.valid, test=data.test,
        sources=data.sources,
    )


def fashion_subsample(n_train: int, seed: int = 0) -> Any:
    """Fashion-MNIST as a table: ``n_train`` training images drawn at random (seeded), the full validation split.

    Each image is 784 numeric columns (pixels scaled to [0, 1]) and a ``label`` column; the
    validation split is the loader's (6,000 images), the test split its official 10,000.
    Learning curves here are long (an MLP gains several points between epochs 1 and 27),
    unlike Adult's, where one epoch brings most configurations within about two points of
    their best.
    """
    import numpy as np
    import pandas as pd

    from modelyard.data import TabularData, TabularSplit, infer_schema, load

    images = load("fashion_mnist")

    def frame(split: Any, idx: Any) -> pd.DataFrame:
        x = split.x[idx].reshape(len(idx), -1).astype(np.float32) / 255.0
        out = pd.DataFrame(x, columns=[f"px{i}" for i in range(x.shape[1])])
        out["label"] = [images.classes[i] for i in split.y[idx]]
        return out

    rng = np.random.default_rng(seed)
    train = frame(images.train, np.sort(rng.choice(len(images.train), n_train, replace=False)))
    schema = infer_schema(train, "label")
    splits = {
        "train": train,
        "valid": frame(images.valid, np.arange(len(images.valid))),
        "test": frame(images.test, np.arange(len(images.test))),
    }
    return TabularData(
        name=f"fashion-mnist-{n_train}", schema=schema,
        **{k: TabularSplit(v, schema) for k, v in splits.items()}, sources=images.sources,
    )  # fmt: skip


def wide_mlp_space(*, pixels: bool = False) -> Any:
    """The MLP space with ranges as wide as ASHA's own benchmarks (Li et al. 2020, section 4).

    ``spaces.mlp()`` is curated: learning rate and weight decay over two and four decades,
    batch sizes 64-512, so that nearly every configuration trains well. Here: learning
    rate 1e-5..1e-1, weight decay 1e-6..1, dropout up to 0.9, batch sizes 32-4096, one to
    four layers of 8-1024 units; a user who does not know the good region searches such a
    space, and most of its configurations train poorly. With ``pixels`` (Fashion-MNIST as
    784 columns) the numeric embedding is left out: the base config sets it to ``none``.
    """
    from modelyard.search import Categorical, Float, Int, SearchSpace

    params: dict[str, Any] = {"n_layers": Int(1, 4)}
    for i in range(1, 5):
        params[f"hidden_{i}"] = Int(8, 1024, log=True, when=None if i == 1 else {"n_layers": {">=": i}})
    params.update(activation=Categorical(["relu", "gelu", "silu"]), dropout=Float(0.0, 0.9))
    if not pixels:
        params.update(
            numeric_embedding=Categorical(["periodic", "none"]),
            frequency_scale=Float(0.01, 10.0, log=True, when={"numeric_embedding": "periodic"}),
        )
    params.update(
        lr=Float(1e-5, 1e-1, log=True),
        batch_size=Categorical([32, 64, 128, 256, 512, 1024, 2048, 4096]),
        weight_decay=Float(1e-6, 1.0, log=True),
    )
    return SearchSpace(params)


def search(data: Any, mode: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One search; every trial's state, value and end time in seconds since the study began."""
    from modelyard.models import MLPConfig
    from modelyard.search import run, spaces

    pixels = args.task == "fashion"
    base = MLPConfig(
        max_epochs=args.epochs, patience=args.patience or args.epochs, seed=0,
        numeric_embedding="none" if pixels else "periodic",
    )  # fmt: skip
    space = spaces.mlp() if args.space == "mlp" else wide_mlp_space(pixels=pixels)
    rule: Any = mode
    if mode == "asha" and args.min_epochs != 1:  # rungs at min, 3 min, 9 min, ... epochs
        from optuna.pruners import SuccessiveHalvingPruner

        rule = SuccessiveHalvingPruner(min_resource=args.min_epochs, reduction_factor=3)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run(
            space, data, strategy=args.strategy, trials=args.max_trials, seed=seed,
            early_stopping=rule, base_config=base, timeout=args.budget_s,
        )
    wall = time.perf_counter() - start
    trials = [t for t in result.study.trials if t.datetime_start is not None]
    t0 = min(t.datetime_start for t in trials)
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.state == TrialState.COMPLETE else None,
            "epochs": max(t.intermediate_values) if t.intermediate_values else None,  # epochs count from 1
            "end_s": (t.datetime_complete - t0).total_seconds() if t.datetime_complete else None,
        }
        for t in sorted(trials, key=lambda t: t.number)
    ]
    done = [r for r in rows if r["state"] == "COMPLETE"]
    return {
        "wall_s": wall,
        "n_trials": len(rows),
        "n_complete": len(done),
        "n_pruned": sum(r["state"] == "PRUNED" for r in rows),
        "best": max((r["value"] for r in done), default=None),
        "trials": rows,
    }


def time_to(run: dict[str, Any], target: float) -> float | None:
    """Seconds until the first completed trial at or above ``target``; None if none reached it."""
    hits = [r["end_s"] for r in run["trials"] if r["state"] == "COMPLETE" and r["value"] >= target]
    return min(hits) if hits else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--min-epochs", type=int, default=1,
                        help="ASHA's first rung in epochs (1: the registered 'asha' rule, rungs 1, 3, 9, 27)")
    parser.add_argument("--strategy", default="tpe", help="search strategy for both searches (default tpe)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="wall-time budget of each search")
    parser.add_argument("--max-trials", type=int, default=400, help="trial cap of each search")
    parser.add_argument("--epochs", type=int, default=27, help="most epochs of a trial (the last ASHA rung)")
    parser.add_argument("--patience", type=int, default=None,
                        help="the trainer's patience, in both searches (default: --epochs, i.e. none: "
                             "'no early stopping' trains every trial to the end)")
    parser.add_argument("--space", choices=["mlp", "wide"], default="mlp",
                        help="mlp: spaces.mlp() (curated ranges); wide: ASHA-paper-wide ranges (see wide_mlp_space)")
    parser.add_argument("--task", choices=["adult", "fashion"], default="adult",
                        help="adult: the Adult table; fashion: Fashion-MNIST as 784 pixel columns (see fashion_subsample)")
    parser.add_argument("--rows", type=int, default=8000, help="training rows of the subsample")
    parser.add_argument("--target", type=float, default=None, help="a fixed target accuracy")
    parser.add_argument("--tolerance", type=float, default=0.002, help="target = best without early stopping - this")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, 30 s budgets, 2,000 rows, 9 epochs")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.task == "fashion" and args.space == "mlp":  # checked before any data is loaded
        parser.error("--task fashion needs --space wide (spaces.mlp() tunes Adult's numeric embedding)")
    if args.quick:
        args.seeds, args.budget_s, args.rows, args.epochs = 1, 30.0, 2000, 9
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    data = adult_subsample(args.rows) if args.task == "adult" else fashion_subsample(args.rows)
    out: dict[str, Any] = {
        "command": " ".join(["bench/search/early_stopping.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seeds": {},
    }
    speedups = []
    print(f"{'seed':>4} {'target':>7} {'none: trials best time':>26} {'asha: trials(pruned) best time':>34} {'speed-up':>9}")
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        plain = search(data, "none", args, seed)
        asha = search(data, "asha", args, seed)
        target = args.target if args.target is not None else plain["best"] - args.tolerance
        t_plain, t_asha = time_to(plain, target), time_to(asha, target)
        shown_plain = t_plain if t_plain is not None else plain["wall_s"]
        shown_asha = t_asha if t_asha is not None else asha["wall_s"]
        speedup = shown_plain / shown_asha
        speedups.append(speedup)
        notes = ("" if t_plain is not None else " none: not reached") + (
            "" if t_asha is not None else " asha: not reached"
        )
        print(
            f"{seed:>4} {target:7.4f} {plain['n_trials']:>10} {plain['best']:7.4f} {shown_plain:7.1f}s"
            f" {asha['n_trials']:>10}({asha['n_pruned']:>3}) {asha['best']:7.4f} {shown_asha:7.1f}s"
            f" {speedup:8.2f}x{notes}",
            flush=True,
        )
        out["seeds"][str(seed)] = {
            "target": target, "seconds_none": t_plain, "seconds_asha": t_asha, "speedup": speedup,
            "none": plain, "asha": asha,
        }
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out, indent=1))
    median = statistics.median(speedups)
    verdict = "PASS" if median >= GOAL else "FAIL"
    print(f"\nmedian speed-up to the target: {median:.2f}x (goal >= {GOAL:.0f}x): {verdict}")
    out["median_speedup"], out["pass"] = median, median >= GOAL
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
