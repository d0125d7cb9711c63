"""The ONNX Runtime adapter: serve a model exported by :func:`modelyard.compress.export_onnx`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd

from modelyard._cpu import warn_if_saturates
from modelyard.data._schema import Schema, category_strings
from modelyard.errors import ModelFormatError, SchemaMismatchError
from modelyard.models._base import OUTPUT_NAMES, QUANT_KEY, SCHEMA_KEY, BasePredictor

__all__ = ["OnnxPredictor"]

_REEXPORT = "re-export it with modelyard.compress.export_onnx"


class OnnxPredictor(BasePredictor):
    """An ONNX model that takes raw columns, run by ONNX Runtime on the CPU.

    The model must carry its schema in its metadata (as every model written by
    :func:`modelyard.compress.export_onnx` does) and take one input per feature
    column: numeric ones as ``float32 [N, 1]`` (NaN for missing), categorical ones as
    ``string [N, 1]`` (``""`` for missing). It returns ``probabilities [N, n_classes]``
    for classifiers or ``prediction [N]`` for regression.

    Parameters
    ----------
    model : str, os.PathLike or bytes
        Path of an ``.onnx`` file, or the serialized model itself.
    providers : sequence of str, default=("CPUExecutionProvider",)
        ONNX Runtime execution providers, in order of preference.

    Raises
    ------
    ModelFormatError
        If the bytes are not a valid ONNX model, the model has no modelyard schema,
        or its inputs and outputs are not those the schema implies.
    """

    differentiable = False

    def __init__(
        self, model: str | os.PathLike[str] | bytes, *, providers: tuple[str, ...] = ("CPUExecutionProvider",)
    ) -> None:
        # Imported here, not at the top: models is an earlier stage than compress.

        if isinstance(model, (bytes, bytearray)):
            source, where = bytes(model), "the given ONNX bytes"
            self.path: Path | None = None
        else:
            self.path = Path(model)
            if not self.path.is_file():
                raise FileNotFoundError(f"ONNX model {self.path} does not exist; check the path or {_REEXPORT}.")
            source, where = str(self.path), str(self.path)
        try:
            self.session = ort.InferenceSession(source, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelFormatError(
                f"{where} is not a valid ONNX model (truncated or corrupted); {_REEXPORT}."
            ) from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if SCHEMA_KEY not in meta:
            raise ModelFormatError(
                f"{where} has no {SCHEMA_KEY!r} metadata, so its input columns are unknown; {_REEXPORT}."
            )
        try:
            schema = Schema.from_dict(json.loads(meta[SCHEMA_KEY]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFormatError(f"{where} holds an unreadable {SCHEMA_KEY!r} metadata entry; {_REEXPORT}.") from exc
        super().__init__(schema)
        inputs = [i.name for i in self.session.get_inputs()]
        if sorted(inputs) != sorted(schema.feature_names):
            raise ModelFormatError(
                f"{where} takes inputs {inputs} but its schema lists features {schema.feature_names}; {_REEXPORT}."
            )
        wanted = OUTPUT_NAMES[1] if schema.task == "regression" else OUTPUT_NAMES[0]
        outputs = [o.name for o in self.session.get_outputs()]
        if wanted not in outputs:
            raise ModelFormatError(
                f"{where} has outputs {outputs}, not {wanted!r} for a {schema.task} model; {_REEXPORT}."
            )
        self._output = wanted
        self.metadata: dict[str, str] = dict(meta)
        warn_if_saturates(meta.get(QUANT_KEY), where)

    def feeds(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        """The session's inputs for checked raw columns: float32 or string arrays of shape ``(n, 1)``."""
        out: dict[str, np.ndarray] = {}
        for col in self.schema.features:
            values = X[col.name]
            if col.kind == "numeric":
                try:
                    arr = pd.to_numeric(values, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
                except (ValueError, TypeError) as exc:
                    raise SchemaMismatchError(
                        f"Numeric feature {col.name!r} holds non-numeric values ({exc}); "
                        "the model was trained on numbers."
                    ) from exc
                out[col.name] = arr.astype(np.float32).reshape(-1, 1)
            else:
                out[col.name] = category_strings(values).astype(object).reshape(-1, 1)
        return out

    def _forward(self, X: pd.DataFrame) -> np.ndarray:
        if len(X) == 0:
            shape: tuple[int, ...] = (0,) if self.task == "regression" else (0, self.schema.n_classes)
            return np.zeros(shape, dtype=np.float64)
        (result,) = self.session.run([self._output], self.feeds(X))
        result = np.asarray(result, dtype=np.float64)
        return result.reshape(-1) if self.task == "regression" else result

    def __repr__(self) -> str:
        where: Any = str(self.path) if self.path is not None else "<bytes>"
        return f"OnnxPredictor({where!r}, task={self.task!r}, features={len(self.feature_names)})"
