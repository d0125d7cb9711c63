"""Data shared by the quantization tests (imported as a top-level module: pytest puts this folder on sys.path)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from modelyard.data import TabularSplit, infer_schema


def adult_like(n: int = 1200, seed: int = 0) -> tuple[TabularSplit, TabularSplit]:
    """Adult-like rows: ages, hours, a heavy-tailed capital gain (mostly 0, up to ~1e5), two categoricals."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "age": rng.integers(17, 90, n).astype(float),
        "hours": rng.normal(40, 10, n),
        "gain": np.where(rng.random(n) < 0.1, rng.exponential(5000, n), 0.0),
        "work": rng.choice(["private", "gov", "self"], n),
        "edu": rng.choice(["hs", "ba", "ms", "phd"], n),
    })
    signal = ((frame["age"] - 53) / 10 + (frame["hours"] - 40) / 10 + 1.5 * (frame["gain"] > 0)
              + frame["edu"].map({"hs": -1.0, "ba": 0.0, "ms": 0.5, "phd": 1.0}))
    frame["income"] = np.where(signal + rng.normal(scale=0.5, size=n) > 0, ">50K", "<=50K")
    schema = infer_schema(frame, "income")
    cut = 2 * n // 3
    return (TabularSplit(frame.iloc[:cut].reset_index(drop=True), schema),
            TabularSplit(frame.iloc[cut:].reset_index(drop=True), schema))
