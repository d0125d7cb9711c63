"""Slice specs, and the integer codes that put every row in one group of every slice.

A slice is one or more *parts*, crossed: a column's values (``"sex"``), numeric buckets
of a column (given edges or quantiles), or a named predicate (``{"name": "young",
"where": "age < 30"}``). Each part gives every row an id; the ids of all parts of all
slices together define the row's *cell* (the finest partition the slices induce). Sums
are kept per cell, and the groups of each slice are unions of cells, so one pass over
the rows serves every slice, and the statistics of any chunk of rows merge with those
of another by remapping cell ids. Ids are stable across chunks: a value first seen in
the tenth chunk gets a new id then, and the display order (values sorted, missing
last) is settled only when results are extracted.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from modelyard.data._schema import category_strings
from modelyard.errors import DataError

__all__ = [
    "CROSS",
    "MISSING",
    "CellCoder",
    "Part",
    "Slice",
    "bucket_labels",
    "parse_slices",
    "quantile_edges",
]

#: Group label of the rows whose slice value is missing.
MISSING = "(missing)"
#: Joins the column names and the values of a cross: ``"sex × race"``, ``"Female × White"``.
CROSS = " × "

_UNKNOWN_COLUMN = "Slice column {column!r} (in slices[{index}]) does not exist. Columns are: {columns}. {hint}"
_BAD_SLICE = (
    "slices[{index}] must be a column name, a tuple of column names (a cross), "
    '{{"feature": name, "buckets": [edges...]}}, {{"feature": name, "quantiles": q}} or '
    '{{"name": name, "where": predicate}}; got {value!r}.'
)
_KEYS = (
    'slices[{index}] must have exactly the keys "feature" and "buckets" (edges), "feature" and "quantiles", '
    'or "name" and "where" (a predicate); got keys {keys}.'
)


@dataclass(frozen=True)
class Part:
    """One component of a slice.

    Attributes
    ----------
    column : str
        The column (or, for a predicate, the name the user gave it).
    buckets : tuple of float or None
        Bucket edges; for a quantile part, the edges computed from the data.
    quantiles : tuple of float or None
        Probabilities in ``(0, 1)`` whose quantiles are the edges.
    where : str or callable or None
        A pandas expression (``"age < 30 and sex == 'Female'"``) or a callable
        ``fn(frame) -> boolean mask``.
    """

    column: str
    buckets: tuple[float, ...] | None = None
    quantiles: tuple[float, ...] | None = None
    where: str | Callable[[pd.DataFrame], Any] | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity of the part across slices (the same column bucketed twice is one part)."""
        where = self.where if isinstance(self.where, str) or self.where is None else ("callable", id(self.where))
        return (self.column, self.buckets, self.quantiles, where)

    @property
    def resolved(self) -> bool:
        """False for a quantile part whose edges are not computed yet."""
        return self.quantiles is None or self.buckets is not None


@dataclass(frozen=True)
class Slice:
    """A named slice: its parts, crossed."""

    name: str
    parts: tuple[Part, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description: name, features, and buckets/quantiles/where when used."""
        out: dict[str, Any] = {"name": self.name, "features": [p.column for p in self.parts]}
        buckets = {p.column: list(p.buckets) for p in self.parts if p.buckets is not None}
        if buckets:
            out["buckets"] = buckets
        quantiles = {p.column: list(p.quantiles) for p in self.parts if p.quantiles is not None}
        if quantiles:
            out["quantiles"] = quantiles
        where = {
            p.column: p.where if isinstance(p.where, str) else getattr(p.where, "__name__", repr(p.where))
            for p in self.parts
            if p.where is not None
        }
        if where:
            out["where"] = where
        return out


# -- parsing ---------------------------------------------------------------------------------
def _edges(values: Any, index: int, what: str) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"slices[{index}].{what} must be a non-empty list of increasing numbers; got {values!r}.")
    out = []
    for b in values:
        if isinstance(b, bool) or not isinstance(b, (int, float, np.integer, np.floating)) or not math.isfinite(b):
            raise ValueError(f"slices[{index}].{what} must hold finite numbers; got {b!r} in {list(values)}.")
        out.append(float(b))
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError(f"slices[{index}].{what} must be strictly increasing; got {list(values)}.")
    return tuple(out)


def _quantiles(q: Any, index: int) -> tuple[float, ...]:
    if isinstance(q, (int, np.integer)) and not isinstance(q, bool):
        if q < 2:
            raise ValueError(f"slices[{index}].quantiles must be at least 2 (buckets); got {q}.")
        return tuple(i / int(q) for i in range(1, int(q)))
    probs = _edges(q, index, "quantiles")
    if probs[0] <= 0.0 or probs[-1] >= 1.0:
        raise ValueError(
            f"slices[{index}].quantiles must be a bucket count (4 for quartiles) or probabilities strictly "
            f"between 0 and 1; got {list(q)}."
        )
    return probs


def _parse_part(item: Any, index: int) -> Part:
    if isinstance(item, str):
        if not item:
            raise ValueError(f"slices[{index}] names an empty column; give a column name.")
        return Part(item)
    if isinstance(item, Mapping):
        keys = set(item)
        if keys == {"feature", "buckets"} or keys == {"feature", "quantiles"}:
            feature = item["feature"]
            if not isinstance(feature, str) or not feature:
                raise TypeError(f"slices[{index}].feature must be a column name (a string); got {feature!r}.")
            if "buckets" in keys:
                return Part(feature, buckets=_edges(item["buckets"], index, "buckets"))
            return Part(feature, quantiles=_quantiles(item["quantiles"], index))
        if keys == {"name", "where"}:
            name, where = item["name"], item["where"]
            if not isinstance(name, str) or not name:
                raise TypeError(f"slices[{index}].name must be a non-empty string naming the predicate; got {name!r}.")
            if not (isinstance(where, str) and where.strip()) and not callable(where):
                raise TypeError(
                    f"slices[{index}].where must be a pandas expression (a string such as \"age < 30\") or a "
                    f"callable fn(frame) -> boolean mask; got {where!r}."
                )
            return Part(name, where=where)
        raise ValueError(_KEYS.format(index=index, keys=sorted(map(str, item))))
    raise TypeError(_BAD_SLICE.format(index=index, value=item))


def parse_slices(slices: Any) -> list[Slice]:
    """Validate slice specs; ``None`` means no slices.

    Raises
    ------
    TypeError, ValueError
        On a malformed spec; the message names ``slices[i]``.
    """
    if slices is None:
        return []
    if isinstance(slices, (str, Mapping)):
        raise TypeError(
            f"slices must be a list of slice specs; got {slices!r}. "
            f"It should probably be a list containing it: slices=[{slices!r}]."
        )
    out: list[Slice] = []
    where: dict[str, int] = {}
    for index, item in enumerate(slices):
        if isinstance(item, (tuple, list)):
            if len(item) == 0:
                raise ValueError(f"slices[{index}] is an empty cross; name at least one column.")
            parts = tuple(_parse_part(p, index) for p in item)
        else:
            parts = (_parse_part(item, index),)
        columns = [p.column for p in parts]
        if len(set(columns)) != len(columns):
            raise ValueError(f"slices[{index}] crosses a column with itself: {columns}.")
        name = CROSS.join(columns)
        if name in where:
            raise ValueError(
                f"Slice {name!r} is given twice (slices[{where[name]}] and slices[{index}]); remove one."
            )
        where[name] = index
        out.append(Slice(name, parts))
    return out


def slice_columns(specs: Sequence[Slice]) -> list[str]:
    """The frame columns the specs read (predicates excluded: they may read any column)."""
    return list(dict.fromkeys(p.column for s in specs for p in s.parts if p.where is None))


def check_columns(specs: Sequence[Slice], columns: Sequence[str]) -> None:
    """Raise a :class:`DataError` naming the first slice column that is not in ``columns``."""
    for index, sl in enumerate(specs):
        for part in sl.parts:
            if part.where is not None:
                continue
            if part.column not in columns:
                raise DataError(
                    _UNKNOWN_COLUMN.format(
                        column=part.column, index=index, columns=list(columns), hint=_hint(part.column, columns)
                    )
                )
            if list(columns).count(part.column) > 1:
                raise DataError(
                    f"Slice column {part.column!r} (in slices[{index}]) appears {list(columns).count(part.column)} "
                    "times in the frame; give every column a unique name."
                )


def _hint(column: str, columns: Sequence[str]) -> str:
    lowered = {c.lower(): c for c in columns}
    if column.lower() in lowered:
        return f"Did you mean {lowered[column.lower()]!r}? Names are case-sensitive."
    return "Fix the slice spec, or pass a frame that holds the column."


# -- buckets ---------------------------------------------------------------------------------
def _fmt_edge(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def bucket_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the buckets cut at ``edges``: ``< e0``, ``[e0, e1)``, ..., ``>= e_last``."""
    e = [_fmt_edge(x) for x in edges]
    return [f"< {e[0]}", *(f"[{a}, {b})" for a, b in itertools.pairwise(e)), f">= {e[-1]}"]


def _numeric(series: pd.Series, part: Part, index: int) -> np.ndarray:
    if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)):
        try:
            series = pd.to_numeric(series, errors="raise")
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"Column {part.column!r} (slices[{index}]) is bucketed but holds non-numeric values "
                f"(dtype {series.dtype}); bucket a numeric column or slice by its values instead."
            ) from exc
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def quantile_edges(values: Any, quantiles: Sequence[float], *, column: str = "column", index: int = 0) -> tuple[float, ...]:
    """Bucket edges at the given quantiles of ``values`` (missing values ignored).

    Quantiles are numpy's default (linear interpolation). Equal quantiles (a column with
    many ties) collapse into one edge, so every bucket is non-empty in the data the edges
    came from.

    Raises
    ------
    DataError
        If the column has no values.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise DataError(
            f"Column {column!r} (slices[{index}]) has no values, so it has no quantiles; "
            "slice by given bucket edges instead."
        )
    return tuple(float(e) for e in np.unique(np.quantile(x, np.asarray(quantiles))))


def resolve_quantiles(specs: Sequence[Slice], column: Callable[[str], Any]) -> list[Slice]:
    """Specs with every quantile part given its edges, computed from ``column(name)``."""
    out = []
    for index, sl in enumerate(specs):
        parts = []
        for part in sl.parts:
            if not part.resolved:
                edges = quantile_edges(_numeric(pd.Series(column(part.column)), part, index), part.quantiles or (),
                                       column=part.column, index=index)
                part = Part(part.column, buckets=edges, quantiles=part.quantiles)
            parts.append(part)
        out.append(Slice(sl.name, tuple(parts)))
    return out


# -- ids per part ----------------------------------------------------------------------------
class _PartCoder:
    """Stable integer ids of one part's values, over every chunk seen."""

    def __init__(self, part: Part, index: int) -> None:
        self.part = part
        self.index = index  # the slices[i] that first used the part, for error messages
        self.labels: list[str] = []
        self._reps: list[Any] = []  # a raw value per label, for natural ordering
        self._lookup: dict[str, int] = {}
        self._missing: int | None = None
        if part.buckets is not None:
            self.labels = bucket_labels(part.buckets)
        elif part.where is not None:
            self.labels = ["False", "True"]

    @property
    def n_ids(self) -> int:
        return len(self.labels)

    def _missing_id(self) -> int:
        if self._missing is None:
            self._missing = len(self.labels)
            self.labels.append(MISSING)
            self._reps.append(None)
        return self._missing

    def encode(self, frame: pd.DataFrame | None, columns: list[str], n: int) -> np.ndarray:
        part = self.part
        if part.where is not None:
            result = self._evaluate(frame, columns, n)
            if np.ndim(result) == 1 and len(result) != n:
                raise DataError(
                    f"Predicate slices[{self.index}] ({part.column!r}) gave {len(result)} values for {n} rows; "
                    "return one boolean per row."
                )
            return self._encode_mask(result)
        series = frame.iloc[:, columns.index(part.column)]  # by position: labels may be non-strings
        if part.buckets is not None:
            x = _numeric(series, part, self.index)
            missing = np.isnan(x)
            ids = np.searchsorted(np.asarray(part.buckets), np.where(missing, 0.0, x), side="right").astype(np.int64)
            if missing.any():
                ids[missing] = self._missing_id()
            return ids
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        strings = category_strings(pd.Series(uniques, dtype=object)) if len(uniques) else []
        table = np.empty(len(uniques) + 1, dtype=np.int64)
        for j, label in enumerate(strings):
            found = self._lookup.get(label)
            if found is None:
                found = len(self.labels)
                self._lookup[label] = found
                self.labels.append(label)
                self._reps.append(uniques[j])
            table[j] = found
        if (codes < 0).any():
            table[-1] = self._missing_id()
        return table[codes]

    def _evaluate(self, frame: pd.DataFrame | None, columns: list[str], n: int) -> Any:
        part = self.part
        if frame is None:
            raise TypeError(f"Predicate slices[{self.index}] ({part.column!r}) needs a frame to evaluate on.")
        try:
            if isinstance(part.where, str):
                return frame.eval(part.where)
            return part.where(frame)  # type: ignore[misc, operator]
        except Exception as exc:
            raise DataError(
                f"Predicate slices[{self.index}] ({part.column!r}) failed on the frame: "
                f"{type(exc).__name__}: {exc}. Columns are: {columns}."
            ) from exc

    def _encode_mask(self, result: Any) -> np.ndarray:
        what = f"Predicate slices[{self.index}] ({self.part.column!r})"
        if isinstance(result, pd.DataFrame) or np.ndim(result) != 1:
            raise DataError(
                f"{what} must give one boolean per row (a Series or 1-D array); got {type(result).__name__} of "
                f"shape {np.shape(result)}. Return a mask like frame['age'] < 30, not frame[frame['age'] < 30]."
            )
        series = result if isinstance(result, pd.Series) else pd.Series(np.asarray(result))
        if not pd.api.types.is_bool_dtype(series.dtype):
            if series.dtype == object and series.dropna().map(lambda v: isinstance(v, (bool, np.bool_))).all():
                pass  # booleans with missing values
            else:
                raise DataError(
                    f"{what} must give booleans; got dtype {series.dtype}. Compare explicitly, e.g. "
                    "frame['flag'] == 1."
                )
        missing = series.isna().to_numpy()
        ids = np.where(missing, False, series.to_numpy(dtype=object, na_value=False)).astype(bool).astype(np.int64)
        if missing.any():
            ids[missing] = self._missing_id()
        return ids

    def display_rank(self) -> np.ndarray:
        """Rank of each id in display order: values sorted naturally, buckets in order, missing last."""
        n = len(self.labels)
        if self.part.buckets is not None or self.part.where is not None:
            order = list(range(n))
        else:
            present = [i for i in range(n) if i != self._missing]
            try:
                order = sorted(present, key=lambda i: self._reps[i])
            except TypeError:  # mixed types: order as strings
                order = sorted(present, key=lambda i: self.labels[i])
            if self._missing is not None:
                order.append(self._missing)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        return rank

    def remap_from(self, other: _PartCoder) -> np.ndarray:
        """Ids here of ``other``'s ids (registering labels this coder has not seen)."""
        if self.part.buckets is not None or self.part.where is not None:
            table = np.arange(other.n_ids, dtype=np.int64)
            if other._missing is not None:
                table[other._missing] = self._missing_id()
            return table
        table = np.empty(other.n_ids, dtype=np.int64)
        for i, label in enumerate(other.labels):
            if i == other._missing:
                table[i] = self._missing_id()
                continue
            found = self._lookup.get(label)
            if found is None:
                found = len(self.labels)
                self._lookup[label] = found
                self.labels.append(label)
                self._reps.append(other._reps[i])
            table[i] = found
        return table


# -- cells -----------------------------------------------------------------------------------
_RADIX_LIMIT = 1 << 62


def _combine(columns: Sequence[np.ndarray], cards: Sequence[int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows' combined code (compact: ``0..m-1``) and one representative row per code."""
    if not columns:
        return np.zeros(n, dtype=np.int64), np.zeros(1 if n else 0, dtype=np.int64)
    key = columns[0].astype(np.int64, copy=True)
    size = int(cards[0])
    for ids, card in zip(columns[1:], cards[1:]):
        if size * int(card) >= _RADIX_LIMIT:  # compact before the code overflows
            _, key = np.unique(key, return_inverse=True)
            key = key.reshape(-1)
            size = int(key.max()) + 1 if n else 1
        key *= int(card)
        key += ids
        size *= int(card)
    if size <= max(4 * n, 1 << 16):
        present = np.bincount(key, minlength=size) > 0
        lut = np.cumsum(present) - 1
        compact = lut[key]
        # Some row of each code (all rows of a code have the same part ids, so any will do).
        first = np.empty(int(present.sum()), dtype=np.int64)
        first[compact] = np.arange(n, dtype=np.int64)
        return compact, first
    _, first, compact = np.unique(key, return_index=True, return_inverse=True)
    return compact.reshape(-1), first


class CellCoder:
    """Cell ids of rows: one id per combination of the ids of every part of every slice.

    Parameters
    ----------
    specs : list of Slice
        Quantile parts must be resolved (have edges).

    Attributes
    ----------
    n_cells : int
        Cells seen so far.
    table : numpy.ndarray of shape (n_cells, n_parts)
        The part ids of each cell.
    """

    def __init__(self, specs: Sequence[Slice]) -> None:
        self.specs = list(specs)
        self.parts: list[_PartCoder] = []
        self._slot: dict[tuple[Any, ...], int] = {}
        self.slice_slots: list[list[int]] = []
        for index, sl in enumerate(self.specs):
            slots = []
            for part in sl.parts:
                if not part.resolved:
                    raise ValueError(
                        f"slices[{index}] buckets {part.column!r} by quantiles, which needs the whole column; "
                        "give edges instead ({'feature': ..., 'buckets': [...]}), or evaluate with "
                        "evaluate_parquet, which computes the quantiles in a first pass."
                    )
                if part.key not in self._slot:
                    self._slot[part.key] = len(self.parts)
                    self.parts.append(_PartCoder(part, index))
                slots.append(self._slot[part.key])
            self.slice_slots.append(slots)
        self._cells: dict[tuple[int, ...], int] = {}
        self._rows: list[tuple[int, ...]] = []

    @property
    def n_cells(self) -> int:
        return max(len(self._rows), 1)

    @property
    def table(self) -> np.ndarray:
        if not self._rows:
            return np.zeros((1, len(self.parts)), dtype=np.int64)
        return np.asarray(self._rows, dtype=np.int64).reshape(len(self._rows), len(self.parts))

    def _register(self, combo: tuple[int, ...]) -> int:
        found = self._cells.get(combo)
        if found is None:
            found = len(self._rows)
            self._cells[combo] = found
            self._rows.append(combo)
        return found

    def encode(self, frame: pd.DataFrame | None, n: int) -> np.ndarray:
        """Cell id of every row of ``frame`` (``n`` rows), registering new cells."""
        if not self.parts:
            if n:
                self._register(())
            return np.zeros(n, dtype=np.int64)
        columns = [str(c) for c in frame.columns] if frame is not None else []
        ids = [coder.encode(frame, columns, n) for coder in self.parts]
        compact, first = _combine(ids, [coder.n_ids for coder in self.parts], n)
        combos = np.stack([a[first] for a in ids], axis=1) if len(first) else np.zeros((0, len(ids)), np.int64)
        lut = np.fromiter((self._register(tuple(c)) for c in combos.tolist()), dtype=np.int64, count=len(combos))
        return lut[compact]

    def absorb(self, other: CellCoder) -> np.ndarray:
        """Register ``other``'s cells here; returns the id here of each of its cells."""
        maps = [mine.remap_from(theirs) for mine, theirs in zip(self.parts, other.parts)]
        if not other._rows:
            return np.zeros(0, dtype=np.int64)
        table = other.table
        mapped = np.stack([m[table[:, j]] for j, m in enumerate(maps)], axis=1) if maps else table
        return np.fromiter((self._register(tuple(r)) for r in mapped.tolist()), dtype=np.int64, count=len(mapped))

    def groups(self, s: int) -> tuple[np.ndarray, list[str]]:
        """Groups of slice ``s``: the group of each cell, and the group labels in display order.

        Groups are the combinations of the slice's part values that occur; they are
        numbered in display order (first part varies slowest; values sorted, missing last).
        """
        slots = self.slice_slots[s]
        if not self._rows:  # no rows seen: no groups
            return np.full(1, -1, dtype=np.int64), []
        table = self.table[:, slots]
        ranks = [self.parts[j].display_rank() for j in slots]
        ranked = np.stack([r[table[:, i]] for i, r in enumerate(ranks)], axis=1)
        uniq, cell_group = np.unique(ranked, axis=0, return_inverse=True)
        inverse = [np.argsort(r) for r in ranks]  # rank -> id
        labels = [
            CROSS.join(self.parts[j].labels[inverse[i][rank]] for i, (j, rank) in enumerate(zip(slots, row)))
            for row in uniq.tolist()
        ]
        return cell_group.reshape(-1).astype(np.int64), labels
