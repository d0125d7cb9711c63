"""Permutation importance and PDP: ours against scikit-learn's, on the same model, in one run.

    python bench/explain/permutation_pdp.py [--rows 5000] [--repeats 5] [--model hgb|mlp]

The model is a HistGradientBoosting classifier on Adult's encoded columns (``hgb``), or
our tabular MLP (``mlp``, seen by scikit-learn through a thin estimator wrapper). Both
implementations get the same rows, shuffles (random_state) and grid; the script checks
the values are equal and prints times and ratios (ours / scikit-learn).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.inspection import partial_dependence as sk_pdp
from sklearn.inspection import permutation_importance as sk_perm

from modelyard.data import load
from modelyard.explain import partial_dependence, permutation_importance
from modelyard.models import encode_matrix, encoded_feature_names


class AsPredictor:
    def __init__(self, est, columns) -> None:
        self.est, self.feature_names, self.task = est, list(columns), "binary"

    def predict_proba(self, X):
        return self.est.predict_proba(X[self.feature_names])


class AsEstimator(ClassifierMixin, BaseEstimator):
    """Our MLP predictor as a scikit-learn classifier on raw frames."""

    def __init__(self, predictor=None) -> None:
        self.predictor = predictor

    def fit(self, X, y):  # already fitted
        self.classes_ = np.arange(2)
        return self

    def predict_proba(self, X):
        return self.predictor.predict_proba(X)

    def predict(self, X):
        return self.predictor.predict_proba(X).argmax(axis=1)


def best_of(fn, n: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", choices=["hgb", "mlp"], default="hgb")
    args = ap.parse_args()
    data = load("adult")
    test = data.test.frame.sample(args.rows, random_state=0).reset_index(drop=True)
    from modelyard.data import encode_target

    y = encode_target(test[data.schema.target], data.schema)
    if args.model == "hgb":
        cols = encoded_feature_names(data.schema)
        Xtr = pd.DataFrame(encode_matrix(data.train.X, data.schema), columns=cols)
        X = pd.DataFrame(encode_matrix(test, data.schema), columns=cols).astype(np.float64)  # scikit-learn's PDP cannot write float grid values into float32 columns under pandas 3
        est = HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(Xtr, data.train.y)
        ours_model, sk_model, pdp_feature = AsPredictor(est, cols), est, cols[0]
    else:
        from modelyard.models import MLPConfig
        from modelyard.train import fit_mlp

        model = fit_mlp(data.train, data.valid, MLPConfig(max_epochs=5))
        X = test[model.feature_names].copy()
        ints = X.select_dtypes("integer").columns
        X[ints] = X[ints].astype(np.float64)  # scikit-learn's PDP refuses integer columns
        ours_model, sk_model, pdp_feature = model, AsEstimator(model).fit(X, y), "age"
    t_ours, ours = best_of(lambda: permutation_importance(ours_model, X, y, n_repeats=args.repeats, random_state=0))
    t_sk, ref = best_of(lambda: sk_perm(sk_model, X, y, scoring="accuracy", n_repeats=args.repeats, random_state=0))
    diff = float(np.abs(ours.importances - ref.importances).max())
    print(f"permutation importance ({args.model}, {len(X)} rows, {X.shape[1]} features, {args.repeats} repeats)")
    print(f"  ours {t_ours:.3f} s  scikit-learn {t_sk:.3f} s  ratio {t_ours / t_sk:.2f}  max |diff| {diff:.2g}")
    t_ours, p = best_of(lambda: partial_dependence(ours_model, X, pdp_feature, kind="both", grid_resolution=50))
    t_sk, r = best_of(lambda: sk_pdp(sk_model, X, [pdp_feature], kind="both", grid_resolution=50, method="brute"))
    diff = float(np.abs(p.average - r["average"]).max())
    print(f"partial dependence + ICE of {pdp_feature!r} (50-point grid)")
    print(f"  ours {t_ours:.3f} s  scikit-learn {t_sk:.3f} s  ratio {t_ours / t_sk:.2f}  max |diff| {diff:.2g}")


if __name__ == "__main__":
    main()
