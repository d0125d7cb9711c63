"""Schemas of tabular data sets, and the one encoding every model family shares.

A :class:`Schema` names the feature columns and their kinds, the target, the task and
the class labels, and the sensitive columns. It is inferred once from training data,
stored beside every model, and checked again at prediction time, so a model refuses
columns that differ from those it was trained on.

Encoding convention (shared by the torch MLP, the gradient-boosting baseline and the
ONNX front end that takes raw columns):

* numeric features become ``float32`` in schema order, missing values stay ``NaN``;
* categorical features become ``int64`` codes: ``0`` for a missing or unseen value,
  ``i + 1`` for ``column.categories[i]``. Values are compared as strings
  (:func:`category_strings`), so the ONNX model can take them as string tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from modelyard.errors import DataError, SchemaMismatchError

__all__ = ["Column", "Schema", "infer_schema", "encode_frame", "encode_target", "category_strings"]

Kind = Literal["numeric", "categorical"]
Task = Literal["binary", "multiclass", "regression"]

#: A numeric target with more distinct values than this is treated as regression.
MAX_CLASSES = 50


@dataclass(frozen=True)
class Column:
    """One feature column."""

    name: str
    kind: Kind  # "numeric" or "categorical"
    categories: tuple[str, ...] = ()  # categorical only: the vocabulary seen in training, code i+1 = categories[i]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "categorical":
            out["categories"] = list(self.categories)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Column:
        return cls(name=str(d["name"]), kind=d["kind"], categories=tuple(d.get("categories", ())))


@dataclass(frozen=True)
class Schema:
    """Feature columns, target and task of a tabular data set."""

    features: tuple[Column, ...]
    target: str
    task: Task
    classes: tuple[str, ...] = ()  # classification only: label values as strings; y == i means classes[i]
    sensitive: tuple[str, ...] = field(default=())  # columns for slicing and fairness (may also be features)

    # -- names -------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.features]

    @property
    def numeric(self) -> list[Column]:
        return [c for c in self.features if c.kind == "numeric"]

    @property
    def categorical(self) -> list[Column]:
        return [c for c in self.features if c.kind == "categorical"]

    @property
    def numeric_names(self) -> list[str]:
        return [c.name for c in self.numeric]

    @property
    def categorical_names(self) -> list[str]:
        return [c.name for c in self.categorical]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def column(self, name: str) -> Column:
        for c in self.features:
            if c.name == name:
                return c
        raise KeyError(name)

    # -- checks ------------------------------------------------------------------
    def check_columns(self, frame: pd.DataFrame) -> None:
        """Raise :class:`SchemaMismatchError` unless ``frame`` has exactly the feature columns.

        The target and the sensitive columns may be present too; any other extra
        column, or any missing feature, is an error that lists both sets.
        """
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(
                f"Expected a pandas DataFrame with columns {self.feature_names}; got {type(frame).__name__}."
            )
        present = [str(c) for c in frame.columns]
        missing = [n for n in self.feature_names if n not in present]
        allowed = set(self.feature_names) | {self.target} | set(self.sensitive)
        extra = [c for c in present if c not in allowed]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if extra:
                parts.append(f"unexpected {extra}")
            raise SchemaMismatchError(
                f"Feature columns differ from training: {'; '.join(parts)}. "
                f"The model expects {self.feature_names}; rename or drop columns to match."
            )

    # -- serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "features": [c.to_dict() for c in self.features],
            "target": self.target,
            "task": self.task,
            "classes": list(self.classes),
            "sensitive": list(self.sensitive),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schema:
        return cls(
            features=tuple(Column.from_dict(c) for c in d["features"]),
            target=str(d["target"]),
            task=d["task"],
            classes=tuple(str(c) for c in d.get("classes", ())),
            sensitive=tuple(str(s) for s in d.get("sensitive", ())),
        )


def category_strings(values: pd.Series | Sequence[Any]) -> np.ndarray:
    """Categorical values as the strings the encoding compares; missing becomes ``""``."""
    s = pd.Series(values, copy=False)
    out = s.astype(object).where(s.notna(), "")
    return np.array([v if isinstance(v, str) else _scalar_str(v) for v in out], dtype=object)


def _scalar_str(v: Any) -> str:
    # 3.0 read from a CSV and 3 read from Parquet must be the same category.
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def infer_schema(
    frame: pd.DataFrame,
    target: str,
    *,
    sensitive: Iterable[str] = (),
    drop: Iterable[str] = (),
    categorical: Iterable[str] = (),
    task: Task | None = None,
) -> Schema:
    """Infer a :class:`Schema` from a frame.

    Numeric dtypes become numeric features; strings, booleans and pandas categoricals
    become categorical features (vocabulary sorted as strings). ``categorical`` forces
    numeric columns to be categorical. The target and the ``drop`` columns are never
    features; sensitive columns are features unless dropped.

    Raises
    ------
    DataError
        If the frame is empty, the target is missing (the message lists the columns),
        the target has a single class, or a named column does not exist.
    """
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise DataError("The data set is empty: it has no rows or no columns. Check the file and its separator.")
    columns = [str(c) for c in frame.columns]
    if len(set(columns)) != len(columns):
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        raise DataError(f"Duplicate column names {dupes}; give every column a unique name.")
    if target not in columns:
        raise DataError(f"Target column {target!r} does not exist. Columns are: {columns}. Set `target` to one of them.")
    sensitive, drop, categorical = tuple(sensitive), tuple(drop), tuple(categorical)
    for what, names in (("sensitive", sensitive), ("drop", drop), ("categorical", categorical)):
        unknown = [n for n in names if n not in columns]
        if unknown:
            raise DataError(f"{what} names unknown columns {unknown}. Columns are: {columns}.")

    y = frame[target]
    if y.isna().all():
        raise DataError(f"Target column {target!r} has no values; every row is missing.")
    if y.isna().any():
        raise DataError(
            f"Target column {target!r} has {int(y.isna().sum())} missing values; drop those rows before training."
        )
    n_unique = y.nunique()
    if task is None:
        if _is_numeric(y) and (n_unique > MAX_CLASSES or not np.all(np.mod(y.to_numpy(dtype=float), 1) == 0)):
            task = "regression"
        else:
            task = "binary" if n_unique <= 2 else "multiclass"
    if task in ("binary", "multiclass"):
        if n_unique < 2:
            raise DataError(
                f"Target column {target!r} has a single class ({y.iloc[0]!r}); a classifier needs at least two. "
                "Check the target column or filter."
            )
        if task == "binary" and n_unique > 2:
            raise DataError(f"task='binary' but target {target!r} has {n_unique} classes; use task='multiclass'.")
        uniques = pd.unique(y)
        ordered = sorted(uniques) if _is_numeric(y) else sorted(uniques, key=_scalar_str)
        classes = tuple(_scalar_str(v) for v in ordered)
    else:
        if not _is_numeric(y):
            raise DataError(f"Regression target {target!r} must be numeric; it has dtype {y.dtype}.")
        classes = ()

    features = []
    for name in columns:
        if name == target or name in drop:
            continue
        s = frame[name]
        if _is_numeric(s) and name not in categorical:
            features.append(Column(name, "numeric"))
        else:
            cats = sorted(set(category_strings(s.dropna())))
            features.append(Column(name, "categorical", tuple(cats)))
    if not features:
        raise DataError(f"No feature columns left besides target {target!r}; the data set needs at least one feature.")
    return Schema(features=tuple(features), target=target, task=task, classes=classes, sensitive=sensitive)


def encode_frame(frame: pd.DataFrame, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """Encode raw feature columns into ``(x_num, x_cat)``.

    Returns
    -------
    x_num : ndarray of shape (n_rows, n_numeric), float32; missing values are NaN
    x_cat : ndarray of shape (n_rows, n_categorical), int64; 0 = missing or unseen, i+1 = categories[i]
    """
    schema.check_columns(frame)
    n = len(frame)
    x_num = np.empty((n, len(schema.numeric)), dtype=np.float32)
    for j, col in enumerate(schema.numeric):
        try:
            x_num[:, j] = pd.to_numeric(frame[col.name], errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
        except (ValueError, TypeError) as exc:
            raise SchemaMismatchError(
                f"Numeric feature {col.name!r} holds non-numeric values ({exc}); the model was trained on numbers."
            ) from exc
    x_cat = np.empty((n, len(schema.categorical)), dtype=np.int64)
    for j, col in enumerate(schema.categorical):
        lookup = {c: i + 1 for i, c in enumerate(col.categories)}
        x_cat[:, j] = [lookup.get(v, 0) for v in category_strings(frame[col.name])]
    return x_num, x_cat


def encode_target(values: pd.Series, schema: Schema) -> np.ndarray:
    """Target values as class indices (int64) or, for regression, float64."""
    if schema.task == "regression":
        return pd.to_numeric(values).to_numpy(dtype=np.float64)
    lookup = {c: i for i, c in enumerate(schema.classes)}
    strings = category_strings(values)
    unknown = sorted({v for v in strings if v not in lookup})
    if unknown:
        raise DataError(
            f"Target {schema.target!r} has labels {unknown[:5]} not seen in training (known: {list(schema.classes)})."
        )
    return np.array([lookup[v] for v in strings], dtype=np.int64)
