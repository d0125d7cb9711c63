"""Time `modelyard run examples/adult.yaml` cold, then the unchanged re-run (every step cached).

Run from the repository root with the project's venv:

    MODELYARD_DATA_DIR=../shared/data .venv/bin/python bench/pipeline_cache.py [--repeats 3]

Each run is a fresh `modelyard` process (start-up included), in a fresh folder with a
fresh SQLite store, so the cold run trains both models. Prints each time and the
ratio re-run / first run (the issue asks for under 10%).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cwd: Path) -> float:
    exe = Path(sys.executable).parent / "modelyard"
    t0 = time.perf_counter()
    subprocess.run([str(exe), "run", str(ROOT / "examples" / "adult.yaml"), "--quiet"], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not os.environ.get("MODELYARD_DATA_DIR"):
        sys.exit("Set MODELYARD_DATA_DIR to the folder holding adult/adult.data (e.g. ../shared/data).")
    firsts, seconds = [], []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            first, second = _run(Path(tmp)), _run(Path(tmp))
        firsts.append(first)
        seconds.append(second)
        print(f"repeat {i + 1}: first run {first:6.2f} s, cached re-run {second:5.2f} s, ratio {second / first:.3f}")
    f, s = statistics.median(firsts), statistics.median(seconds)
    print(f"median: first run {f:.2f} s, cached re-run {s:.2f} s, ratio {s / f:.3f} (target < 0.10)")


if __name__ == "__main__":
    main()
