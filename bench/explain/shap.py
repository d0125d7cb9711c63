"""Kernel SHAP and Tree SHAP: ours against the shap package (and LightGBM's pred_contrib), in one run.

    python bench/explain/shap.py [--part kernel|tree|all] [--rows 16] [--background 20]
        [--budgets 256 512 1024 2048] [--seeds 3] [--full-games] [--tree-rows 5000] [--out results.json]

Kernel SHAP: a 12-feature MLP of Adult (``fnlwgt`` and ``education`` left out), a
k-means background of ``--background`` rows, ``--rows`` test rows. The reference is
``exact_shapley`` (all 4,096 coalitions). shap's ``KernelExplainer`` (``l1_reg=False``:
its default L1 selection drops features and never converges) gets the same background
(same rows and weights) and the same model as a function of the encoded matrix. Both
spend ``budget`` coalitions per row, each costing one model row per background row, so
equal budgets are equal model calls (the script counts the rows each side sends).
Both sides drop *null players* per row (a feature equal to every background row's
value), so a row with fewer players enumerates its whole game at a smaller budget and
costs less; ``--full-games`` explains only rows where all 12 features are players,
where coalitions and model rows are proportional.
Errors are RMSE against exact over rows and features; times are medians over seeds.
Torch runs single-threaded (``torch.set_num_threads(1)``) for both sides: on this
2-core shared machine its thread pool otherwise dominates and swings timings 10x.

Tree SHAP: a 100-tree LightGBM (31 leaves, native categorical splits) on Adult's
encoded matrix, ``--tree-rows`` test rows, path-dependent values; ours (from raw rows,
through a SklearnPredictor), shap's ``TreeExplainer(model).shap_values(X)`` (which
calls LightGBM's ``pred_contrib``) and ``pred_contrib`` itself. Then a 100-iteration
HistGradientBoosting with native categorical splits (``fit_gbm``), where shap reads set
splits as thresholds: its values are compared against ours and against the model's own
margin.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch

from modelyard.data import TabularSplit, load
from modelyard.explain._masking import summarize_background
from modelyard.explain._shapley import exact_shapley, kernel_shap
from modelyard.explain._tree import tree_shap
from modelyard.models import (
    GBMConfig,
    MLPConfig,
    SklearnPredictor,
    encode_matrix,
    encoded_feature_names,
    fit_gbm,
)

# This file is named shap.py: drop its folder from the path so that ``import shap`` finds the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def adult12(max_epochs: int = 10):
    """The 12-feature Adult MLP, its schema and splits."""
    from modelyard.train import fit_mlp

    data = load("adult")
    schema = dataclasses.replace(data.schema, features=tuple(
        c for c in data.schema.features if c.name not in ("fnlwgt", "education")))
    splits = {k: TabularSplit(s.frame, schema) for k, s in data.splits.items()}
    model = fit_mlp(splits["train"], splits["valid"], MLPConfig(max_epochs=max_epochs, seed=0))
    return model, schema, splits


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def kernel_part(args: argparse.Namespace) -> dict:
    import shap
    from shap.utils._legacy import DenseData

    torch.set_num_threads(1)
    model, schema, splits = adult12()
    feats = model.feature_names
    enc_cols = encoded_feature_names(schema)
    order = [enc_cols.index(f) for f in feats]  # our feature order -> encoded column
    n_num = len(schema.numeric)
    bg = summarize_background(splits["train"].X.sample(5000, random_state=0), args.background, predictor=model)
    pool = splits["test"].X.sample(frac=1.0, random_state=1).reset_index(drop=True)
    if args.full_games:  # only rows where every feature differs from some background row: 12 real players
        varies = np.ones(len(pool), dtype=bool)
        for f in feats:
            varies &= ~pool[f].isin(set(bg.frame[f])) | (bg.frame[f].nunique() > 1)
        pool = pool[varies].reset_index(drop=True)
    rows = pool.iloc[: args.rows].reset_index(drop=True)
    module = model.module.eval()
    sent = {"rows": 0}

    def f(matrix: np.ndarray) -> np.ndarray:  # the MLP on the encoded matrix, positive-class probability
        sent["rows"] += len(matrix)
        xn = torch.from_numpy(np.ascontiguousarray(matrix[:, :n_num], dtype=np.float32))
        xc = torch.from_numpy(np.ascontiguousarray(matrix[:, n_num:]).astype(np.int64))
        with torch.inference_mode():
            out = [torch.softmax(module(xn[i : i + 8192], xc[i : i + 8192]), 1)[:, 1] for i in range(0, len(xn), 8192)]
        return torch.cat(out).numpy().astype(np.float64)

    t0 = time.perf_counter()
    exact = exact_shapley(model, rows, background=bg)
    t_exact = time.perf_counter() - t0
    print(f"exact: {t_exact:.2f} s for {args.rows} rows, {exact.info['model_rows']:,} model rows")
    bg_matrix = encode_matrix(bg.frame, schema).astype(np.float64)
    x_matrix = encode_matrix(rows, schema).astype(np.float64)
    explainer = shap.KernelExplainer(f, DenseData(bg_matrix, enc_cols, None, bg.weights.copy()))
    acc = model.predict_proba(splits["test"].X)[:, 1]
    print(f"model: test accuracy {np.mean((acc > 0.5) == splits['test'].y):.4f}; background {len(bg)} k-means rows")
    grid = [128, 160, 192, 256, 320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 2048]
    budgets = sorted({b for b in grid if b <= max(args.budgets)} | set(args.budgets))
    table = []
    for budget in budgets:
        rec = {"budget": budget, "shap": [], "ours": [], "ours_order1": []}
        for seed in range(args.seeds):
            if budget in args.budgets:  # shap only at the headline budgets
                np.random.seed(seed)
                sent["rows"] = 0
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sv = explainer.shap_values(x_matrix, nsamples=budget, l1_reg=False, silent=True)
                rec["shap"].append((rmse(np.asarray(sv)[:, order], exact.values), time.perf_counter() - t0, sent["rows"]))
            t0 = time.perf_counter()
            e = kernel_shap(model, rows, background=bg, n_samples=budget, random_state=seed)
            rec["ours"].append((rmse(e.values, exact.values), time.perf_counter() - t0, e.info["model_rows"]))
            rec["order"] = int(np.max(e.info["order"]))
            t0 = time.perf_counter()
            e1 = kernel_shap(model, rows, background=bg, n_samples=budget, order=1, random_state=seed)
            rec["ours_order1"].append((rmse(e1.values, exact.values), time.perf_counter() - t0, e1.info["model_rows"]))
        summary = {"budget": budget, "order": rec["order"]}
        for k in ("shap", "ours", "ours_order1"):
            if rec[k]:
                err, sec, calls = np.array(rec[k]).T
                summary[k] = {"rmse": float(np.sqrt(np.mean(err**2))), "time_s": float(np.median(sec)),
                              "model_rows": int(np.median(calls))}
        table.append(summary)
        line = f"budget {budget:5d}"
        for k in ("shap", "ours", "ours_order1"):
            if k in summary:
                line += f" | {k}: rmse {summary[k]['rmse']:.2e} time {summary[k]['time_s']:.2f}s rows {summary[k]['model_rows']:,}"
        print(line, flush=True)
    verdicts = []
    for b in args.budgets:
        ref = next(r for r in table if r["budget"] == b)["shap"]
        match = next((r for r in table if r["ours"]["rmse"] <= ref["rmse"]), None)
        verdict = {"shap_budget": b, "shap_rmse": ref["rmse"], "shap_time_s": ref["time_s"],
                   "shap_model_rows": ref["model_rows"], "ours_budget": None}
        if match is not None:
            verdict.update(ours_budget=match["budget"], ours_rmse=match["ours"]["rmse"],
                           ours_model_rows=match["ours"]["model_rows"],
                           coalition_ratio=match["budget"] / b,
                           model_rows_ratio=match["ours"]["model_rows"] / ref["model_rows"],
                           time_ratio=match["ours"]["time_s"] / ref["time_s"])
            print(f"shap at {b} coalitions: rmse {ref['rmse']:.2e}, {ref['model_rows']:,} model rows, "
                  f"{ref['time_s']:.2f}s; ours reaches it at {match['budget']} coalitions "
                  f"({verdict['coalition_ratio']:.2f}x), {match['ours']['model_rows']:,} model rows "
                  f"({verdict['model_rows_ratio']:.2f}x), time {verdict['time_ratio']:.2f}x")
        else:
            print(f"shap at {b}: rmse {ref['rmse']:.2e}; ours does not reach it within the budgets tried")
        verdicts.append(verdict)
    return {"exact_time_s": t_exact, "table": table, "verdicts": verdicts, "rows": args.rows,
            "background": len(bg), "seeds": args.seeds}


def best_of(fn, n: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def tree_part(args: argparse.Namespace) -> dict:
    import lightgbm as lgb
    import shap

    data = load("adult")
    schema = data.schema
    cols = encoded_feature_names(schema)
    order = [schema.feature_names.index(c) for c in cols]
    xtr = pd.DataFrame(encode_matrix(data.train.X, schema), columns=cols)
    cat = list(range(len(schema.numeric), len(cols)))
    est = lgb.LGBMClassifier(n_estimators=100, num_leaves=31, verbose=-1, random_state=0)
    est.fit(xtr, data.train.y, categorical_feature=cat)
    model = SklearnPredictor(est, schema)
    rows = data.test.X.sample(args.tree_rows, random_state=0).reset_index(drop=True)
    xe = pd.DataFrame(encode_matrix(rows, schema), columns=cols)
    t0 = time.perf_counter()
    tree_shap(model, rows.iloc[:10])
    first = time.perf_counter() - t0  # includes numba compilation unless cached
    results = {"first_call_s": first}
    t_ours, t_shap, t_pc = [], [], []
    for _ in range(3):  # interleaved, best of three
        t, ours = best_of(lambda: tree_shap(model, rows), 1)
        t_ours.append(t)
        t, theirs = best_of(lambda: shap.TreeExplainer(est).shap_values(xe), 1)
        t_shap.append(t)
        t, pc = best_of(lambda: est.booster_.predict(xe, pred_contrib=True), 1)
        t_pc.append(t)
    theirs = np.asarray(theirs)
    results["lightgbm"] = {
        "rows": args.tree_rows, "trees": 100, "ours_s": min(t_ours), "shap_s": min(t_shap), "pred_contrib_s": min(t_pc),
        "ratio_vs_shap": min(t_ours) / min(t_shap), "ratio_vs_pred_contrib": min(t_ours) / min(t_pc),
        "max_abs_diff_vs_pred_contrib": float(np.abs(ours.values[:, order] - pc[:, :-1]).max()),
        "max_abs_diff_vs_shap": float(np.abs(ours.values[:, order] - theirs).max()),
    }
    print(json.dumps(results["lightgbm"], indent=1), flush=True)
    # HistGradientBoosting with native categorical splits
    gbm = fit_gbm(data.train, data.valid, GBMConfig(max_iter=100, early_stopping=False))
    hx = encode_matrix(rows, schema)
    t_ours, t_shap = [], []
    for _ in range(3):
        t, ours = best_of(lambda: tree_shap(gbm, rows), 1)
        t_ours.append(t)
        t, theirs = best_of(lambda: shap.TreeExplainer(gbm.estimator).shap_values(hx, check_additivity=False), 1)
        t_shap.append(t)
    explainer = shap.TreeExplainer(gbm.estimator)
    margin = gbm.estimator.decision_function(hx)
    shap_gap = np.abs(np.asarray(theirs).sum(axis=1) + explainer.expected_value - margin)
    results["hgb_native_categorical"] = {
        "rows": args.tree_rows, "ours_s": min(t_ours), "shap_s": min(t_shap), "ratio_vs_shap": min(t_ours) / min(t_shap),
        "ours_efficiency_gap_max": float(np.abs(ours.predictions() - margin).max()),
        "shap_efficiency_gap_max": float(shap_gap.max()), "shap_efficiency_gap_mean": float(shap_gap.mean()),
        "max_abs_diff_ours_vs_shap": float(np.abs(ours.values[:, order] - np.asarray(theirs)).max()),
    }
    print(json.dumps(results["hgb_native_categorical"], indent=1), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["kernel", "tree", "all"], default="all")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--background", type=int, default=20)
    ap.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tree-rows", type=int, default=5000)
    ap.add_argument("--full-games", action="store_true",
                    help="explain only rows without null players (every feature differs from some background row)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = {}
    if args.part in ("kernel", "all"):
        out["kernel"] = kernel_part(args)
    if args.part in ("tree", "all"):
        out["tree"] = tree_part(args)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
