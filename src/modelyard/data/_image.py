"""Containers for image data: one split, and the train/valid/test triple."""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelyard.errors import DataError

__all__ = ["ImageData", "ImageSplit", "load_image_split", "save_image_split"]


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


#: Fixed timestamp of every member of a saved split: the same images give the same bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def save_image_split(split: ImageSplit, path: str | os.PathLike[str]) -> Path:
    """Write ``split`` as a compressed ``.npz`` (arrays ``x`` and ``y``) that ``np.load`` reads without pickle.

    The bytes depend only on the arrays (fixed member timestamps, deflate level 6), so
    the file's digest identifies the images: a pipeline's cache reuses the steps after it.
    """
    if not isinstance(split, ImageSplit):
        raise TypeError(f"save_image_split needs an ImageSplit; got {type(split).__name__}.")
    path = Path(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for key, array in (("x", split.x), ("y", split.y)):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=6)
    return path


def load_image_split(path: str | os.PathLike[str]) -> ImageSplit:
    """Read a split written by :func:`save_image_split` (``allow_pickle=False``).

    Raises
    ------
    DataError
        The file is missing, not an ``.npz`` with arrays ``x`` and ``y``, or the arrays are
        not uint8 images ``(N, C, H, W)`` with int64 labels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Image split {str(path)!r} does not exist; re-run the data step.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            if not {"x", "y"} <= names:
                raise DataError(f"{str(path)!r} holds arrays {sorted(names)}, not 'x' and 'y'; "
                                "write it with save_image_split.")
            x, y = npz["x"], npz["y"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{str(path)!r} is not a readable .npz image split ({exc}); re-run the data step.") from exc
    return ImageSplit(x, y)
