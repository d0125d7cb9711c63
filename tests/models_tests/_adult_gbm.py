"""Data for the gradient-boosting tests: Adult, and small synthetic frames with missing values.

Adult comes from the official files through ``modelyard.data.load``: train is
``adult.data`` less a seeded, stratified 10% kept for validation (early stopping);
test is the official ``adult.test`` (16,281 rows).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from modelyard.data import TabularData, TabularSplit, infer_schema, load
from modelyard.models import GBMConfig, SklearnPredictor, fit_gbm


@pytest.fixture(autouse=True)
def one_openmp_thread() -> Iterator[None]:
    """Run scikit-learn's OpenMP loops on one thread during these tests.

    Histogram gradient boosting synchronises its OpenMP threads many times per tree.
    When other processes keep the two cores of a CI machine busy, every barrier waits
    for a descheduled thread: the adapter tests took 56 s with two threads and 1.9 s
    with one, under the same load. Results do not depend on the thread count.
    """
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def adult_data_dir() -> Path:
    """The folder holding ``adult/adult.data``: ``$MODELYARD_DATA_DIR`` or the shared copy beside the repo."""
    candidates = [os.environ.get("MODELYARD_DATA_DIR"), str(Path(__file__).resolve().parents[3] / "shared" / "data")]
    for root in candidates:
        if root and (Path(root) / "adult" / "adult.data").is_file():
            return Path(root)
    pytest.skip("Adult not found: set MODELYARD_DATA_DIR to the folder holding adult/adult.data")


@functools.cache
def adult() -> TabularData:
    """Adult split as in the baseline's acceptance figure (valid 10% of adult.data, seed 0; official test)."""
    data = load("adult", valid=0.1, seed=0, data_dir=adult_data_dir(), download=False)
    if not isinstance(data, TabularData):
        raise TypeError(f"load('adult') returned {type(data).__name__}, not TabularData")
    return data


@functools.cache
def adult_gbm(categorical: str = "native") -> tuple[SklearnPredictor, float]:
    """The baseline fitted on Adult with default settings (but ``categorical``), and its fit time in seconds."""
    data = adult()
    start = time.perf_counter()
    model = fit_gbm(data.train, data.valid, GBMConfig(categorical=categorical))
    return model, time.perf_counter() - start


CATEGORIES_A = ("red", "green", "blue", "cyan", "magenta", "yellow")
CATEGORIES_B = tuple(f"b{i}" for i in range(9))


def synthetic_frame(task: str, n: int, seed: int, *, unseen: bool = False) -> pd.DataFrame:
    """Two numeric and two categorical features (about 10% missing each) and a target.

    ``unseen=True`` also puts categories never seen in training into the categorical
    columns, and infinities into the numeric ones.
    """
    rng = np.random.default_rng(seed)
    num_a = rng.normal(size=n)
    num_b = rng.integers(0, 40, size=n).astype(float) / 4  # many ties: thresholds between repeated values
    cat_a = rng.choice(CATEGORIES_A, size=n).astype(object)
    cat_b = rng.choice(CATEGORIES_B, size=n).astype(object)
    effect_a = {c: w for c, w in zip(CATEGORIES_A, [1.5, -1.0, 0.5, -1.5, 1.0, 0.0], strict=True)}
    effect_b = {c: (i % 3 - 1) * 0.8 for i, c in enumerate(CATEGORIES_B)}
    score = (
        num_a + np.sin(num_b) + np.array([effect_a[c] for c in cat_a]) + np.array([effect_b[c] for c in cat_b])
    )
    score += rng.normal(scale=0.5, size=n)
    frame = pd.DataFrame({"num_a": num_a, "cat_a": cat_a, "num_b": num_b, "cat_b": cat_b})
    for col in frame.columns:
        frame.loc[rng.random(n) < 0.1, col] = np.nan
    if unseen:
        frame.loc[rng.random(n) < 0.05, "cat_a"] = "never-seen"
        frame.loc[rng.random(n) < 0.05, "cat_b"] = "b99"
        frame.loc[rng.random(n) < 0.02, "num_a"] = np.inf
        frame.loc[rng.random(n) < 0.02, "num_b"] = -np.inf
    if task == "binary":
        frame["y"] = np.where(score > 0.3, "yes", "no")
    elif task == "multiclass":
        frame["y"] = np.select([score < -0.7, score < 0.9], ["low", "mid"], "high")
    else:
        frame["y"] = 3.0 * score + 10.0
    return frame


def synthetic_splits(
    task: str, n_train: int = 800, n_test: int = 400, seed: int = 0
) -> tuple[TabularSplit, TabularSplit]:
    """(train, test) of :func:`synthetic_frame`; the test split has unseen categories and infinities."""
    train = synthetic_frame(task, n_train, seed)
    schema = infer_schema(train, "y", task=None if task != "regression" else "regression")
    test = synthetic_frame(task, n_test, seed + 1, unseen=True)
    return TabularSplit(train, schema), TabularSplit(test, schema)
