"""Feature selection and extraction on Adult (issue 4, item 3): chosen k, accuracy and model size.

    MODELYARD_DATA_DIR=../shared/data .venv/bin/python bench/compress/features.py [--out bench/compress]

For each of the six selection methods (k="auto") and for PCA (n_components="auto",
95% of the variance): the chosen k and why, the fast model's validation accuracy at k
against all features, and then the real thing: the default MLP trained on the reduced
data, its validation and test accuracy, and its ONNX file size, against the MLP on all
features. PCA's ONNX model is the composed one (front stage + MLP) that takes the raw
columns. Writes three figures (PNG) beside the results and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import modelyard as my
from modelyard.compress import export_onnx
from modelyard.compress._design import mlp_size_bytes
from modelyard.compress._measure import file_sizes
from modelyard.compress._reduce import reduce_features
from modelyard.compress._select_features import (
    FEATURE_SELECTION_METHODS,
    select_features,
)
from modelyard.models import MLPConfig
from modelyard.report._compress_plots import (
    explained_variance_figure,
    feature_curve_figure,
    size_accuracy_figure,
)
from modelyard.train import fit_mlp


def _accuracy(predictor: object, split: object) -> float:
    return float((predictor.predict_proba(split.X).argmax(axis=1) == split.y).mean())


def _mlp(data: object, folder: Path, name: str, transform: object = None) -> dict:
    t0 = time.perf_counter()
    model = fit_mlp(data.train, data.valid, MLPConfig())
    fit_s = time.perf_counter() - t0
    path = folder / f"{name}.onnx"
    export_onnx(model, path, sample=data.valid.X.iloc[:500])
    if transform is not None:  # the served model takes the raw columns: front stage + MLP
        composed = transform.compose_onnx(path)
        path = folder / f"{name}.raw.onnx"
        path.write_bytes(composed.SerializeToString())
    raw, gz = file_sizes(path)
    n_params = sum(p.numel() for p in model.module.parameters())
    return {"valid": _accuracy(model, data.valid), "test": _accuracy(model, data.test), "onnx": raw, "gzip": gz,
            "params": n_params, "fit_s": fit_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="folder for the figures")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the MLP fits are small; on shared cores threads mostly wait
    data = my.data.load("adult")
    print(f"Adult: {len(data.train)} train, {len(data.valid)} valid, {len(data.test)} test rows, "
          f"{len(data.schema.features)} feature columns")
    work = Path(tempfile.mkdtemp(prefix="features-bench-"))
    full = _mlp(data, work, "all")
    print(f"MLP, all features: valid {full['valid']:.4f}, test {full['test']:.4f}, ONNX {full['onnx']:,} B, "
          f"{full['params']:,} params, fit {full['fit_s']:.1f} s")

    rows, results = [], {}
    for method in FEATURE_SELECTION_METHODS:
        t0 = time.perf_counter()
        selected, res = select_features(data, method, "auto", seed=args.seed)
        sel_s = time.perf_counter() - t0
        results[method] = res
        mlp = _mlp(selected, work, method)
        rows.append((method, res.k, res.chosen.score, res.baseline.score, mlp, sel_s, ", ".join(res.selected)))
        print(f"{method:12s} k={res.k:2d}  fast valid {res.chosen.score:.4f} (all {res.baseline.score:.4f})  "
              f"MLP valid {mlp['valid']:.4f} test {mlp['test']:.4f}  ONNX {mlp['onnx']:,} B "
              f"({mlp['onnx'] / full['onnx']:.2f}x)  select {sel_s:.1f} s  -> {res.selected}")

    t0 = time.perf_counter()
    reduced, pca = reduce_features(data, "pca", "auto", variance=0.95, seed=args.seed)
    red_s = time.perf_counter() - t0
    mlp = _mlp(reduced, work, "pca", transform=pca)
    chosen = next(p for p in pca.curve if p.k == pca.n_components)
    rows.append(("pca", pca.n_components, chosen.score, pca.baseline.score, mlp, red_s,
                 f"{pca.n_components} components of {len(pca.part_names)} design columns"))
    print(f"{'pca':12s} k={pca.n_components:2d}  fast valid {chosen.score:.4f} (all {pca.baseline.score:.4f})  "
          f"MLP valid {mlp['valid']:.4f} test {mlp['test']:.4f}  ONNX {mlp['onnx']:,} B "
          f"({mlp['onnx'] / full['onnx']:.2f}x)  reduce {red_s:.1f} s  ({pca.reason})")

    # PCA again, its size bounded by the all-features MLP: the largest k whose MLP is no bigger.
    budget = mlp_size_bytes(data.schema)
    t0 = time.perf_counter()
    reduced, pca_s = reduce_features(data, "pca", target_size=budget, seed=args.seed)
    red_s = time.perf_counter() - t0
    mlp = _mlp(reduced, work, "pca_size", transform=pca_s)
    fast = next(p.score for p in pca_s.curve if p.k == pca_s.n_components)
    rows.append((f"pca, target_size={budget:,} B", pca_s.n_components, fast, pca.baseline.score, mlp, red_s,
                 f"{pca_s.n_components} components; cumulative variance {pca_s.variance_kept:.3f}"))
    print(f"{'pca (size)':12s} k={pca_s.n_components:2d}  MLP valid {mlp['valid']:.4f} test {mlp['test']:.4f}  "
          f"ONNX {mlp['onnx']:,} B ({mlp['onnx'] / full['onnx']:.2f}x)  reduce {red_s:.1f} s  ({pca_s.reason})")

    print("\n| method | k | fast model valid acc (all) | MLP valid acc | MLP test acc (all: {:.4f}) | MLP ONNX bytes "
          "(ratio) | time (s) | kept |".format(full["test"]))
    print("|---|---|---|---|---|---|---|---|")
    print(f"| all features | {len(data.schema.features)} | - | {full['valid']:.4f} | {full['test']:.4f} | "
          f"{full['onnx']:,} (1.00x) | - | all |")
    for method, k, fast, base, m, secs, kept in rows:
        print(f"| {method} | {k} | {fast:.4f} ({base:.4f}) | {m['valid']:.4f} | {m['test']:.4f} | "
              f"{m['onnx']:,} ({m['onnx'] / full['onnx']:.2f}x) | {secs:.1f} | {kept} |")

    args.out.mkdir(parents=True, exist_ok=True)
    figs = {
        "features_explained_variance.png": explained_variance_figure(
            pca.explained_variance_ratio, chosen=pca.n_components, threshold=pca.variance,
            title=f"Adult: PCA of the standardized one-hot design ({len(pca.part_names)} columns)"),
        "features_accuracy_vs_k.png": feature_curve_figure(
            {m: ([p.k for p in r.curve], [p.score for p in r.curve]) for m, r in results.items()},
            chosen={m: r.k for m, r in results.items()}, baseline=next(iter(results.values())).baseline.score,
            title="Adult: fast model (logistic regression) accuracy vs raw columns kept"),
        "features_pca_accuracy_vs_k.png": feature_curve_figure(
            {"pca": ([p.k for p in pca.curve], [p.score for p in pca.curve])}, chosen={"pca": pca.n_components},
            baseline=pca.baseline.score, xlabel="principal components kept",
            title="Adult: fast model accuracy vs PCA components"),
        "features_size_vs_accuracy.png": size_accuracy_figure(
            {**{m: ([p.model_bytes for p in r.curve], [p.score for p in r.curve]) for m, r in results.items()},
             "pca": ([p.model_bytes for p in pca.curve], [p.score for p in pca.curve])},
            chosen={**{m: (r.chosen.model_bytes, r.chosen.score) for m, r in results.items()},
                    "pca": (chosen.model_bytes, chosen.score)},
            baseline=(pca.baseline.model_bytes, pca.baseline.score),
            title="Adult: downstream MLP size vs fast-model accuracy"),
    }
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for name, fig in figs.items():
        FigureCanvasAgg(fig)
        fig.savefig(args.out / name, dpi=100, facecolor="white", metadata={"Software": None})
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
