"""Data for the MLP and ONNX tests: UCI Adult with the *official* split, and small synthetic sets.

``modelyard.data.load("adult")`` trains on ``adult.data`` less a seeded, stratified
10% validation split (used for early stopping) and tests on ``adult.test``. The
files come from ``$MODELYARD_DATA_DIR`` or the shared data folder beside the
checkout; nothing is downloaded, and the tests are skipped when neither exists.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import modelyard.data as mdata
from modelyard.data import TabularSplit, infer_schema
from modelyard.models import MLPConfig, TorchPredictor
from modelyard.train import fit_mlp


def _data_dir() -> Path:
    env = os.environ.get("MODELYARD_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data")  # ../shared/data beside the repo
    for c in candidates:
        if (c / "adult" / "adult.data").is_file() and (c / "adult" / "adult.test").is_file():
            return c
    pytest.skip(f"Adult data not found in {[str(c) for c in candidates]}; set MODELYARD_DATA_DIR.")


@functools.lru_cache(maxsize=1)
def adult() -> tuple[TabularSplit, TabularSplit, TabularSplit]:
    """``(train, valid, test)``: adult.data split 90/10 (stratified, seed 0), and the official adult.test."""
    data = mdata.load("adult", data_dir=_data_dir(), download=False)
    return data.train, data.valid, data.test


@functools.lru_cache(maxsize=1)
def adult_mlp() -> tuple[TorchPredictor, float]:
    """The MLP with the default config fitted on Adult, and its fit time in seconds (fitted once per session)."""
    train, valid, _ = adult()
    start = time.perf_counter()
    model = fit_mlp(train, valid, MLPConfig())
    return model, time.perf_counter() - start


def synthetic(task: str, *, n: int = 600, numeric: bool = True, categorical: bool = True, seed: int = 0):
    """Train and valid splits with a learnable target, missing values in both column kinds."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(index=range(n))
    signal = np.zeros(n)
    if numeric:
        frame["x1"] = rng.normal(size=n)
        frame["x2"] = rng.exponential(1000.0, size=n)  # heavy-tailed, non-negative: log-transformed
        signal += 2.0 * frame["x1"] + np.log1p(frame["x2"]) - 6.0
        frame.loc[rng.random(n) < 0.05, "x1"] = np.nan
    if categorical:
        frame["color"] = rng.choice(["red", "green", "blue"], size=n)
        signal += frame["color"].map({"red": -2.0, "green": 0.0, "blue": 2.0}).to_numpy()
        frame.loc[rng.random(n) < 0.05, "color"] = None
    if task == "regression":
        frame["y"] = signal + rng.normal(scale=0.1, size=n)
    elif task == "multiclass":
        frame["y"] = np.digitize(signal, np.quantile(signal, [1 / 3, 2 / 3])).astype(str)
    else:
        frame["y"] = np.where(signal > np.median(signal), "yes", "no")
    schema = infer_schema(frame, "y")
    cut = int(0.8 * n)
    return TabularSplit(frame.iloc[:cut].reset_index(drop=True), schema), TabularSplit(
        frame.iloc[cut:].reset_index(drop=True), schema
    )
