"""The Predictor protocol: what every analysis accepts, whatever framework made the model."""

from __future__ import annotations

import abc
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from modelyard.data._schema import Schema

__all__ = ["Predictor", "BasePredictor", "SCHEMA_KEY", "QUANT_KEY", "OUTPUT_NAMES"]

#: ONNX model metadata key holding the schema (JSON) the model was trained on.
SCHEMA_KEY = "modelyard.schema"
#: ONNX metadata key recording how a model was quantized (JSON; written by modelyard.compress).
QUANT_KEY = "modelyard.quantization"
#: Output names of every exported model: classifiers, then regressors.
OUTPUT_NAMES = ("probabilities", "prediction")


@runtime_checkable
class Predictor(Protocol):
    """A fitted model seen through one interface.

    ``X`` is always a DataFrame of raw feature columns (as read from the data, before
    any encoding); the predictor checks them against the schema it was trained on.
    Classifiers return class indices from :meth:`predict` (``schema.classes[i]`` is the
    label) and an ``(n_rows, n_classes)`` array from :meth:`predict_proba`.
    """

    schema: Schema

    @property
    def task(self) -> str: ...

    @property
    def feature_names(self) -> list[str]: ...

    def predict(self, X: pd.DataFrame) -> np.ndarray: ...

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray: ...


class BasePredictor(abc.ABC):
    """Shared behaviour of the adapters: schema checks and ``predict`` from probabilities.

    Subclasses implement :meth:`_forward`, which receives a frame already checked
    against the schema and returns probabilities ``(n, n_classes)`` for classifiers or
    values ``(n,)`` for regression, as float64.
    """

    #: Gradient methods (integrated gradients, TCAV, gradient attacks) need this.
    differentiable: bool = False

    def __init__(self, schema: Schema) -> None:
        self.schema = schema

    @property
    def task(self) -> str:
        return self.schema.task

    @property
    def feature_names(self) -> list[str]:
        return self.schema.feature_names

    @property
    def classes(self) -> tuple[str, ...]:
        return self.schema.classes

    @abc.abstractmethod
    def _forward(self, X: pd.DataFrame) -> np.ndarray:
        """Probabilities (classifiers) or values (regression) for checked raw features."""

    def _checked(self, X: pd.DataFrame) -> pd.DataFrame:
        self.schema.check_columns(X)
        return X[self.schema.feature_names]

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        if self.task == "regression":
            raise TypeError("predict_proba is only defined for classifiers; this model does regression. Use predict.")
        return np.asarray(self._forward(self._checked(X)), dtype=np.float64)

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        out = np.asarray(self._forward(self._checked(X)), dtype=np.float64)
        if self.task == "regression":
            return out.reshape(-1)
        return out.argmax(axis=1).astype(np.int64)
