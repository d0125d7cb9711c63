"""A small synthetic tabular data set and spec, so pipeline tests run in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def make_csv(path: Path, *, n: int = 1500, seed: int = 0, columns: dict[str, str] | None = None) -> Path:
    """A binary problem with numeric and categorical features, a sensitive column and missing values."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    income = rng.lognormal(10, 1, n)
    group = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    sex = rng.choice(["F", "M"], n)
    logit = 0.04 * (age - 45) + 0.8 * (np.log(income) - 10) + np.where(group == "b", 1.0, -0.3)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({"age": age, "income": income, "group": group, "sex": sex,
                          "label": np.where(y == 1, "yes", "no")})
    frame.loc[rng.random(n) < 0.05, "income"] = np.nan
    frame.loc[rng.random(n) < 0.05, "group"] = np.nan
    if columns:
        frame = frame.rename(columns=columns)
    frame.to_csv(path, index=False)
    return path


def write_spec(path: Path, csv: Path, *, mlp: dict | None = None, gbm: dict | None = None, **extra) -> Path:
    spec = {
        "name": "synthetic",
        "data": {"source": str(csv), "target": "label", "sensitive": ["sex"], "split": {"test": 0.25, "valid": 0.2}},
        "train": {"models": {
            "mlp": {"family": "mlp", "max_epochs": 4, "hidden_sizes": [16], **(mlp or {})},
            "gbm": {"family": "gbm", "max_iter": 20, **(gbm or {})},
        }},
        "evaluate": {"slices": ["sex", {"feature": "age", "buckets": [30, 60]}]},
    }
    spec.update(extra)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
