"""Saving and loading models: torch weights as safetensors, never pickles; ONNX files as they are.

A torch model is stored as ONE ``.safetensors`` file: every parameter and buffer of
its module, plus string metadata that is enough to rebuild the module:

========================  ===============================================================
``format``                ``"modelyard"``
``family``                the model family (``"mlp"``), looked up in :data:`MODEL_FAMILIES`
``config``                the family config as JSON (``MLPConfig.model_dump_json()``)
``schema``                the training schema as JSON (:meth:`Schema.to_dict`)
``modelyard_version``     the version that wrote the file
``weights_sha256``        a digest of the tensors (names, dtypes, shapes, bytes)
========================  ===============================================================

safetensors validates the header and the byte ranges, but a flipped byte inside the
tensor data would load silently; the digest catches it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from pydantic import ValidationError
from safetensors import safe_open

from modelyard._registry import Registry
from modelyard.data._schema import Schema
from modelyard._atomic import atomic_write_bytes
from modelyard.errors import ModelFormatError
from modelyard.models._base import Predictor
from modelyard.models._lattice import CalibratedLattice
from modelyard.models._mlp import TabularMLP, TabularModule
from modelyard.models._onnx import OnnxPredictor
from modelyard.models._torch import TorchPredictor

__all__ = ["MODEL_FAMILIES", "save_torch", "load_predictor", "atomic_write_bytes"]

#: Torch model families by the name stored in saved files.
MODEL_FAMILIES: Registry[type[TabularModule]] = Registry("model family", TabularModule)
MODEL_FAMILIES.register("mlp")(TabularMLP)
MODEL_FAMILIES.register("lattice")(CalibratedLattice)

FORMAT = "modelyard"
#: The family name stored for image classifiers (:class:`~modelyard.models.ImagePredictor`).
IMAGE_FAMILY = "image"
_META_KEYS = ("format", "family", "config", "schema", "modelyard_version", "weights_sha256")
_RETRAIN = "re-run the training step to write it again"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_torch(predictor: TorchPredictor, path: str | os.PathLike[str]) -> Path:
    """Save a :class:`TorchPredictor` as one ``.safetensors`` file, atomically.

    Parameters
    ----------
    predictor : TorchPredictor
        Its module's family must be registered in :data:`MODEL_FAMILIES`.
    path : str or os.PathLike
        Destination; must end in ``.safetensors``. Missing folders are created.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    from modelyard.models._image import ImagePredictor

    if not isinstance(predictor, (TorchPredictor, ImagePredictor)):
        raise TypeError(
            f"save_torch saves a TorchPredictor or ImagePredictor; got {type(predictor).__name__}. Export others to ONNX."
        )
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_torch writes .safetensors files; got {str(path)!r}. Name it e.g. 'model.safetensors'.")
    if isinstance(predictor, ImagePredictor):
        info = {"classes": list(predictor.classes), "image_shape": list(predictor.image_shape)}
        return _write(predictor.module, path, IMAGE_FAMILY, predictor.config.model_dump_json(), info)
    family = predictor.family
    if family not in MODEL_FAMILIES or not isinstance(predictor.module, MODEL_FAMILIES.get(family)):
        raise ValueError(
            f"Model family {family!r} ({type(predictor.module).__name__}) is not registered in MODEL_FAMILIES "
            f"(known: {MODEL_FAMILIES.names()}); register it so the file can be loaded again."
        )
    config_class = MODEL_FAMILIES.get(family).config_class
    if not isinstance(predictor.config, config_class):
        raise ValueError(
            f"The predictor's config must be a {config_class.__name__} to be saved; "
            f"got {type(predictor.config).__name__}."
        )
    return _write(predictor.module, path, family, predictor.config.model_dump_json(), predictor.schema.to_dict())


def _write(module: torch.nn.Module, path: Path, family: str, config_json: str, schema: dict) -> Path:
    from modelyard import __version__

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "family": family,
        "config": config_json,
        "schema": json.dumps(schema, sort_keys=True),
        "modelyard_version": __version__,
        "weights_sha256": _digest(tensors),
    }
    return atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def load_predictor(path: str | os.PathLike[str]) -> Predictor:
    """Load a model saved by :func:`save_torch` (``.safetensors``) or exported to ONNX (``.onnx``).

    Weights are read with safetensors only: nothing is unpickled.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFormatError
        If the file is truncated, corrupted or not a modelyard model, or its tensors
        do not match its config. The one-line message names the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file {path} does not exist; check the path or {_RETRAIN}.")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _load_onnx(path)
    if suffix != ".safetensors":
        raise ModelFormatError(
            f"Cannot load {path}: expected a .safetensors (torch weights) or .onnx file, "
            f"got {suffix or 'no suffix'!r}; "
            "save with modelyard.models.save_torch or modelyard.compress.export_onnx."
        )
    return _load_torch(path)


def _load_torch(path: Path) -> TorchPredictor:
    unreadable = f"{path} is not a readable safetensors file (truncated or corrupted); {_RETRAIN}."
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises SafetensorError, OSError or ValueError
        raise ModelFormatError(unreadable) from exc
    missing = [k for k in _META_KEYS if k not in metadata]
    if missing or metadata["format"] != FORMAT:
        what = f"missing {missing}" if missing else f"format {metadata['format']!r}"
        raise ModelFormatError(
            f"{path} is not a modelyard model file ({what} in its metadata); "
            f"save it with modelyard.models.save_torch, or {_RETRAIN}."
        )
    family = metadata["family"]
    if family == IMAGE_FAMILY:
        return _load_image(path, metadata, unreadable)
    if family not in MODEL_FAMILIES:
        raise ModelFormatError(
            f"{path} holds model family {family!r}, unknown to this modelyard (known: {MODEL_FAMILIES.names()}); "
            f"upgrade modelyard, or {_RETRAIN}."
        )
    cls = MODEL_FAMILIES.get(family)
    try:
        config = cls.config_class.model_validate_json(metadata["config"])
        schema = Schema.from_dict(json.loads(metadata["schema"]))
    except (ValidationError, ValueError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"{path} has an invalid config or schema in its metadata; {_RETRAIN}.") from exc
    tensors = _read_tensors(path, metadata, unreadable)
    module = cls.build(schema, config)
    _load_state(module, tensors, path, family)
    return TorchPredictor(module, schema, config=config)


def _read_tensors(path: Path, metadata: dict[str, str], unreadable: str) -> dict[str, torch.Tensor]:
    try:
        tensors = safetensors.torch.load_file(str(path))
    except Exception as exc:
        raise ModelFormatError(unreadable) from exc
    if _digest(tensors) != metadata["weights_sha256"]:
        raise ModelFormatError(
            f"{path} is corrupted: its tensors do not match the checksum recorded when it was saved; {_RETRAIN}."
        )
    return tensors


def _load_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path, family: str) -> None:
    """Load ``tensors`` into ``module`` after checking names, shapes and dtypes (one clear error)."""
    expected = module.state_dict()
    problems = [f"missing {k!r}" for k in expected if k not in tensors]
    problems += [f"unexpected {k!r}" for k in tensors if k not in expected]
    problems += [
        f"{k!r} is {tuple(t.shape)} {t.dtype}, expected {tuple(expected[k].shape)} {expected[k].dtype}"
        for k, t in tensors.items()
        if k in expected and (t.shape != expected[k].shape or t.dtype != expected[k].dtype)
    ]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ModelFormatError(f"{path} holds tensors that do not match its {family} config ({shown}); {_RETRAIN}.")
    module.load_state_dict(tensors, strict=True)
    module.eval()


def _load_image(path: Path, metadata: dict[str, str], unreadable: str) -> Any:
    from modelyard.models._config import ImageNetConfig
    from modelyard.models._image import ImageNet, ImagePredictor

    try:
        config = ImageNetConfig.model_validate_json(metadata["config"])
        info = json.loads(metadata["schema"])
        classes, shape = list(info["classes"]), tuple(int(v) for v in info["image_shape"])
    except (ValidationError, ValueError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"{path} has an invalid config or image info in its metadata; {_RETRAIN}.") from exc
    tensors = _read_tensors(path, metadata, unreadable)
    module = ImageNet(shape, len(classes), config)
    _load_state(module, tensors, path, IMAGE_FAMILY)
    return ImagePredictor(module, classes, config)


def _load_onnx(path: Path) -> Any:
    """An :class:`OnnxPredictor` (tabular) or :class:`OnnxImagePredictor`, by the model's metadata."""
    from modelyard.models._image import IMAGE_KEY, OnnxImagePredictor

    try:
        import onnx

        keys = {p.key for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:  # noqa: BLE001 - not parseable: OnnxPredictor raises the clear error
        keys = set()
    return OnnxImagePredictor(path) if IMAGE_KEY in keys else OnnxPredictor(path)
