"""The one-hot design matrix, the fast validation model and the downstream-size rule shared by
feature selection (:mod:`modelyard.compress._select_features`) and feature extraction
(:mod:`modelyard.compress._reduce`).

The design matrix
-----------------
Raw columns are encoded by :func:`modelyard.data.encode_frame` (numeric ``float32`` with
NaN, categorical codes ``0`` = missing or unseen, ``i + 1`` = ``categories[i]``), then:

* a numeric column is one *part*: its value, a missing value filled with the training
  mean (the column's mean over the training rows that have it; 0 if it has none);
* a categorical column is one 0/1 indicator *part* per code seen in the training rows
  (``col=value``, and ``col=<missing>`` for code 0 when training rows have missing or
  unseen values). A column with a single code in training is constant and gets no part.

Parts keep the schema's column order, so part ``j`` belongs to raw column
``owner[j]``. Selection scores parts and aggregates them per raw column (the rule is
per method, see :func:`modelyard.compress.select_features`); extraction projects the
(scaled) parts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from modelyard.data._schema import Column, Schema, encode_frame
from modelyard.data._tabular import TabularData, TabularSplit
from modelyard.errors import DataError

__all__ = [
    "FAST_MODELS",
    "CurvePoint",
    "OneHotDesign",
    "check_tabular",
    "choose_k",
    "fast_model_score",
    "k_grid",
    "min_max",
    "mlp_size_bytes",
    "standardizer",
    "subset_data",
    "thread_limit",
]

#: Fast models that score a candidate feature set on the validation split.
FAST_MODELS = ("linear", "gbm")

#: Label of the missing-or-unseen indicator of a categorical column.
MISSING_LABEL = "<missing>"


@dataclass(frozen=True)
class OneHotDesign:
    """How raw columns become the numeric design matrix (module docstring).

    Attributes
    ----------
    schema : Schema
        The raw schema it reads.
    fill : tuple of float
        Training mean of each numeric column, used for its missing values.
    codes : tuple of tuple of int
        Per categorical column, the codes that get an indicator (those seen in training).
    """

    schema: Schema
    fill: tuple[float, ...]
    codes: tuple[tuple[int, ...], ...]

    @classmethod
    def fit(cls, split: TabularSplit) -> OneHotDesign:
        """Learn the fill values and the indicator codes from the training split."""
        x_num, x_cat = encode_frame(split.X, split.schema)
        fill = []
        for j in range(x_num.shape[1]):
            col = x_num[:, j].astype(np.float64)
            seen = col[~np.isnan(col)]
            fill.append(float(seen.mean()) if seen.size else 0.0)
        codes = []
        for j in range(x_cat.shape[1]):
            present = np.unique(x_cat[:, j])
            codes.append(tuple(int(c) for c in present) if present.size > 1 else ())
        return cls(split.schema, tuple(fill), tuple(codes))

    # -- parts -----------------------------------------------------------------------
    @property
    def part_names(self) -> list[str]:
        """One name per design column: the numeric column's name, or ``column=value``."""
        names: list[str] = []
        num = iter(self.schema.numeric_names)
        cats = iter(zip(self.schema.categorical, self.codes, strict=True))
        for col in self.schema.features:
            if col.kind == "numeric":
                names.append(next(num))
            else:
                column, codes = next(cats)
                names += [f"{column.name}={_label(column, c)}" for c in codes]
        return names

    @property
    def owner(self) -> np.ndarray:
        """Index (into ``schema.feature_names``) of the raw column of each design column, int64."""
        out: list[int] = []
        cats = iter(self.codes)
        for i, col in enumerate(self.schema.features):
            out += [i] if col.kind == "numeric" else [i] * len(next(cats))
        return np.asarray(out, dtype=np.int64)

    @property
    def width(self) -> int:
        return len(self.schema.numeric) + sum(len(c) for c in self.codes)

    # -- matrices --------------------------------------------------------------------
    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The design matrix of ``frame``'s rows, float64 ``(n_rows, width)`` in schema column order."""
        x_num, x_cat = encode_frame(frame, self.schema)
        x_num = x_num.astype(np.float64)  # (n, n_num)
        if x_num.size:
            x_num = np.where(np.isnan(x_num), np.asarray(self.fill)[None, :], x_num)
        blocks: list[np.ndarray] = []
        num_j = cat_j = 0
        for col in self.schema.features:
            if col.kind == "numeric":
                blocks.append(x_num[:, num_j : num_j + 1])
                num_j += 1
            else:
                codes = np.asarray(self.codes[cat_j], dtype=np.int64)
                blocks.append((x_cat[:, cat_j : cat_j + 1] == codes[None, :]).astype(np.float64))  # (n, n_codes)
                cat_j += 1
        if not blocks:
            return np.empty((len(frame), 0))
        return np.hstack(blocks)

    def code_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The encoded matrix of :func:`modelyard.models.encode_matrix` with missing numbers filled.

        Numeric columns (training mean for missing values), then categorical codes as
        floats; float64 ``(n_rows, n_numeric + n_categorical)``.
        """
        x_num, x_cat = encode_frame(frame, self.schema)
        x_num = x_num.astype(np.float64)
        if x_num.size:
            x_num = np.where(np.isnan(x_num), np.asarray(self.fill)[None, :], x_num)
        return np.hstack([x_num, x_cat.astype(np.float64)])

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema.to_dict(), "fill": list(self.fill), "codes": [list(c) for c in self.codes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OneHotDesign:
        schema = Schema.from_dict(d["schema"])
        codes = tuple(tuple(int(c) for c in cs) for cs in d["codes"])
        fill = tuple(float(v) for v in d["fill"])
        if len(codes) != len(schema.categorical) or len(fill) != len(schema.numeric):
            raise ValueError(
                f"Design has {len(fill)} fill values and {len(codes)} code lists for a schema with "
                f"{len(schema.numeric)} numeric and {len(schema.categorical)} categorical columns; the file is corrupt."
            )
        return cls(schema, fill, codes)


def _label(column: Column, code: int) -> str:
    return MISSING_LABEL if code == 0 else column.categories[code - 1]


# -- scaling ---------------------------------------------------------------------------
def standardizer(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(center, divisor)`` standardizing ``z``'s columns: mean and population std (1 where the std is 0)."""
    center = z.mean(axis=0)
    std = z.std(axis=0)
    return center, np.where(std > 0, std, 1.0)


def min_max(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(center, divisor)`` mapping ``z``'s columns onto [0, 1]: min and range (1 where the range is 0)."""
    lo, hi = z.min(axis=0), z.max(axis=0)
    span = hi - lo
    return lo, np.where(span > 0, span, 1.0)


# -- the fast model and the size of the downstream model -------------------------------
@dataclass(frozen=True)
class CurvePoint:
    """One point of an accuracy-versus-size curve.

    Attributes
    ----------
    k : int
        Raw columns kept (selection) or components (extraction).
    score : float
        The fast model's validation score: accuracy (classification) or R² (regression).
    n_params : int
        Parameters of the fast model (coefficients and intercepts; tree nodes for ``"gbm"``).
    model_bytes : int
        Bytes of the parameters of the model that would be served: the float32 weights
        of the downstream MLP (``MLPConfig``) on these columns, plus for extraction the
        float64 arrays of the ONNX front stage (projection ``k x d``, centre, divisor,
        mean, fill values). The size the pipeline trains next, before any compression.
    columns : tuple of str
        The feature columns of this point.
    """

    k: int
    score: float
    n_params: int
    model_bytes: int
    columns: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "score": self.score, "n_params": self.n_params, "model_bytes": self.model_bytes,
                "columns": list(self.columns)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CurvePoint:
        return cls(int(d["k"]), float(d["score"]), int(d["n_params"]), int(d["model_bytes"]),
                   tuple(str(c) for c in d["columns"]))


def fast_model_score(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    task: str,
    *,
    model: str = "linear",
    categorical: Sequence[bool] | None = None,
    seed: int = 0,
) -> tuple[float, int]:
    """Fit the fast model on train, score it on valid: ``(score, n_params)``.

    ``"linear"``: features standardized on train, then ``LogisticRegression`` (L2,
    ``C=1``, lbfgs) for classifiers or ``Ridge`` (``alpha=1``) for regression.
    ``"gbm"``: ``HistGradientBoosting`` (100 iterations, no early stopping) with
    ``categorical`` marking the columns it treats as categories. The score is accuracy
    (classification) or R² (regression).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    if model == "linear":
        from sklearn.linear_model import LogisticRegression, Ridge

        center, divisor = standardizer(x_train)
        xt, xv = (x_train - center) / divisor, (x_valid - center) / divisor
        est = Ridge(alpha=1.0) if task == "regression" else LogisticRegression(C=1.0, max_iter=1000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(xt, y_train)
        n_params = int(np.size(est.coef_) + np.size(est.intercept_))
        return float(est.score(xv, y_valid)), n_params
    if model == "gbm":
        from sklearn.ensemble import (
            HistGradientBoostingClassifier,
            HistGradientBoostingRegressor,
        )

        mask = None if categorical is None or not any(categorical) else np.asarray(categorical, dtype=bool)
        cls = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
        est = cls(max_iter=100, early_stopping=False, categorical_features=mask, random_state=seed)
        est.fit(x_train, y_train)
        n_params = int(sum(len(t.nodes) for it in est._predictors for t in it))
        return float(est.score(x_valid, y_valid)), n_params
    raise ValueError(f"Unknown fast model {model!r}; known: {list(FAST_MODELS)}.")


def mlp_size_bytes(schema: Schema, config: Any = None) -> int:
    """Bytes of the float32 parameters of the :class:`~modelyard.models.TabularMLP` built on ``schema``.

    The module is built (weights seeded from a private generator, so torch's global
    random state is untouched), not trained: its size depends only on the number of
    numeric columns, the categorical vocabularies, the number of outputs and ``config``
    (``MLPConfig()`` when None), so sizes are cached on those.
    """
    from modelyard.models._config import MLPConfig

    config = MLPConfig() if config is None else config
    n_out = 1 if schema.task == "regression" else schema.n_classes
    vocab = tuple(len(c.categories) for c in schema.categorical)
    return _mlp_size(len(schema.numeric), vocab, n_out, schema.task, config.model_dump_json())


@functools.lru_cache(maxsize=1024)
def _mlp_size(n_num: int, vocab: tuple[int, ...], n_out: int, task: str, config_json: str) -> int:
    import torch

    from modelyard.models._config import MLPConfig
    from modelyard.models._mlp import TabularMLP

    config = MLPConfig.model_validate_json(config_json)
    classes = tuple(str(i) for i in range(n_out)) if task != "regression" else ()
    features = tuple(Column(f"n{i}", "numeric") for i in range(n_num)) + tuple(
        Column(f"c{i}", "categorical", tuple(str(j) for j in range(v))) for i, v in enumerate(vocab))
    schema = Schema(features=features, target="y", task=task, classes=classes)  # type: ignore[arg-type]
    module = TabularMLP(schema, config, generator=torch.Generator().manual_seed(0))
    return 4 * int(sum(p.numel() for p in module.parameters()))


def k_grid(n: int, *, max_points: int = 30) -> list[int]:
    """Candidate numbers of columns: every k up to ``max_points`` columns, else a geometric grid from 1 to n."""
    if n <= max_points:
        return list(range(1, n + 1))
    grid = np.unique(np.round(np.geomspace(1, n, max_points)).astype(int))
    return sorted({int(v) for v in grid} | {n})


def choose_k(points: Sequence[CurvePoint], tolerance: float) -> tuple[int, str]:
    """The smallest k whose score is within ``tolerance`` of the best score; ``(k, why)``."""
    best = max(points, key=lambda p: p.score)
    ok = [p for p in points if p.score >= best.score - tolerance]
    pick = min(ok, key=lambda p: p.k)
    why = (f"smallest k with validation score >= best - tolerance = {best.score:.4f} - {tolerance:g} "
           f"(best at k={best.k}); k={pick.k} scores {pick.score:.4f}")
    return pick.k, why


def thread_limit(n_threads: int | None) -> Any:
    """A context limiting BLAS and OpenMP threads to ``n_threads`` (no limit when None)."""
    import contextlib

    from threadpoolctl import threadpool_limits

    return contextlib.nullcontext() if n_threads is None else threadpool_limits(limits=n_threads)


# -- data plumbing ---------------------------------------------------------------------
Role = Literal["train", "valid", "test"]


def check_tabular(data: Any, what: str) -> TabularData:
    if not isinstance(data, TabularData):
        raise TypeError(
            f"{what} takes a TabularData (modelyard.data.load('adult'), from_csv, ...); got {type(data).__name__}."
        )
    for name, split in data.splits.items():
        if len(split) == 0:
            raise DataError(f"The {name} split is empty; {what} needs rows in train and valid.")
    return data


def subset_data(data: TabularData, schema: Schema, frames: dict[str, pd.DataFrame], suffix: str) -> TabularData:
    """A TabularData with the new schema and one frame per split, the name tagged with ``suffix``."""
    splits = {name: TabularSplit(frames[name].reset_index(drop=True), schema) for name in ("train", "valid", "test")}
    return TabularData(name=f"{data.name}{suffix}", schema=schema, sources=dict(data.sources), **splits)
