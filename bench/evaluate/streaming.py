"""Streaming evaluation of a large Parquet file: peak memory and time.

    python bench/evaluate/streaming.py [--rows 10000000] [--chunk-rows 250000] [--path /tmp/...parquet]
                                       [--modes exact,bins,bootstrap] [--check-rows 2000000]

Writes (once; reused when it exists with the same row count) a Parquet file of
``--rows`` rows in row groups of 1,000,000 (``--row-group-rows``), then reads it in
batches of ``--chunk-rows`` (evaluate_parquet's default): two sensitive string columns (20 and
5 values), a label and a float64 score; the same shape as ``bench/evaluate/slicing.py``.
Then evaluates it with :func:`modelyard.evaluate.evaluate_parquet` in a fresh child
process per mode, so each peak resident set size (``ru_maxrss``) is that mode's alone:

* ``exact``: exact AUCs (one entry per distinct (score, cell) pair: the scores here are
  continuous, so about 20 bytes per row);
* ``bins``: AUCs from 4,096-bin score histograms per cell, with the stated error bound;
* ``bootstrap``: ``bins`` plus 200 Poisson-bootstrap replicates.

Goal (issue 5): peak memory under 1 GB for 10 million rows. ``--check-rows`` also runs
the in-memory ``SliceReport`` on the first rows and the streaming pass on a file of
those rows, and prints the largest difference (they should agree to rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

METRICS = ["accuracy", "tpr", "fpr", "selection_rate", "auc", "log_loss"]
SLICES = ["a", "b", ["a", "b"]]


def write(path: Path, rows: int, chunk: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    pa_ = rng.dirichlet(np.full(20, 2.0))
    pb = rng.dirichlet(np.full(5, 2.0))
    names_a = np.array([f"a{i:02d}" for i in range(20)])
    names_b = np.array([f"b{i}" for i in range(5)])
    schema = pa.schema([("a", pa.string()), ("b", pa.string()), ("y", pa.int8()), ("p", pa.float64())])
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for lo in range(0, rows, chunk):
            m = min(chunk, rows - lo)
            a = rng.choice(20, size=m, p=pa_)
            b = rng.choice(5, size=m, p=pb)
            logit = rng.normal(size=m) + 0.1 * (a - 10) - 0.2 * (b - 2)
            y = (rng.random(m) < 1.0 / (1.0 + np.exp(-1.5 * logit))).astype(np.int8)
            p = 1.0 / (1.0 + np.exp(-(logit + rng.normal(scale=0.8, size=m))))
            writer.write_table(pa.table({"a": names_a[a], "b": names_b[b], "y": y, "p": p}, schema=schema),
                               row_group_size=chunk)
    tmp.rename(path)


def child(path: str, mode: str, chunk: int) -> None:
    """Run one streaming evaluation and print its figures as JSON (peak RSS of this process)."""
    from modelyard.evaluate import evaluate_parquet

    slices = [tuple(s) if isinstance(s, list) else s for s in SLICES]
    options = {"exact": {}, "bins": {"auc_bins": 4096}, "bootstrap": {"auc_bins": 4096, "bootstrap": 200}}[mode]
    t0 = time.perf_counter()
    report = evaluate_parquet(path, target="y", score="p", task="binary", slices=slices, metrics=METRICS,
                              chunk_rows=chunk, **options)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    out = {"mode": mode, "seconds": seconds, "peak_rss_mb": peak_mb, "rows": report.n_rows,
           "overall": report.overall, "groups": sum(len(t) for t in report.by_slice.values())}
    if report.auc_error_bound is not None:
        out["auc_error_bound_overall"] = report.auc_error_bound["overall"]
    if report.intervals is not None:
        out["auc_interval_overall"] = list(report.intervals["overall"]["auc"])
    print(json.dumps(out))


def check(path: Path, rows: int, chunk: int) -> float:
    """Largest difference between in-memory and streaming on the first ``rows`` rows."""
    import pyarrow.parquet as pq

    from modelyard.evaluate import SliceReport, evaluate_parquet

    table = pq.ParquetFile(path).iter_batches(batch_size=rows, columns=["a", "b", "y", "p"])
    frame = next(table).to_pandas()
    small = path.with_name(path.stem + f"-{rows}.parquet")
    frame.to_parquet(small, row_group_size=chunk)
    slices = [tuple(s) if isinstance(s, list) else s for s in SLICES]
    memory = SliceReport(y_true=frame["y"].to_numpy(), y_score=frame["p"].to_numpy(), frame=frame, slices=slices,
                         metrics=METRICS, task="binary")
    streamed = evaluate_parquet(small, target="y", score="p", task="binary", slices=slices, metrics=METRICS,
                                chunk_rows=chunk)
    small.unlink()
    worst = max(abs(memory.overall[m] - streamed.overall[m]) for m in METRICS)
    for name, table_ in memory.by_slice.items():
        for group, values in table_.items():
            worst = max(worst, *(abs(v - streamed.by_slice[name][group][m]) for m, v in values.items()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--chunk-rows", type=int, default=250_000, help="rows per read batch")
    ap.add_argument("--row-group-rows", type=int, default=1_000_000, help="row group size of the file written")
    ap.add_argument("--path", default=None, help="Parquet file to write/reuse (default /tmp/modelyard-stream-N.parquet)")
    ap.add_argument("--modes", default="exact,bins,bootstrap")
    ap.add_argument("--check-rows", type=int, default=0, help="also compare with in-memory on this many rows")
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.chunk_rows)
        return
    path = Path(args.path or f"/tmp/modelyard-stream-{args.rows}.parquet")
    if not path.exists():
        t0 = time.perf_counter()
        write(path, args.rows, args.row_group_rows)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    print(f"{args.rows:,} rows (row groups of {args.row_group_rows:,}) read in batches of {args.chunk_rows:,}; "
          f"slices a (20), b (5), a × b (100); {METRICS}; load average {os.getloadavg()[0]:.1f}")
    results = []
    for mode in args.modes.split(","):
        done = subprocess.run([sys.executable, __file__, "--chunk-rows", str(args.chunk_rows), "--child",
                               str(path), mode], capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        extra = ""
        if "auc_error_bound_overall" in r:
            extra += f"  AUC bound {r['auc_error_bound_overall']:.1e}"
        if "auc_interval_overall" in r:
            lo, hi = r["auc_interval_overall"]
            extra += f"  AUC 95% [{lo:.4f}, {hi:.4f}]"
        verdict = "PASS" if r["peak_rss_mb"] < 1024 else "FAIL"
        print(f"  {mode:9s} {r['seconds']:7.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB  ({verdict}: goal < 1024)  "
              f"AUC {r['overall']['auc']:.6f}{extra}")
    if args.check_rows:
        diff = check(path, args.check_rows, args.chunk_rows)
        print(f"  in-memory vs streaming on the first {args.check_rows:,} rows: max |diff| {diff:.1e}")
        results.append({"check_rows": args.check_rows, "max_abs_diff": diff})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
