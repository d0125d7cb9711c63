"""Containers for tabular data: one split, and the train/valid/test triple."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from modelyard.data._schema import Schema, encode_target

__all__ = ["TabularSplit", "TabularData"]


@dataclass
class TabularSplit:
    """Rows of one split: the raw frame (features, target and any other columns) and the schema."""

    frame: pd.DataFrame
    schema: Schema

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def X(self) -> pd.DataFrame:  # noqa: N802 - the conventional name
        """The raw feature columns, in schema order."""
        return self.frame[self.schema.feature_names]

    @cached_property
    def y(self) -> np.ndarray:
        """The target: class indices (int64) or regression values (float64)."""
        return encode_target(self.frame[self.schema.target], self.schema)


@dataclass
class TabularData:
    """A tabular data set split into train, valid and test.

    ``sources`` maps each source file name to its SHA-256, so lineage can name the data.
    """

    name: str
    schema: Schema
    train: TabularSplit
    valid: TabularSplit
    test: TabularSplit
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def splits(self) -> dict[str, TabularSplit]:
        return {"train": self.train, "valid": self.valid, "test": self.test}
