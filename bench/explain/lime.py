"""LIME: ours against the lime package on Adult, 5,000 samples per row, in one run.

    python bench/explain/lime.py [--rows 20] [--samples 5000] [--seeds 5] [--top 5] [--out results.json]

Models: the 12-feature Adult MLP (``fnlwgt`` and ``education`` left out), the
gradient-boosting baseline (``fit_gbm``) on the same features, and ``free``, a
constant model that costs nothing, so that its times are each library's own cost
(its top features are ties and mean nothing). lime's
``LimeTabularExplainer`` gets the training rows as the encoded matrix (categorical
codes declared categorical, quartile discretization: its defaults) and
``num_features=12`` (all features; its ``highest_weights`` selection then keeps them
all), so both fit the same weighted ridge on the same kind of neighbourhood. Two
predict functions for lime: ``direct`` (the encoded matrix straight into the torch
module or the estimator: the fastest wrapper possible) and ``raw`` (codes decoded to
category strings and sent through ``predict_proba`` on a DataFrame, as a user of a
raw-row model would write it). Times: lime builds its explainer once per seed and
explains the rows one by one; ours is one ``lime_tabular`` call for all rows (its
training statistics included). Medians over seeds. Torch runs single-threaded for
both sides (``torch.set_num_threads(1)``; the shared 2-core machine makes its thread
pool swing timings 10x).

Stability: each row's top ``--top`` features by absolute coefficient, compared
across seeds (mean pairwise Jaccard index); agreement: the top features of ours
against lime's for the same row and seed; reproducibility: the same seed twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from itertools import combinations

import numpy as np
import pandas as pd
import torch

from modelyard.data import TabularSplit, load
from modelyard.explain._lime import lime_tabular
from modelyard.models import (
    GBMConfig,
    MLPConfig,
    encode_matrix,
    encoded_feature_names,
    fit_gbm,
)

# This file is named lime.py: drop its folder from the path so that ``import lime`` finds the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def adult12():
    from modelyard.train import fit_mlp

    data = load("adult")
    schema = dataclasses.replace(data.schema, features=tuple(
        c for c in data.schema.features if c.name not in ("fnlwgt", "education")))
    splits = {k: TabularSplit(s.frame, schema) for k, s in data.splits.items()}
    mlp = fit_mlp(splits["train"], splits["valid"], MLPConfig(max_epochs=10, seed=0))
    gbm = fit_gbm(splits["train"], splits["valid"], GBMConfig())
    return {"mlp": mlp, "gbm": gbm, "free": Free(schema)}, schema, splits


class Free:
    """A model that costs nothing (constant probabilities): what is left is each library's own time."""

    task = "binary"

    def __init__(self, schema) -> None:
        self.schema, self.feature_names = schema, schema.feature_names

    def predict_proba(self, X) -> np.ndarray:
        return np.tile([0.3, 0.7], (len(X), 1))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import lime.lime_tabular

    torch.set_num_threads(1)
    models, schema, splits = adult12()
    enc_cols = encoded_feature_names(schema)
    n_num = len(schema.numeric)
    cat_idx = list(range(n_num, len(enc_cols)))
    train_matrix = encode_matrix(splits["train"].X, schema).astype(np.float64)
    rows = splits["test"].X.sample(args.rows, random_state=0).reset_index(drop=True)
    row_matrix = encode_matrix(rows, schema).astype(np.float64)
    feats = schema.feature_names
    to_ours = [feats.index(c) for c in enc_cols]  # lime's column j is our feature to_ours[j]
    results = {}
    for name, model in models.items():
        if name == "mlp":
            module = model.module.eval()

            def direct(a: np.ndarray, module=module) -> np.ndarray:
                xn = torch.from_numpy(a[:, :n_num].astype(np.float32))
                xc = torch.from_numpy(a[:, n_num:].astype(np.int64))
                with torch.inference_mode():
                    return torch.softmax(module(xn, xc), 1).numpy().astype(np.float64)
        elif name == "gbm":
            def direct(a: np.ndarray, model=model) -> np.ndarray:
                return model.estimator.predict_proba(a.astype(np.float32))
        else:
            def direct(a: np.ndarray) -> np.ndarray:
                return np.tile([0.3, 0.7], (len(a), 1))

        def raw(a: np.ndarray, model=model) -> np.ndarray:
            frame = {}
            for j, col in enumerate(enc_cols):
                if j < n_num:
                    frame[col] = a[:, j]
                else:
                    cats = np.array(("",) + schema.column(col).categories, dtype=object)
                    frame[col] = cats[np.clip(a[:, j].astype(np.int64), 0, len(cats) - 1)]
            return model.predict_proba(pd.DataFrame(frame)[feats])

        rec = {"time_ours": [], "time_lime_direct": [], "time_lime_raw": [], "tops_ours": [], "tops_lime": [],
               "coef_gap": []}
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            ours = lime_tabular(model, rows, training=splits["train"].X, n_samples=args.samples, random_state=seed)
            rec["time_ours"].append(time.perf_counter() - t0)
            lime_values = np.zeros((args.rows, len(feats)))
            for label, fn in (("direct", direct), ("raw", raw)):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    explainer = lime.lime_tabular.LimeTabularExplainer(
                        train_matrix, feature_names=enc_cols, categorical_features=cat_idx, random_state=seed)
                    for i in range(args.rows):
                        e = explainer.explain_instance(row_matrix[i], fn, num_features=len(enc_cols),
                                                       num_samples=args.samples)
                        if label == "direct":
                            for j, v in e.as_map()[1]:
                                lime_values[i, to_ours[j]] = v
                rec[f"time_lime_{label}"].append(time.perf_counter() - t0)
            top = lambda v: [set(np.argsort(-np.abs(r), kind="stable")[: args.top]) for r in v]
            rec["tops_ours"].append(top(ours.values))
            rec["tops_lime"].append(top(lime_values))
            rec["coef_gap"].append(float(np.abs(ours.values - lime_values).mean() / np.abs(lime_values).mean()))
            print(f"{name} seed {seed}: ours {rec['time_ours'][-1]:.2f}s, lime direct {rec['time_lime_direct'][-1]:.2f}s, "
                  f"raw {rec['time_lime_raw'][-1]:.2f}s; mean |ours - lime| / mean |lime| {rec['coef_gap'][-1]:.3f}",
                  flush=True)
        stab = {k: float(np.mean([jaccard(a[i], b[i]) for a, b in combinations(rec[f"tops_{k}"], 2)
                                  for i in range(args.rows)])) for k in ("ours", "lime")}
        agree = float(np.mean([jaccard(o[i], li[i]) for o, li in zip(rec["tops_ours"], rec["tops_lime"], strict=True)
                               for i in range(args.rows)]))
        med = {k: float(np.median(rec[k])) for k in ("time_ours", "time_lime_direct", "time_lime_raw")}
        results[name] = {
            **med,
            "ratio_vs_lime_direct": med["time_ours"] / med["time_lime_direct"],
            "ratio_vs_lime_raw": med["time_ours"] / med["time_lime_raw"],
            f"top{args.top}_jaccard_across_seeds": stab,
            f"top{args.top}_jaccard_ours_vs_lime": agree,
            "mean_relative_coef_gap": float(np.mean(rec["coef_gap"])),
        }
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    # reproducibility with a fixed seed
    model = models["gbm"]
    a = lime_tabular(model, rows, rows=[0], training=splits["train"].X, n_samples=args.samples, random_state=7)
    b = lime_tabular(model, rows, rows=[0], training=splits["train"].X, n_samples=args.samples, random_state=7)
    explainer = lime.lime_tabular.LimeTabularExplainer(train_matrix, feature_names=enc_cols,
                                                       categorical_features=cat_idx, random_state=7)
    fn = lambda m: model.estimator.predict_proba(m.astype(np.float32))
    first = explainer.explain_instance(row_matrix[0], fn, num_features=12, num_samples=args.samples).as_map()[1]
    second = explainer.explain_instance(row_matrix[0], fn, num_features=12, num_samples=args.samples).as_map()[1]
    results["reproducible"] = {"ours_same_seed_identical": bool(np.array_equal(a.values, b.values)),
                               "lime_same_explainer_twice_identical": first == second}
    print(json.dumps(results["reproducible"]), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
