"""Models: the Predictor protocol, adapters (torch, scikit-learn, ONNX Runtime) and model families.

Names load on first use, so ``import modelyard.models`` (and spec validation, which
needs only the configs) does not import torch or scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelyard.models._base import OUTPUT_NAMES, SCHEMA_KEY, BasePredictor, Predictor  # noqa: F401 - re-exported
from modelyard.models._config import GBMConfig, ImageNetConfig, LatticeConfig, MLPConfig  # noqa: F401 - re-exported

_LAZY = {
    "fit_gbm": "_gbm",
    "MODEL_FAMILIES": "_io",
    "load_predictor": "_io",
    "save_torch": "_io",
    "TabularMLP": "_mlp",
    "TabularModule": "_mlp",
    "OnnxPredictor": "_onnx",
    "SklearnPredictor": "_sklearn",
    "encode_matrix": "_sklearn",
    "encoded_feature_names": "_sklearn",
    "TorchPredictor": "_torch",
    "CalibratedLattice": "_lattice",
    "ImageNet": "_image",
    "ImagePredictor": "_image",
    "OnnxImagePredictor": "_image",
}

__all__ = sorted(["BasePredictor", "GBMConfig", "ImageNetConfig", "LatticeConfig", "MLPConfig", "OUTPUT_NAMES", "Predictor", "SCHEMA_KEY", *_LAZY])

if TYPE_CHECKING:  # pragma: no cover
    from modelyard.models._gbm import fit_gbm  # noqa: F401
    from modelyard.models._io import MODEL_FAMILIES, load_predictor, save_torch  # noqa: F401
    from modelyard.models._mlp import TabularMLP, TabularModule  # noqa: F401
    from modelyard.models._onnx import OnnxPredictor  # noqa: F401
    from modelyard.models._sklearn import SklearnPredictor, encode_matrix, encoded_feature_names  # noqa: F401
    from modelyard.models._torch import TorchPredictor  # noqa: F401
    from modelyard.models._lattice import CalibratedLattice  # noqa: F401
    from modelyard.models._image import ImageNet, ImagePredictor, OnnxImagePredictor  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelyard.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"modelyard.models.{module}"), name)
    globals()[name] = value
    return value
