"""Realistic run summaries (the content of metrics.json) built with the real SliceReport."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from modelyard.evaluate import SliceReport, roc_curve_points

SCRIPT_COLUMN = "<script>alert(1)</script>"
IMG_VALUE = "<img src=x onerror=alert(1)>"
MD_LINK = "[click](javascript:alert(1))"

SLICES = ["sex", "race", ("sex", "race"), {"feature": "age", "buckets": [25, 45, 65]}]


def _frame(rng: np.random.Generator, n: int, *, hostile: bool) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "sex": rng.choice(["Female", "Male"], size=n, p=[0.33, 0.67]),
            "race": rng.choice(
                ["White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"],
                size=n, p=[0.85, 0.095, 0.03, 0.01, 0.015],
            ),
            "age": np.clip(np.round(rng.normal(38.5, 13.5, size=n)), 17, 90),
        }
    )
    frame.loc[rng.random(n) < 0.01, "age"] = np.nan
    if hostile:
        frame[SCRIPT_COLUMN] = rng.choice([IMG_VALUE, "plain | pipe", MD_LINK], size=n)
    return frame


def _scores(rng: np.random.Generator, y: np.ndarray, frame: pd.DataFrame, skill: float) -> np.ndarray:
    signal = (2 * y - 1) * skill + rng.normal(0, 1, size=y.size)
    signal = signal + rng.normal(0, 0.8, size=y.size) * (frame["age"] > 60).to_numpy()  # worse on older people
    p = 1 / (1 + np.exp(-signal))
    return np.column_stack([1 - p, p])


def make_summary(*, hostile: bool = False, optional: bool = True, n_test: int = 3000, seed: int = 0) -> dict[str, Any]:
    """A binary-classification run with two models (mlp chosen, gbdt), as the pipeline writes it.

    ``hostile`` adds a slice column named ``<script>...`` whose values are HTML and Markdown
    injections; ``optional=False`` leaves out ROC curves, ONNX export, steps, sources and spec.
    """
    rng = np.random.default_rng(seed)
    slices = [*SLICES, SCRIPT_COLUMN] if hostile else SLICES
    splits = {}
    for split, n in (("valid", n_test // 2), ("test", n_test)):
        frame = _frame(rng, n, hostile=hostile)
        y = (rng.random(n) < 0.24 + 0.1 * (frame["sex"] == "Male").to_numpy()).astype(np.int64)
        splits[split] = (frame, y)
    models: dict[str, Any] = {}
    for name, family, skill, seconds in (("mlp", "mlp", 1.35, 41.7), ("gbdt", "hist-gradient-boosting", 1.2, 3.2)):
        entry: dict[str, Any] = {"family": family, "fit_seconds": seconds}
        for split, (frame, y) in splits.items():
            proba = _scores(rng, y, frame, skill)
            entry[split] = SliceReport(
                y_true=y, y_score=proba, frame=frame, slices=slices, task="binary"
            ).to_dict()
            if split == "test" and optional:
                entry["roc"] = {**roc_curve_points(y, proba), "split": "test"}
        models[name] = entry
    summary: dict[str, Any] = {
        "run_id": "20260509-0735-3f9c2a",
        "pipeline": "adult-income",
        "created_at": "2026-05-09T07:35:25+00:00",
        "data": {
            "name": "adult",
            "target": "income",
            "task": "binary",
            "classes": ["<=50K", ">50K"],
            "sensitive": ["sex", "race"],
            "rows": {"train": 29304, "valid": n_test // 2, "test": n_test},
            "features": [
                {"name": c, "kind": k}
                for c, k in [
                    ("age", "numeric"), ("workclass", "categorical"), ("education", "categorical"),
                    ("education-num", "numeric"), ("marital-status", "categorical"), ("occupation", "categorical"),
                    ("race", "categorical"), ("sex", "categorical"), ("hours-per-week", "numeric"),
                ]
            ] + ([{"name": SCRIPT_COLUMN, "kind": "categorical"}] if hostile else []),
        },
        "models": models,
        "chosen": {"model": "mlp", "metric": "accuracy", "split": "valid"},
    }
    if optional:
        summary["spec"] = {
            "name": "adult-income",
            "data": {"source": "adult", "target": "income", "sensitive": ["sex", "race"],
                     "split": {"test": 0.2, "valid": 0.1, "seed": 0}},
            "train": {"epochs": 30},
            "evaluate": {"slices": [list(s) if isinstance(s, tuple) else s for s in slices]},
            "report": {"format": "html"},
        }
        summary["data"]["sources"] = {
            "adult.data": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
            "adult.test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
        }
        summary["chosen"]["onnx"] = {"path": "model.onnx", "bytes": 187_392, "max_abs_diff": 3.1e-7}
        summary["steps"] = [
            {"name": "data", "status": "cached", "seconds": 0.04},
            {"name": "train.mlp", "status": "ran", "seconds": 41.9},
            {"name": "train.gbdt", "status": "ran", "seconds": 3.3},
            {"name": "evaluate", "status": "ran", "seconds": 1.8},
            {"name": "export", "status": "ran", "seconds": 0.9},
        ]
    if hostile:
        summary["pipeline"] = "adult <b>income</b>"
        summary["data"]["sources"] = {"<script>x</script>.csv": "not-a-hash | `rm -rf`"}
    return summary
