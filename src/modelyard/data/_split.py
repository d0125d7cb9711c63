"""Seeded, stratified train/valid/test splits.

Split sizes are ``round(test * n)`` and ``round(valid * n)`` rows (at least one row for
a non-zero fraction); the train split gets the rest.

Classification targets are split **stratified**: each class is divided among the
splits in proportion to its size (largest-remainder apportionment, so every class is
within one row of its exact share in each split and the split sizes are exact). Every
class keeps at least one row in the train split, so a model never meets a label in
valid or test that it could not have learned (a class with a single row stays in
train). Only if the requested sizes cannot be met under that rule, because nearly every
class has a single row, the split falls back to an unstratified one, with a warning.

Regression targets (and ``stratify=False``) are split by a plain seeded shuffle.

The rows of each split keep their original order. The same data and seed always give
the same split: the only randomness is :func:`numpy.random.default_rng` (PCG64) with
the given seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

from modelyard.data._schema import MAX_CLASSES, Task, _is_numeric
from modelyard.errors import DataError

__all__ = ["check_fractions", "split_frame", "split_indices", "subsample_indices"]


def check_fractions(valid: Any, test: Any) -> tuple[float, float]:
    """Validate split fractions: ``0 < valid < 1``, ``0 <= test < 1`` and ``valid + test < 1``.

    Returns
    -------
    (float, float)
        ``valid`` and ``test`` as floats.

    Raises
    ------
    TypeError
        If a fraction is not a real number.
    DataError
        If a fraction is out of range; the message names it and its value.
    """
    for name, value in (("valid", valid), ("test", test)):
        if isinstance(value, bool) or not isinstance(value, Real):
            raise TypeError(f"`{name}` must be a fraction between 0 and 1; got {type(value).__name__} {value!r}.")
    valid, test = float(valid), float(test)
    if not 0.0 < valid < 1.0:  # also rejects NaN
        raise DataError(
            f"`valid` must be a fraction in (0, 1), got valid={valid!r}. Training stops early on the validation "
            "split, so it cannot be empty; the default is 0.1."
        )
    if not 0.0 <= test < 1.0:
        raise DataError(f"`test` must be a fraction in [0, 1), got test={test!r}.")
    if valid + test >= 1.0:
        raise DataError(
            f"`valid` + `test` must be below 1 to leave rows for training, got valid={valid!r} + test={test!r} "
            f"= {valid + test:g}."
        )
    return valid, test


def _is_classification(y: pd.Series) -> bool:
    # The same rule as infer_schema: non-numeric, or integral with at most MAX_CLASSES values.
    if not _is_numeric(y):
        return True
    values = y.dropna().to_numpy(dtype=float)
    return y.nunique() <= MAX_CLASSES and bool(np.all(np.mod(values, 1) == 0))


def _apportion(weights: np.ndarray, total: int, caps: np.ndarray) -> np.ndarray | None:
    """Split ``total`` among classes in proportion to ``weights``, none above its cap.

    Largest-remainder (Hamilton) apportionment: each class first gets the floor of its
    exact quota, then the rows left go one at a time to the classes with the largest
    remainders (ties to the lower class index). Returns None if the caps make ``total``
    unreachable.
    """
    if total > caps.sum():
        return None
    quota = total * weights / weights.sum()
    counts = np.minimum(np.floor(quota).astype(np.int64), caps)
    order = np.lexsort((np.arange(len(weights)), -(quota - counts)))  # largest remainder first
    short = total - int(counts.sum())
    while short > 0:
        for c in order:
            if short == 0:
                break
            if counts[c] < caps[c]:
                counts[c] += 1
                short -= 1
    return counts


def _split_sizes(n: int, valid: float, test: float) -> tuple[int, int]:
    n_test = math.floor(test * n + 0.5)
    n_valid = max(1, math.floor(valid * n + 0.5))
    if test > 0:
        n_test = max(1, n_test)
    if n - n_valid - n_test < 1:
        raise DataError(
            f"Only {n} rows: too few to split into train, valid (valid={valid:g}) and test (test={test:g}); "
            "every split needs at least one row. Provide more rows or lower the fractions."
        )
    return n_valid, n_test


def split_indices(
    y: pd.Series | np.ndarray | Sequence[Any],
    *,
    valid: float,
    test: float,
    seed: int,
    stratify: bool = True,
    task: Task | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/valid/test positions for a target, stratified for classification.

    Parameters
    ----------
    y : Series, ndarray or sequence of length n
        The target values.
    valid : float
        Fraction of rows for the validation split, in (0, 1).
    test : float
        Fraction of rows for the test split, in [0, 1); 0 gives an empty test split.
    seed : int
        Seed of the random generator; the same seed always gives the same split.
    stratify : bool, default=True
        Stratify on ``y`` when it is a classification target.
    task : {"binary", "multiclass", "regression"}, optional
        The task, if known; by default inferred from ``y`` as :func:`infer_schema` does.

    Returns
    -------
    train, valid, test : ndarray of int64
        Row positions of each split, ascending, disjoint, together ``0 .. n-1``.
    """
    valid, test = check_fractions(valid, test)
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise TypeError(f"`seed` must be a non-negative integer; got {seed!r}.")
    y = pd.Series(y, copy=False) if not isinstance(y, pd.Series) else y
    n = len(y)
    n_valid, n_test = _split_sizes(n, valid, test)
    rng = np.random.default_rng(int(seed))

    classification = (task != "regression") if task is not None else _is_classification(y)
    if stratify and classification:
        codes, _ = pd.factorize(y, use_na_sentinel=False)
        counts = np.bincount(codes)
        test_counts = _apportion(counts, n_test, caps=counts - 1)
        valid_counts = None
        if test_counts is not None:
            left = counts - test_counts
            valid_counts = _apportion(left, n_valid, caps=left - 1)
        if valid_counts is not None:
            parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
            by_class = np.argsort(codes, kind="stable")
            starts = np.concatenate([[0], np.cumsum(counts)])
            for c in range(len(counts)):
                rows = rng.permutation(by_class[starts[c] : starts[c + 1]])
                t, v = test_counts[c], valid_counts[c]
                parts[2].append(rows[:t])
                parts[1].append(rows[t : t + v])
                parts[0].append(rows[t + v :])
            return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)  # type: ignore[return-value]
        warnings.warn(
            f"Cannot stratify {n} rows over {len(counts)} classes with valid={valid:g}, test={test:g} while keeping "
            "every class in train (too many classes with a single row); splitting without stratification.",
            stacklevel=2,
        )
    rows = rng.permutation(n)
    test_rows, valid_rows, train_rows = rows[:n_test], rows[n_test : n_test + n_valid], rows[n_test + n_valid :]
    return tuple(np.sort(r).astype(np.int64) for r in (train_rows, valid_rows, test_rows))  # type: ignore[return-value]


def split_frame(
    frame: pd.DataFrame,
    target: str,
    *,
    valid: float,
    test: float,
    seed: int,
    stratify: bool = True,
    task: Task | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split a frame into seeded train, valid and test frames.

    Classification targets are stratified (see the module notes: every class keeps at
    least one row in train; a fallback to an unstratified split warns). Regression
    targets are shuffled.

    Parameters
    ----------
    frame : DataFrame
        The rows to split.
    target : str
        The target column, used to stratify.
    valid : float
        Fraction of rows for validation, in (0, 1).
    test : float
        Fraction of rows for test, in [0, 1).
    seed : int
        Seed; the same frame and seed always give the same split.
    stratify : bool, default=True
        Stratify classification targets.
    task : {"binary", "multiclass", "regression"}, optional
        The task, if known; by default inferred from the target.

    Returns
    -------
    train, valid, test : DataFrame
        Copies of the rows, in their original order, with a fresh ``RangeIndex``.

    Raises
    ------
    DataError
        If the target column does not exist, a fraction is out of range, or there are too few rows.
    """
    if target not in frame.columns:
        raise DataError(
            f"Target column {target!r} does not exist. Columns are: {[str(c) for c in frame.columns]}. "
            "Set `target` to one of them."
        )
    idx = split_indices(frame[target], valid=valid, test=test, seed=seed, stratify=stratify, task=task)
    return tuple(frame.iloc[i].reset_index(drop=True) for i in idx)  # type: ignore[return-value]


def subsample_indices(y: pd.Series | np.ndarray | Sequence[Any], n: int, *, seed: int,
                      stratify: bool = True) -> np.ndarray:
    """At most ``n`` seeded row positions of ``y``, ascending; stratified on ``y`` when asked.

    With ``stratify``, each class keeps its share of the ``n`` rows (largest-remainder
    apportionment, as the splits are made), so a small sample still holds every class in
    proportion. ``n >= len(y)`` gives every position.

    Raises
    ------
    DataError
        If ``n`` is not a positive integer.
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 1:
        raise DataError(f"A subsample needs a positive number of rows; got {n!r}.")
    y = pd.Series(y, copy=False) if not isinstance(y, pd.Series) else y
    if n >= len(y):
        return np.arange(len(y), dtype=np.int64)
    rng = np.random.default_rng(int(seed))
    if not stratify:
        return np.sort(rng.choice(len(y), size=int(n), replace=False)).astype(np.int64)
    codes, _ = pd.factorize(y, use_na_sentinel=False)
    counts = np.bincount(codes)
    take = _apportion(counts, int(n), caps=counts)
    assert take is not None  # n < len(y) == counts.sum()
    by_class = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    parts = [rng.permutation(by_class[starts[c] : starts[c + 1]])[: take[c]] for c in range(len(counts))]
    return np.sort(np.concatenate(parts)).astype(np.int64)
