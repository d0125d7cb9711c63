"""ImageSplit / ImageData containers and the IDX reader."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from modelyard.data import ImageData, ImageSplit, read_idx
from modelyard.errors import DataError


def _idx(array: np.ndarray, type_code: int) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_image_split_and_data() -> None:
    x = np.zeros((4, 1, 2, 3), np.uint8)
    y = np.arange(4, dtype=np.int64) % 2
    split = ImageSplit(x, y)
    data = ImageData("toy", split, split, split, classes=("a", "b"), sources={"toy/f": "0" * 64})
    assert len(split) == 4 and split.image_shape == (1, 2, 3)
    assert data.n_classes == 2 and data.image_shape == (1, 2, 3) and list(data.splits) == ["train", "valid", "test"]


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((4, 2, 3), np.uint8), np.zeros(4, np.int64),
         "Images must be a uint8 array of shape (N, C, H, W); got dtype uint8 and shape (4, 2, 3). "
         "Add a channel axis with x[:, None] for grayscale images."),
        (np.zeros((4, 1, 2, 3), np.float32), np.zeros(4, np.int64),
         "Images must be a uint8 array of shape (N, C, H, W); got dtype float32 and shape (4, 1, 2, 3). "
         "Add a channel axis with x[:, None] for grayscale images."),
        (np.zeros((4, 1, 2, 3), np.uint8), np.zeros(4, np.uint8),
         "Labels must be an int64 array of shape (N,); got dtype uint8 and shape (4,). "
         "Convert them with y.astype(np.int64)."),
        (np.zeros((4, 1, 2, 3), np.uint8), np.zeros(3, np.int64),
         "4 images but 3 labels; every image needs one label."),
    ],
)  # fmt: skip
def test_image_split_rejects_bad_arrays(x: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(DataError) as info:
        ImageSplit(x, y)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("dtype", "code"), [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D),
                        (np.float64, 0x0E)]
)  # fmt: skip
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path: Path, dtype: type, code: int, compress: bool) -> None:
    array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    raw = _idx(array, code)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    got = read_idx(path, magic=(code << 8) | 3)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)
    got[0, 0, 0] = 1  # writable


def test_read_idx_errors(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(_idx(labels, 0x08)))
    with pytest.raises(DataError) as info:
        read_idx(path, magic=2051)
    assert str(info.value) == (
        f"{path} has IDX magic number 2049, expected 2051: it is not the IDX file it should be. "
        "Delete it and load it again."
    )

    path.write_bytes(gzip.compress(_idx(labels, 0x08)[:-1]))  # one byte short
    with pytest.raises(DataError) as info:
        read_idx(path, magic=2049)
    assert str(info.value) == (
        f"{path} holds 9 data bytes but its IDX header announces shape (10,) (10 bytes): the file is truncated or "
        "corrupted. Delete it and load it again."
    )

    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"is not a valid gzip file \(Not a gzipped file"):
        read_idx(path)

    path.write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(DataError, match=r"is not an IDX file: bad header 01020304\. Delete it and load it again\.$"):
        read_idx(path)

    with pytest.raises(DataError, match=r"IDX file .*nothing\.gz does not exist"):
        read_idx(tmp_path / "nothing.gz")
