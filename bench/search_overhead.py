"""Strategy time per trial at 1,000 trials, ours against Optuna's TPE (issue 3, "Overhead").

    .venv/bin/python bench/search_overhead.py [--trials 1000] [--strategies tpe evolution rl]

A 5-parameter space (3 floats, 1 int, 1 categorical) and an objective that costs nothing,
so the time is the sampler's. Prints the mean time per trial over the last 100 trials
and the ratio to Optuna's TPE in the same run.
"""

from __future__ import annotations

import argparse
import time

import optuna

from modelyard.search import SEARCH_STRATEGIES, Categorical, Float, Int, SearchSpace

SPACE = SearchSpace({
    "x": Float(-5.0, 5.0), "y": Float(-5.0, 5.0), "lr": Float(1e-4, 1e-1, log=True),
    "n": Int(1, 64), "act": Categorical(["relu", "gelu", "tanh"]),
})


def _objective(trial: optuna.Trial) -> float:
    p = SPACE.suggest(trial)
    return p["x"] ** 2 + p["y"] ** 2 + abs(p["n"] - 17) / 10 + (0.0 if p["act"] == "gelu" else 0.5)


def last_100_ms(strategy: str, trials: int, seed: int) -> float:
    sampler = SEARCH_STRATEGIES.get(strategy)().make_sampler(SPACE, seed, 1)
    study = optuna.create_study(sampler=sampler)
    stamps = []

    def stamp(_study: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        stamps.append(time.perf_counter())

    study.optimize(_objective, n_trials=trials, callbacks=[stamp])
    tail = stamps[-101:]
    return (tail[-1] - tail[0]) / (len(tail) - 1) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--strategies", nargs="+", default=["tpe", "random", "evolution", "rl"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results = {s: last_100_ms(s, args.trials, args.seed) for s in args.strategies}
    base = results.get("tpe")
    for name, ms in results.items():
        ratio = f"{ms / base:.2f}x TPE" if base else ""
        print(f"{name:<10} {ms:8.2f} ms/trial over the last 100 of {args.trials}  {ratio}")


if __name__ == "__main__":
    main()
