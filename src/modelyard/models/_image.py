"""Image classifiers: an MLP on the pixels and a small CNN, their predictor, and their ONNX predictor.

Every image module takes float32 pixels ``(N, C, H, W)`` scaled to ``[0, 1]`` and
standardizes them itself with the training set's per-channel mean and standard
deviation (buffers), so a saved or exported model needs nothing but the pixels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelyard._cpu import warn_if_saturates
from modelyard.data._image import ImageSplit
from modelyard.errors import ModelFormatError, SchemaMismatchError
from modelyard.models._base import QUANT_KEY
from modelyard.models._config import ImageNetConfig

__all__ = ["IMAGE_KEY", "ImageNet", "ImagePredictor", "OnnxImagePredictor", "as_pixels"]

#: ONNX metadata key holding ``{"classes": [...], "image_shape": [C, H, W]}``.
IMAGE_KEY = "modelyard.image"
#: The ONNX input of an image model: float32 ``[N, C, H, W]`` in ``[0, 1]``.
IMAGE_INPUT = "image"


class ImageNet(nn.Module):
    """The image classifier of an :class:`ImageNetConfig`.

    Layout: ``features`` (cnn: ``[Conv2d, ReLU, MaxPool2d(2)]`` per stage; mlp: empty),
    ``Flatten``, ``body`` (``[Linear, ReLU, Dropout]`` per hidden size), ``head`` (Linear
    to the classes). Pruning and quantization address the layers by these names.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)``.
    n_classes : int
    config : ImageNetConfig
    mean, std : sequence of float or None
        Per-channel statistics of the training pixels (in ``[0, 1]`` units); 0 and 1 if None.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        n_classes: int,
        config: ImageNetConfig,
        mean: Any = None,
        std: Any = None,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape = (int(c), int(h), int(w))
        self.register_buffer("mean", torch.as_tensor(np.zeros(c) if mean is None else mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.ones(c) if std is None else std, dtype=torch.float32))
        layers: list[nn.Module] = []
        if config.arch == "cnn":
            channels = c
            for out in config.channels:
                if h < 2 or w < 2:
                    raise ValueError(
                        f"Image of {image_shape} is too small for {len(config.channels)} conv stages "
                        "(each halves height and width); use fewer channels entries."
                    )
                layers += [nn.Conv2d(channels, out, config.kernel_size, padding=config.kernel_size // 2),
                           nn.ReLU(), nn.MaxPool2d(2)]
                channels, h, w = out, h // 2, w // 2
            width = channels * h * w
        else:
            width = c * h * w
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        body: list[nn.Module] = []
        for size in config.hidden_sizes:
            body += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(config.dropout)]
            width = size
        self.body = nn.Sequential(*body)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes)`` of pixels ``(N, C, H, W)`` in ``[0, 1]``."""
        z = (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)  # (N, C, H, W)
        return self.head(self.body(self.flatten(self.features(z))))


def as_pixels(images: Any, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Float32 pixels ``(N, C, H, W)`` in ``[0, 1]`` from uint8 or float images, or an :class:`ImageSplit`.

    Accepts ``(N, C, H, W)`` or, for one channel, ``(N, H, W)``; uint8 is divided by 255,
    floats are taken as already in ``[0, 1]``.

    Raises
    ------
    SchemaMismatchError
        If the images do not have the model's shape.
    """
    x = images.x if isinstance(images, ImageSplit) else images
    x = np.asarray(x)
    if x.ndim == 3 and image_shape[0] == 1:
        x = x[:, None]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise SchemaMismatchError(
            f"The model takes images of shape (N, {', '.join(map(str, image_shape))}); got {x.shape}. "
            "Pass a uint8 array (N, C, H, W) of the training image size."
        )
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.to(torch.float32).div_(255.0) if x.dtype == np.uint8 else t.to(torch.float32)


class ImagePredictor:
    """A trained :class:`ImageNet` with its class names.

    Parameters
    ----------
    module : ImageNet
    classes : sequence of str
    config : ImageNetConfig
    """

    task = "multiclass"
    differentiable = True
    family = "image"

    def __init__(self, module: ImageNet, classes: Any, config: ImageNetConfig, *, batch_size: int = 1024) -> None:
        self.module = module
        self.classes = tuple(str(c) for c in classes)
        self.config = config
        self.batch_size = batch_size
        self.image_shape = module.image_shape

    def predict_proba(self, images: Any) -> np.ndarray:
        """Class probabilities ``(N, n_classes)`` (float64)."""
        x = as_pixels(images, self.image_shape)
        was_training = self.module.training
        self.module.eval()
        outs = []
        try:
            with torch.inference_mode():
                for lo in range(0, len(x), self.batch_size):
                    outs.append(torch.softmax(self.module(x[lo : lo + self.batch_size]), dim=1))
        finally:
            self.module.train(was_training)
        if not outs:
            return np.zeros((0, len(self.classes)))
        return torch.cat(outs).numpy().astype(np.float64)

    def predict(self, images: Any) -> np.ndarray:
        """Class indices ``(N,)`` (``classes[i]`` is the label)."""
        return self.predict_proba(images).argmax(axis=1)

    def __repr__(self) -> str:
        return f"ImagePredictor(arch={self.config.arch!r}, classes={len(self.classes)}, image_shape={self.image_shape})"


class OnnxImagePredictor:
    """An exported image model run by ONNX Runtime (input ``image`` float32 ``[N, C, H, W]`` in ``[0, 1]``).

    Parameters
    ----------
    model : path or bytes
        An ONNX file written by :func:`modelyard.compress.export_onnx` for an image model
        (or by a compression step), carrying :data:`IMAGE_KEY` metadata.

    Raises
    ------
    ModelFormatError
        Not an ONNX model, or not an image model written by modelyard.
    """

    task = "multiclass"
    differentiable = False

    def __init__(self, model: str | os.PathLike[str] | bytes, *, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort

        if isinstance(model, (bytes, bytearray)):
            source, where, self.path = bytes(model), "the given ONNX bytes", None
        else:
            self.path = Path(model)
            if not self.path.is_file():
                raise FileNotFoundError(f"ONNX model {self.path} does not exist; check the path.")
            source, where = str(self.path), str(self.path)
        try:
            self.session = ort.InferenceSession(source, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelFormatError(f"{where} is not a valid ONNX model (truncated or corrupted).") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            info = json.loads(meta[IMAGE_KEY])
            self.classes = tuple(info["classes"])
            self.image_shape = tuple(int(v) for v in info["image_shape"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelFormatError(
                f"{where} is not a modelyard image model (no readable {IMAGE_KEY!r} metadata); "
                "export it with modelyard.compress.export_onnx."
            ) from exc
        names = [i.name for i in self.session.get_inputs()]
        if names != [IMAGE_INPUT]:
            raise ModelFormatError(f"{where} takes inputs {names}, not [{IMAGE_INPUT!r}]; re-export it.")
        warn_if_saturates(meta.get(QUANT_KEY), where)

    def feeds(self, images: Any) -> dict[str, np.ndarray]:
        """The session's input for images (uint8 or floats in ``[0, 1]``)."""
        return {IMAGE_INPUT: as_pixels(images, self.image_shape).numpy()}

    def predict_proba(self, images: Any) -> np.ndarray:
        (out,) = self.session.run(["probabilities"], self.feeds(images))
        return np.asarray(out, dtype=np.float64)

    def predict(self, images: Any) -> np.ndarray:
        return self.predict_proba(images).argmax(axis=1)

    def __repr__(self) -> str:
        return f"OnnxImagePredictor({str(self.path) if self.path else '<bytes>'!r}, classes={len(self.classes)})"
