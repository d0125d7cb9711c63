"""Containers for image data: one split, and the train/valid/test triple."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from modelyard.errors import DataError

__all__ = ["ImageSplit", "ImageData"]


@dataclass
class ImageSplit:
    """Images and labels of one split.

    Parameters
    ----------
    x : ndarray of uint8, shape (N, C, H, W)
        Pixels, channels first, as stored (0-255); models scale them.
    y : ndarray of int64, shape (N,)
        Class indices; ``classes[y[i]]`` of the owning :class:`ImageData` is the label.
    """

    x: np.ndarray  # (N, C, H, W) uint8
    y: np.ndarray  # (N,) int64

    def __post_init__(self) -> None:
        if not isinstance(self.x, np.ndarray) or self.x.ndim != 4 or self.x.dtype != np.uint8:
            shape = getattr(self.x, "shape", None)
            dtype = getattr(self.x, "dtype", type(self.x).__name__)
            raise DataError(
                f"Images must be a uint8 array of shape (N, C, H, W); got dtype {dtype} and shape {shape}. "
                "Add a channel axis with x[:, None] for grayscale images."
            )
        if not isinstance(self.y, np.ndarray) or self.y.ndim != 1 or self.y.dtype != np.int64:
            raise DataError(
                f"Labels must be an int64 array of shape (N,); got dtype {getattr(self.y, 'dtype', None)} and "
                f"shape {getattr(self.y, 'shape', None)}. Convert them with y.astype(np.int64)."
            )
        if len(self.x) != len(self.y):
            raise DataError(f"{len(self.x)} images but {len(self.y)} labels; every image needs one label.")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]


@dataclass
class ImageData:
    """An image classification data set split into train, valid and test.

    ``sources`` maps each source file (``"<dataset_dir>/<filename>"``) to its SHA-256.
    """

    name: str
    train: ImageSplit
    valid: ImageSplit
    test: ImageSplit
    classes: tuple[str, ...]  # class names; y == i means classes[i]
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def splits(self) -> dict[str, ImageSplit]:
        return {"train": self.train, "valid": self.valid, "test": self.test}

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return self.train.image_shape
