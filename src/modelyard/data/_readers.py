"""Read tables (CSV, Parquet) and IDX arrays, and build tabular data sets from them.

CSV cleaning (``read_table``):

* fields may be padded with spaces (``"a, b"``); whitespace around every string cell
  is stripped, and a column whose values are all numbers once stripped is numeric;
* missing values are the markers pandas treats as missing by default (the empty field,
  ``NA``, ``N/A``, ``NaN``, ``nan``, ``NULL``, ``null``, ``None``, ``<NA>``, ``#N/A`` and
  a few more, see :data:`NA_VALUES`) plus ``?`` (UCI's marker), each matched against
  the whole stripped cell. Any other text, such as ``"none"`` or ``"-"``, is a value.

Parquet files are read as stored: their types and nulls are explicit, so no cleaning
is applied.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import math
import os
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from modelyard.data._download import sha256_file
from modelyard.data._schema import Task, _is_numeric, infer_schema
from modelyard.data._split import check_fractions, split_frame
from modelyard.data._tabular import TabularData, TabularSplit
from modelyard.errors import DataError

__all__ = ["read_table", "read_idx", "from_csv", "from_parquet", "from_frame", "NA_VALUES"]

#: Cell values read as missing in CSV files: pandas' default markers plus UCI's ``?``.
NA_VALUES: frozenset[str] = frozenset(
    {
        "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
        "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "?",
    }
)  # fmt: skip

_CSV_SEPARATORS = {".csv": ",", ".tsv": "\t"}
_COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_PARQUET = (".parquet", ".pq")
_SNIFF_BYTES = 1 << 16  # a NUL byte in the first 64 KiB means binary data, not text


def _kind(path: Path) -> tuple[str, str | None]:
    """``("csv", compression suffix or None)`` or ``("parquet", None)``, from the file name."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _PARQUET:
        return "parquet", None
    compression = suffixes[-1] if suffixes and suffixes[-1] in _COMPRESSIONS else None
    base = suffixes[-2] if compression and len(suffixes) >= 2 else (suffixes[-1] if suffixes else "")
    if base in _CSV_SEPARATORS:
        return base, compression
    raise DataError(
        f"Cannot read {path}: unsupported file type {''.join(path.suffixes) or '(no extension)'!r}. "
        "Use CSV (.csv, .tsv, optionally .gz/.bz2/.xz) or Parquet (.parquet, .pq), renaming the file if needed."
    )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"Data file {path} does not exist (working directory: {Path.cwd()}). Check the path.")
    if not path.is_file():
        raise DataError(f"{path} is not a file. Pass the path of a CSV or Parquet file.")
    if path.stat().st_size == 0:
        raise DataError(f"{path} has no rows: the file is empty (0 bytes). Check that it was written completely.")


def _head(path: Path, compression: str | None) -> bytes:
    opener: Any = _COMPRESSIONS[compression] if compression else open
    try:
        with opener(path, "rb") as fh:
            fh_: IO[bytes] = fh
            return fh_.read(_SNIFF_BYTES)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(
            f"Cannot read {path}: it is not a valid {compression} file ({exc}). Check the file, or rename it "
            f"without {compression} if it is not compressed."
        ) from exc


def _clean_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Strip string cells, turn missing markers into NaN, and make all-number columns numeric."""
    for name in frame.columns:
        s = frame[name]
        if _is_numeric(s) or pd.api.types.is_bool_dtype(s):
            continue
        if not all(isinstance(v, str) for v in s.dropna().head(1000)):
            continue
        stripped = s.str.strip()
        stripped = stripped.mask(stripped.isin(NA_VALUES))
        if stripped.equals(s):
            continue  # nothing padded or missing: pandas already tried a numeric parse
        numbers = pd.to_numeric(stripped, errors="coerce")
        if stripped.notna().any() and numbers.notna().sum() == stripped.notna().sum():
            frame[name] = numbers
        else:
            frame[name] = stripped
    return frame


def _read_csv(path: Path, sep: str, compression: str | None) -> pd.DataFrame:
    head = _head(path, compression)
    if b"\x00" in head:
        raise DataError(
            f"Cannot parse {path} as CSV: it holds binary data, not text. Check the file; if it is Parquet, "
            "name it .parquet."
        )
    if not head.strip():
        raise DataError(f"{path} has no rows: the file holds only blank lines. Check that it was written completely.")
    try:  # checked here, where the byte offset is exact; pandas reports offsets within a chunk
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"Cannot parse {path} as CSV: it is not UTF-8 text (byte {exc.start}: {exc.reason}). Re-save it as UTF-8."
        ) from exc
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            skipinitialspace=True,
            na_values=sorted(NA_VALUES),
            keep_default_na=False,
            low_memory=False,
        )
    except UnicodeDecodeError as exc:
        raise DataError(
            f"Cannot parse {path} as CSV: it is not UTF-8 text ({exc.reason}). Re-save it as UTF-8."
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(
            f"{path} has no rows: it holds no columns or data. Check that it was written completely."
        ) from exc
    except (pd.errors.ParserError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0].replace("Error tokenizing data. C error: ", "")
        raise DataError(
            f"Cannot parse {path} as CSV with separator {sep!r}: {reason}. Check the separator (pass sep=...) "
            "and that every row has the same number of fields."
        ) from exc
    return _clean_strings(frame)


def read_table(path: str | os.PathLike[str], *, sep: str | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame.

    The format comes from the file name: ``.csv`` (comma-separated) and ``.tsv``
    (tab-separated), optionally compressed (``.gz``, ``.bz2``, ``.xz``), or ``.parquet``
    / ``.pq``. CSV files must have a header row. See the module notes for how CSV cells
    are cleaned and which markers mean a missing value.

    Parameters
    ----------
    path : str or path-like
        The file.
    sep : str, optional
        CSV field separator; default ``","`` for ``.csv`` and tab for ``.tsv``.

    Returns
    -------
    DataFrame
        At least one row.

    Raises
    ------
    DataError
        If the file is missing, empty (0 bytes, or a header and no rows), of an
        unsupported type, or cannot be parsed (binary data, wrong encoding, rows with
        more fields than the header, a corrupted Parquet file). The message names the
        file and what to do.
    """
    path = Path(path)
    _check_file(path)
    kind, compression = _kind(path)
    if kind == "parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others for a bad file
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(
                f"Cannot read {path} as Parquet: {reason}. Check that the file is complete and really Parquet "
                "(a CSV file must be named .csv)."
            ) from exc
    else:
        frame = _read_csv(path, sep if sep is not None else _CSV_SEPARATORS[kind], compression)
    if len(frame) == 0:
        raise DataError(
            f"{path} has no rows: it holds only a header ({[str(c) for c in frame.columns]}). "
            "Check that the file was written completely."
        )
    return frame


# -- IDX (MNIST-style) arrays ------------------------------------------------------

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str], *, magic: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed when its name ends in ``.gz``.

    An IDX file starts with a big-endian magic number ``0x0000TTDD`` (``TT`` the element
    type, ``DD`` the number of dimensions), then one big-endian int32 per dimension,
    then the elements in C order. MNIST images have magic 2051 (uint8, 3 dimensions),
    labels 2049 (uint8, 1 dimension).

    Parameters
    ----------
    path : str or path-like
        The file.
    magic : int, optional
        The magic number the file must have.

    Returns
    -------
    ndarray
        In native byte order, with the shape the header gives.

    Raises
    ------
    DataError
        If the file is missing, not valid gzip, has a bad or unexpected magic number,
        or holds a different number of bytes than its header announces.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} does not exist. Check the path.")
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"Cannot read {path}: it is not a valid gzip file ({exc}). Delete it and load it again."
        ) from exc
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic is not None and found != magic:
        raise DataError(
            f"{path} has IDX magic number {found}, expected {magic}: it is not the IDX file it should be. "
            "Delete it and load it again."
        )
    if found is None or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DataError(
            f"{path} is not an IDX file: bad header {raw[:4].hex() or '(empty)'}. Delete it and load it again."
        )
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{path} is truncated: its IDX header announces {ndim} dimensions but ends early.")
    shape = struct.unpack(f">{ndim}I", raw[4:start])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - start != expected:
        raise DataError(
            f"{path} holds {len(raw) - start} data bytes but its IDX header announces shape {shape} "
            f"({expected} bytes): the file is truncated or corrupted. Delete it and load it again."
        )
    array = np.frombuffer(raw, dtype=dtype, offset=start).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


# -- tabular data sets from files or frames ------------------------------------------


def _check_target(
    frame: pd.DataFrame,
    target: str,
    *,
    sensitive: tuple[str, ...],
    drop: tuple[str, ...],
    categorical: tuple[str, ...],
    task: Task | None,
) -> Task:
    """Run infer_schema's checks on the whole frame before splitting; return the task.

    This catches a missing target (the message lists the columns), missing target
    values, a single class and unknown column names before the split, so the error is
    about the data and not about the split. Only one feature column is kept for this
    check (vocabularies come from the train split later), so it costs little.
    """
    dropped = tuple(drop)
    candidates = [(str(c), dt) for c, dt in zip(frame.columns, frame.dtypes) if str(c) not in (target, *dropped)]
    numeric = (c for c, dt in candidates if pd.api.types.is_numeric_dtype(dt))
    keep = next(numeric, candidates[0][0] if candidates else None)
    probe_drop = [str(c) for c in frame.columns if str(c) not in (target, keep)]
    schema = infer_schema(
        frame, target, sensitive=sensitive, drop=(*probe_drop, *drop), categorical=categorical, task=task
    )
    return schema.task


def _build(
    frame: pd.DataFrame,
    *,
    name: str,
    target: str,
    sensitive: Iterable[str],
    drop: Iterable[str],
    categorical: Iterable[str],
    task: Task | None,
    valid: float,
    test: float,
    seed: int,
    sources: dict[str, str],
) -> TabularData:
    sensitive, drop, categorical = tuple(sensitive), tuple(drop), tuple(categorical)
    for what, names in (("sensitive", sensitive), ("drop", drop), ("categorical", categorical)):
        if any(not isinstance(n, str) for n in names):
            raise TypeError(f"`{what}` must be a list of column names; got {names!r}.")
    if isinstance(target, (list, tuple)) or not isinstance(target, str):
        raise TypeError(f"`target` must be one column name (a string); got {target!r}.")
    check_fractions(valid, test)
    task = _check_target(frame, target, sensitive=sensitive, drop=drop, categorical=categorical, task=task)
    train, valid_frame, test_frame = split_frame(frame, target, valid=valid, test=test, seed=seed, task=task)
    # Vocabularies from the train split only: valid and test must not leak into the encoding.
    schema = infer_schema(train, target, sensitive=sensitive, drop=drop, categorical=categorical, task=task)
    return TabularData(
        name=name,
        schema=schema,
        train=TabularSplit(train, schema),
        valid=TabularSplit(valid_frame, schema),
        test=TabularSplit(test_frame, schema),
        sources=sources,
    )


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*_COMPRESSIONS, *_CSV_SEPARATORS, *_PARQUET):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or path.name


def from_frame(
    frame: pd.DataFrame,
    *,
    target: str,
    sensitive: Iterable[str] = (),
    drop: Iterable[str] = (),
    categorical: Iterable[str] = (),
    task: Task | None = None,
    valid: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    name: str = "frame",
) -> TabularData:
    """Build a split :class:`TabularData` from a DataFrame.

    The target is checked on the whole frame (it must exist, have no missing values and,
    for classification, at least two classes); the rows are then split (seeded,
    stratified for classification, see :func:`split_frame`) and the schema, including
    categorical vocabularies, is inferred from the train split only.

    Parameters
    ----------
    frame : DataFrame
        The data; column names are used as strings. It is not modified.
    target : str
        The column to predict.
    sensitive : iterable of str, default=()
        Columns for slicing and fairness analysis; they stay features unless also in ``drop``.
    drop : iterable of str, default=()
        Columns that must not be features (identifiers, leaky columns); they stay in the frames.
    categorical : iterable of str, default=()
        Numeric columns to treat as categorical (codes, zip codes).
    task : {"binary", "multiclass", "regression"}, optional
        Default: inferred from the target (see :func:`infer_schema`).
    valid : float, default=0.1
        Fraction of rows for validation, in (0, 1).
    test : float, default=0.2
        Fraction of rows for test, in [0, 1).
    seed : int, default=0
        Seed of the split.
    name : str, default="frame"
        Name of the data set.

    Returns
    -------
    TabularData
        With empty ``sources`` (there is no file to name).

    Raises
    ------
    DataError
        If the target does not exist, has missing values or a single class, a named
        column does not exist, the frame is empty, or a fraction is out of range.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"`frame` must be a pandas DataFrame; got {type(frame).__name__}.")
    frame = frame.copy()
    frame.columns = [str(c) for c in frame.columns]
    return _build(
        frame, name=name, target=target, sensitive=sensitive, drop=drop, categorical=categorical, task=task,
        valid=valid, test=test, seed=seed, sources={},
    )  # fmt: skip


def from_csv(
    path: str | os.PathLike[str],
    *,
    target: str,
    sensitive: Iterable[str] = (),
    drop: Iterable[str] = (),
    categorical: Iterable[str] = (),
    task: Task | None = None,
    valid: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    name: str | None = None,
    sep: str | None = None,
) -> TabularData:
    """Read a CSV file (see :func:`read_table`) and build a split :class:`TabularData`.

    Parameters are those of :func:`from_frame`, plus:

    Parameters
    ----------
    path : str or path-like
        A ``.csv`` or ``.tsv`` file, optionally compressed (``.gz``, ``.bz2``, ``.xz``).
    name : str, optional
        Default: the file name without its extensions.
    sep : str, optional
        Field separator; default ``","`` (tab for ``.tsv``).

    Returns
    -------
    TabularData
        ``sources`` maps the file name to its SHA-256.
    """
    path = Path(path)
    frame = read_table(path, sep=sep)
    return _build(
        frame, name=name or _stem(path), target=target, sensitive=sensitive, drop=drop, categorical=categorical,
        task=task, valid=valid, test=test, seed=seed, sources={path.name: sha256_file(path)},
    )  # fmt: skip


def from_parquet(
    path: str | os.PathLike[str],
    *,
    target: str,
    sensitive: Iterable[str] = (),
    drop: Iterable[str] = (),
    categorical: Iterable[str] = (),
    task: Task | None = None,
    valid: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    name: str | None = None,
) -> TabularData:
    """Read a Parquet file and build a split :class:`TabularData`.

    Parameters are those of :func:`from_frame`, plus:

    Parameters
    ----------
    path : str or path-like
        A ``.parquet`` or ``.pq`` file.
    name : str, optional
        Default: the file name without its extension.

    Returns
    -------
    TabularData
        ``sources`` maps the file name to its SHA-256.
    """
    path = Path(path)
    frame = read_table(path)
    return _build(
        frame, name=name or _stem(path), target=target, sensitive=sensitive, drop=drop, categorical=categorical,
        task=task, valid=valid, test=test, seed=seed, sources={path.name: sha256_file(path)},
    )  # fmt: skip
