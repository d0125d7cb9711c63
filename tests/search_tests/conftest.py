"""Small synthetic data shared by the search tests."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest

from modelyard.data import TabularData, from_frame

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_frame(n: int = 600, seed: int = 0, regression: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    cat = rng.choice(["a", "b", "c"], n)
    score = x[:, 0] + 0.5 * x[:, 1] + (cat == "a") + 0.3 * rng.normal(size=n)
    frame = pd.DataFrame(x, columns=["w", "x", "y", "z"])
    frame["cat"] = cat
    frame["label"] = score if regression else np.where(score > 0.3, "yes", "no")
    return frame


@pytest.fixture(scope="session")
def toy_data() -> TabularData:
    return from_frame(make_frame(), target="label")


@pytest.fixture(scope="session")
def toy_regression() -> TabularData:
    return from_frame(make_frame(regression=True), target="label", task="regression")
