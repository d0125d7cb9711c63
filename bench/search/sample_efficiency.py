"""Sample efficiency of the default strategy ``auto`` against Optuna's samplers (issue 3).

    MODELYARD_DATA_DIR=../shared/data .venv/bin/python bench/search/sample_efficiency.py \\
        [--seeds 5] [--problems branin hartmann6 rosenbrock10 adult_mlp] [--quick] [--out results.json]

Best value after 50 and 100 trials, median over seeds, for ``auto`` (ours), Optuna's
TPE with its default settings (``TPESampler(seed=s)``), Optuna's GP sampler
(``GPSampler(seed=s)``), random search (``RandomSampler(seed=s)``) and CMA-ES
(``CmaEsSampler(seed=s)``, synthetic functions only). Regret is the best value found
minus the optimum, so lower is better:

* ``branin``: Branin-Hoo on ``[-5, 10] x [0, 15]``, minimum 0.397887.
* ``hartmann6``: Hartmann-6 on ``[0, 1]^6``, minimum -3.32237.
* ``rosenbrock10``: Rosenbrock in 10 dimensions on ``[-5, 10]^10`` (the domain of the
  TuRBO and BoTorch benchmarks), minimum 0 at ``(1, ..., 1)``.
* ``adult_mlp``: the tabular MLP space (``spaces.mlp()``: depth, widths, dropout,
  numeric embedding and its frequency scale, learning rate, batch size, weight decay;
  conditional and categorical) through ``modelyard.search.run`` on a subsample of Adult
  (4,000 training rows, the full 3,256-row validation split, at most 8 epochs; about
  0.3 s a trial on one thread), maximizing validation accuracy. Its optimum is unknown,
  so the regret of a run is the best validation accuracy found by any trial of any run
  of this benchmark minus the run's best. (``1 - accuracy`` would also be a regret, but
  the Bayes error of about 0.14 would drown every difference between strategies.) The
  model seed is fixed, so every run searches the same deterministic function. CMA-ES is
  left out here: it samples categorical and conditional parameters at random, which is
  most of this space.

The synthetic functions call Optuna directly with each strategy's sampler (for ``auto``
the one ``make_sampler(space, seed, 1)`` returns), with the parameters suggested from a
:class:`~modelyard.search.SearchSpace` of floats. The goals of the issue: ``auto``'s
median regret at most the best Optuna sampler's on each problem and budget, and at most
0.3 times random search's. Each is printed as PASS or FAIL. ``--out`` writes every
per-seed figure as JSON, after each problem.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

import modelyard.search._auto  # noqa: F401 - registers "auto" (until modelyard.search imports it)
from modelyard.search import SEARCH_STRATEGIES, BaseSearchStrategy, Float, SearchSpace

OPTUNA = ("tpe", "gp", "cmaes", "random")  # Optuna's samplers, default settings
SYNTHETIC = ("branin", "hartmann6", "rosenbrock10")
PROBLEMS = (*SYNTHETIC, "adult_mlp")
STRATEGIES = ("auto", "tpe", "gp", "cmaes", "random")
RATIO_TO_RANDOM = 0.3  # the goal: auto's regret <= 0.3 x random search's


# -- the synthetic functions -------------------------------------------------------------------


def branin(x: np.ndarray) -> float:
    """Branin-Hoo; minimum 0.397887 at three points of ``[-5, 10] x [0, 15]``."""
    x1, x2 = float(x[0]), float(x[1])
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


_H6_A = np.array(
    [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14], [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)
_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def hartmann6(x: np.ndarray) -> float:
    """Hartmann-6; minimum -3.32237 on ``[0, 1]^6``."""
    return float(-np.sum(_H6_ALPHA * np.exp(-np.sum(_H6_A * (np.asarray(x) - _H6_P) ** 2, axis=1))))


def rosenbrock(x: np.ndarray) -> float:
    """Rosenbrock; minimum 0 at ``(1, ..., 1)``."""
    x = np.asarray(x, dtype=float)
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))


#: name -> (function, bounds, minimum)
FUNCTIONS: dict[str, tuple[Callable[[np.ndarray], float], list[tuple[float, float]], float]] = {
    "branin": (branin, [(-5.0, 10.0), (0.0, 15.0)], 0.397887),
    "hartmann6": (hartmann6, [(0.0, 1.0)] * 6, -3.32237),
    "rosenbrock10": (rosenbrock, [(-5.0, 10.0)] * 10, 0.0),
}


# -- strategies ----------------------------------------------------------------------------------


class OptunaDefault(BaseSearchStrategy):
    """One of Optuna's samplers with its default settings (the peer, not our tuned wrappers).

    Parameters
    ----------
    kind : {"tpe", "gp", "cmaes", "random"}
    """

    def __init__(self, kind: str) -> None:
        if kind not in OPTUNA:
            raise ValueError(f"Unknown Optuna sampler {kind!r}; use one of {list(OPTUNA)}.")
        self.kind = kind
        self.name = f"optuna-{kind}"

    def make_sampler(self, space: SearchSpace, seed: int | None, n_objectives: int) -> Any:
        samplers = optuna.samplers
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.kind == "tpe":
                return samplers.TPESampler(seed=seed)
            if self.kind == "gp":
                return samplers.GPSampler(seed=seed)
            if self.kind == "cmaes":
                return samplers.CmaEsSampler(seed=seed)
            return samplers.RandomSampler(seed=seed)


def strategy(name: str) -> BaseSearchStrategy:
    """``auto`` from the registry; the others as Optuna's defaults."""
    return SEARCH_STRATEGIES.get("auto")() if name == "auto" else OptunaDefault(name)


# -- runs -------------------------------------------------------------------------------------------


def run_synthetic(problem: str, name: str, seed: int, trials: int) -> tuple[list[float], float]:
    """Best-so-far values of one run of ``name`` on a synthetic function, and its seconds."""
    f, bounds, _ = FUNCTIONS[problem]
    space = SearchSpace({f"x{i}": Float(lo, hi) for i, (lo, hi) in enumerate(bounds)})
    names = space.names
    study = optuna.create_study(sampler=strategy(name).make_sampler(space, seed, 1))

    def objective(trial: optuna.Trial) -> float:
        p = space.suggest(trial)
        return f(np.array([p[n] for n in names]))

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(objective, n_trials=trials)
    seconds = time.perf_counter() - start
    values = [t.value for t in study.trials]
    return list(np.minimum.accumulate(values)), seconds


def adult_subsample(n_train: int, seed: int = 0) -> Any:
    """Adult with ``n_train`` training rows drawn at random (seeded) and the full validation split."""
    from modelyard.data import TabularData, TabularSplit, load

    data = load("adult")
    train = TabularSplit(data.train.frame.sample(n=n_train, random_state=seed), data.schema)
    return TabularData(
        name=f"adult-{n_train}", schema=data.schema, train=train, valid=data.valid, test=data.test,
        sources=data.sources,
    )


def run_adult(data: Any, name: str, seed: int, trials: int, epochs: int) -> tuple[list[float], float]:
    """Best-so-far validation accuracies of one search of the MLP space, and its seconds."""
    from modelyard.models import MLPConfig
    from modelyard.search import run, spaces

    base = MLPConfig(max_epochs=epochs, patience=3, seed=0)  # the model seed is fixed: one function
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run(spaces.mlp(), data, strategy=strategy(name), trials=trials, seed=seed, base_config=base)
    seconds = time.perf_counter() - start
    values = [t.value for t in sorted(result.study.trials, key=lambda t: t.number)]
    return list(np.maximum.accumulate(values)), seconds


# -- summary ------------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    if b > 0:
        return a / b
    return 1.0 if a == 0 else math.inf


def summarize(problem: str, runs: dict[str, dict[str, Any]], budgets: list[int]) -> dict[str, Any]:
    """Median regrets per strategy and budget, the ratios and the verdicts of the goals."""
    if problem in FUNCTIONS:
        optimum = FUNCTIONS[problem][2]
        for r in runs.values():
            r["regret"] = [[v - optimum for v in curve] for curve in r["best"]]
        reference = optimum
    else:  # maximized; the best any run found is the reference
        reference = max(max(curve) for r in runs.values() for curve in r["best"])
        for r in runs.values():
            r["regret"] = [[reference - v for v in curve] for curve in r["best"]]
    table: dict[str, Any] = {"reference": reference, "budgets": {}}
    for b in budgets:
        med = {s: statistics.median(c[b - 1] for c in r["regret"]) for s, r in runs.items()}
        row: dict[str, Any] = {"median_regret": med}
        peers = {s: m for s, m in med.items() if s in OPTUNA}
        if "auto" in med and peers:
            best_peer = min(peers, key=lambda s: peers[s])
            row["best_optuna"] = best_peer
            row["auto_over_best_optuna"] = _ratio(med["auto"], peers[best_peer])
            row["pass_best_optuna"] = bool(med["auto"] <= peers[best_peer])
        if "auto" in med and "random" in med:
            row["auto_over_random"] = _ratio(med["auto"], med["random"])
            row["pass_random"] = bool(med["auto"] <= RATIO_TO_RANDOM * med["random"])
        table["budgets"][str(b)] = row
    return table


def print_table(problem: str, table: dict[str, Any], runs: dict[str, dict[str, Any]]) -> None:
    names = list(runs)
    print(f"\n{problem}  (median regret over {len(next(iter(runs.values()))['best'])} seeds; lower is better)")
    print(f"{'budget':>7} " + " ".join(f"{n:>11}" for n in names) + "   best Optuna   auto/best   auto/random")
    for b, row in table["budgets"].items():
        med = row["median_regret"]
        cells = " ".join(f"{med[n]:11.4g}" for n in names)
        extra = ""
        if "best_optuna" in row:
            flag = "PASS" if row["pass_best_optuna"] else "FAIL"
            extra += f"   {row['best_optuna']:>11} {row['auto_over_best_optuna']:8.3f} {flag}"
        if "auto_over_random" in row:
            flag = "PASS" if row["pass_random"] else "FAIL"
            extra += f" {row['auto_over_random']:8.3f} {flag}"
        print(f"{b:>7} {cells}{extra}")
    secs = " ".join(f"{n}={statistics.mean(runs[n]['seconds']):.1f}s" for n in names)
    print(f"  mean seconds per run: {secs}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--budgets", nargs="+", type=int, default=[50, 100])
    parser.add_argument("--adult-rows", type=int, default=4000, help="training rows of the Adult subsample")
    parser.add_argument("--adult-epochs", type=int, default=8, help="most epochs of each Adult trial")
    parser.add_argument(
        "--quick", action="store_true",
        help="a smoke run: 2 seeds, budgets 10 and 20, 1,500 Adult rows and 3 epochs",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.budgets, args.adult_rows, args.adult_epochs = 2, [10, 20], 1500, 3
    if args.seeds < 1 or any(b < 1 for b in args.budgets):
        parser.error("--seeds and --budgets must be positive")
    budgets = sorted(set(args.budgets))
    trials = budgets[-1]
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out: dict[str, Any] = {
        "command": " ".join(["bench/search/sample_efficiency.py", *(argv if argv is not None else sys.argv[1:])]),
        "seeds": list(range(args.seeds)),
        "budgets": budgets,
        "versions": {"optuna": optuna.__version__, "torch": torch.__version__},
        "problems": {},
    }
    data = None
    for problem in args.problems:
        names = [s for s in args.strategies if not (problem == "adult_mlp" and s == "cmaes")]
        runs: dict[str, dict[str, Any]] = {}
        for name in names:
            runs[name] = {"best": [], "seconds": []}
            for seed in range(args.seeds):
                if problem == "adult_mlp":
                    if data is None:
                        data = adult_subsample(args.adult_rows)
                    curve, secs = run_adult(data, name, seed, trials, args.adult_epochs)
                else:
                    curve, secs = run_synthetic(problem, name, seed, trials)
                runs[name]["best"].append(curve)
                runs[name]["seconds"].append(secs)
                print(f"  {problem} {name} seed {seed}: best {curve[-1]:.6g} in {secs:.1f}s", flush=True)
        table = summarize(problem, runs, budgets)
        print_table(problem, table, runs)
        out["problems"][problem] = {
            "summary": table,
            "runs": {
                n: {
                    "best_at_budget": {str(b): [c[b - 1] for c in r["best"]] for b in budgets},
                    "regret_at_budget": {str(b): [c[b - 1] for c in r["regret"]] for b in budgets},
                    "seconds": r["seconds"],
                }
                for n, r in runs.items()
            },
        }
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out, indent=1))
    verdicts = [
        row[k]
        for p in out["problems"].values()
        for row in p["summary"]["budgets"].values()
        for k in ("pass_best_optuna", "pass_random")
        if k in row
    ]
    print(f"\n{sum(verdicts)} of {len(verdicts)} goals met.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
