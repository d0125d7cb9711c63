"""Model outputs on rows whose features come partly from the explained row and partly from background rows.

Shapley methods ask, for a row ``x`` and a coalition ``S`` of features, for
``v(S) = E_b[f(x_S, b_{not S})]``: the model's output averaged over background rows
``b`` (weighted), with the features in ``S`` taken from ``x`` and the others from ``b``
(the *interventional* value function, as shap's KernelExplainer). A raw column is one
player, whatever its encoding (a categorical column is one feature, not one per level).

:class:`Game` builds those composite rows column by column in the model's input
encoding, so nothing is re-parsed per coalition: for our torch models it edits
``(x_num, x_cat)`` (:mod:`modelyard.explain._fast`), for scikit-learn predictors on the
encoded matrix it feeds the estimator directly, and for any other predictor it builds
raw DataFrames. Many coalitions and rows go to the model in few large calls, and each
distinct composite row goes once: where the explained row and a background row agree on
a feature, coalitions that differ only in that feature build the same row, and so do
background rows that agree outside a coalition (a k-means background keeps real
categories, so this is common); :func:`coalition_values` evaluates it once and shares
the output.

:func:`summarize_background` condenses a large background set with k-means, as
shap's ``kmeans`` does, keeping real categories for categorical columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from modelyard.errors import DataError, SchemaMismatchError
from modelyard.explain._fast import encoded_view

__all__ = ["Background", "Game", "select_rows", "summarize_background"]


@dataclass
class Background:
    """Background rows and their weights (summing to 1), e.g. k-means centres weighted by cluster size.

    Attributes
    ----------
    frame : pandas.DataFrame
        Raw feature columns, one row per background point.
    weights : ndarray of shape (n_rows,)
    """

    frame: pd.DataFrame
    weights: np.ndarray

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        if len(w) != len(self.frame) or len(w) == 0:
            raise ValueError(f"Background needs one weight per row; got {len(w)} weights for {len(self.frame)} rows.")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("Background weights must be finite, non-negative and not all zero.")
        self.frame = self.frame.reset_index(drop=True)
        self.weights = w / w.sum()

    def __len__(self) -> int:
        return len(self.frame)


def _categorical_names(frame: pd.DataFrame, predictor: Any = None) -> set[str]:
    schema = getattr(predictor, "schema", None)
    if schema is not None and hasattr(schema, "categorical_names"):
        return set(schema.categorical_names)
    return {c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])}


def summarize_background(
    X: pd.DataFrame,
    n_clusters: int = 20,
    *,
    predictor: Any = None,
    random_state: int | None = 0,
) -> Background:
    """Summarize rows by k-means: one representative row per cluster, weighted by the cluster's size.

    Rows are clustered (scikit-learn ``KMeans``) on standardized numeric columns
    (missing values at the mean) and one-hot categorical columns scaled by
    ``1/sqrt(2)``, so that two different categories are as far apart as one standard
    deviation. Each cluster is represented by the mean of its numeric values and the
    most frequent value of each categorical column, so categories stay real
    categories the model knows.

    Parameters
    ----------
    X : pandas.DataFrame
        Raw feature rows (e.g. a sample of the training set).
    n_clusters : int, default=20
        At most this many rows come back; ``X`` itself (uniform weights) when it has
        no more rows than that.
    predictor : Predictor or None, default=None
        Tells which columns are categorical (its schema); else non-numeric columns are.
    random_state : int or None, default=0

    Returns
    -------
    Background
    """
    if not isinstance(X, pd.DataFrame) or len(X) == 0:
        raise ValueError("summarize_background needs a non-empty DataFrame of raw rows.")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int | np.integer) or n_clusters < 1:
        raise ValueError(f"n_clusters must be a positive integer; got {n_clusters!r}.")
    X = X.reset_index(drop=True)
    if len(X) <= n_clusters:
        return Background(X, np.full(len(X), 1.0 / len(X)))
    from sklearn.cluster import KMeans

    categorical = _categorical_names(X, predictor)
    blocks = []
    numeric = [c for c in X.columns if c not in categorical]
    if numeric:
        num = X[numeric].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        mean, std = np.nanmean(num, axis=0), np.nanstd(num, axis=0)
        z = (num - mean) / np.where(std > 0, std, 1.0)
        blocks.append(np.nan_to_num(z, nan=0.0))
    for c in X.columns:
        if c in categorical:
            codes = pd.factorize(X[c].astype(object).where(X[c].notna(), "\0missing"))[0]
            blocks.append(np.eye(codes.max() + 1)[codes] / np.sqrt(2.0))
    matrix = np.hstack(blocks)
    km = KMeans(n_clusters=n_clusters, n_init=4, random_state=random_state).fit(matrix)
    labels = km.labels_
    used = np.unique(labels)
    rows = []
    for k in used:
        members = X.loc[labels == k]
        row = {}
        for c in X.columns:
            if c in categorical:
                row[c] = members[c].value_counts(dropna=False, sort=True).index[0]
            else:
                row[c] = pd.to_numeric(members[c], errors="coerce").astype(np.float64).mean()
        rows.append(row)
    frame = pd.DataFrame(rows, columns=X.columns)
    for c in X.columns:
        if c in categorical:
            frame[c] = frame[c].astype(X[c].dtype) if not pd.api.types.is_bool_dtype(X[c]) else frame[c]
    weights = np.bincount(labels, minlength=n_clusters)[used].astype(np.float64)
    return Background(frame, weights)


def select_rows(X: pd.DataFrame, rows: int | Sequence[int] | np.ndarray | None) -> np.ndarray:
    """Positions of the rows to explain (all if None), checked against ``len(X)``.

    Raises
    ------
    DataError
        A position out of range (the message gives the valid range) or not an integer.
    """
    n = len(X)
    if rows is None:
        return np.arange(n)
    arr = np.atleast_1d(np.asarray(rows))
    if arr.size == 0:
        raise DataError("rows is empty; pass at least one row position, or rows=None for all rows.")
    if arr.dtype.kind not in "iu":
        raise DataError(f"rows must be integer positions (0 .. {n - 1}); got {rows!r}.")
    bad = arr[(arr < -n) | (arr >= n)]
    if bad.size:
        raise DataError(
            f"Row index {int(bad[0])} is out of range for {n} rows; use positions 0 .. {n - 1} (or -{n} .. -1)."
        )
    return np.where(arr < 0, arr + n, arr).astype(np.int64)


def check_features(predictor: Any, X: Any, what: str = "X") -> list[str]:
    """The model's features, after checking ``X`` is a non-empty DataFrame holding all of them."""
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame of raw feature columns; got {type(X).__name__}.")
    if len(X) == 0:
        raise DataError(f"{what} has no rows.")
    features = [str(f) for f in getattr(predictor, "feature_names", X.columns)]
    missing = [f for f in features if f not in X.columns]
    if missing:
        raise SchemaMismatchError(
            f"{what} lacks the model's features {missing}; the model takes {features}. Pass rows with those columns."
        )
    return features


def check_players(features: list[str], players: Sequence[str] | None) -> list[str]:
    """The features to attribute to (all if None), checked against the model's features."""
    if players is None:
        return list(features)
    players = [players] if isinstance(players, str) else list(players)
    unknown = [f for f in players if f not in features]
    if unknown:
        raise ValueError(f"Features {unknown} are not inputs of the model; the model takes {features}.")
    if len(set(players)) != len(players) or not players:
        raise ValueError(f"features must name at least one feature, each once; got {players}.")
    return players


def resolve_background(
    predictor: Any,
    background: Background | pd.DataFrame | None,
    X: pd.DataFrame,
    n_background: int,
    random_state: int | None,
) -> Background:
    """The background to average over: given, summarized from a frame, or summarized from ``X``.

    Raises
    ------
    SchemaMismatchError
        A background frame without the model's features, or with columns that are
        neither features nor the schema's target or sensitive columns.
    """
    features = [str(f) for f in getattr(predictor, "feature_names", X.columns)]
    if background is None:
        return summarize_background(X[features], n_background, predictor=predictor, random_state=random_state)
    frame = background.frame if isinstance(background, Background) else background
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"background must be a DataFrame of raw rows or a Background; got {type(background).__name__}.")
    missing = [f for f in features if f not in frame.columns]
    schema = getattr(predictor, "schema", None)
    allowed = set(features) | ({schema.target, *schema.sensitive} if schema is not None else set())
    extra = [str(c) for c in frame.columns if c not in allowed]
    if missing or extra:
        parts = ([f"lacks the model's features {missing}"] if missing else []) + (
            [f"has columns the model does not take {extra}"] if extra else [])
        raise SchemaMismatchError(
            f"The background set {' and '.join(parts)}. The model takes {features}; "
            "pass background rows from the same data set (e.g. a sample of the training rows)."
        )
    if len(frame) == 0:
        raise DataError("The background set has no rows.")
    if isinstance(background, Background):
        return Background(frame[features], background.weights)
    return summarize_background(frame[features], n_background, predictor=predictor, random_state=random_state)


def output_names(predictor: Any, task: str, n_classes: int) -> list[str]:
    classes = getattr(predictor, "classes", None)
    if classes is None and getattr(predictor, "schema", None) is not None:
        classes = predictor.schema.classes
    if task == "regression":
        return ["prediction"]
    classes = [str(c) for c in classes] if classes else [str(i) for i in range(n_classes)]
    return classes


class Game:
    """A predictor's chosen outputs on composite rows, built column by column in its input encoding.

    Parameters
    ----------
    predictor : Predictor
    output : int, str or None
        Binary: None explains the positive class's probability; multiclass: None
        explains every class; an index or class name explains one class.
    link : {"identity", "logit"}
        ``logit`` explains log-odds ``log(p / (1 - p))`` of the chosen probabilities.
    """

    def __init__(self, predictor: Any, output: int | str | None = None, link: str = "identity") -> None:
        self.predictor = predictor
        self.features = [str(f) for f in predictor.feature_names]
        self.task = getattr(predictor, "task", "regression")
        if link not in ("identity", "logit"):
            raise ValueError(f"link must be 'identity' or 'logit'; got {link!r}.")
        if link == "logit" and self.task == "regression":
            raise ValueError("link='logit' explains log-odds of probabilities; this model does regression. Use link='identity'.")
        self.link = link
        self.mode = "frame"
        from modelyard.models import SklearnPredictor

        if (isinstance(predictor, SklearnPredictor) and predictor.inputs == "encoded"
                and type(predictor)._forward is SklearnPredictor._forward):
            from modelyard.models import encoded_feature_names

            self.mode = "sklearn"
            self._columns = encoded_feature_names(predictor.schema)
            names = getattr(predictor.estimator, "feature_names_in_", None)
            self._fit_names = None if names is None else [str(c) for c in names]
        self._view = None
        self.n_classes = 0
        if self.task != "regression":
            schema = getattr(predictor, "schema", None)
            self.n_classes = schema.n_classes if schema is not None else len(getattr(predictor, "classes", ())) or 2
        names = output_names(predictor, self.task, self.n_classes)
        if self.task == "regression":
            if output not in (None, 0, "prediction"):
                raise ValueError(f"A regression model has one output; got output={output!r}.")
            self.columns_out, self.output_names = None, names
        elif output is None:
            self.columns_out = [1] if self.task == "binary" else list(range(len(names)))
            self.output_names = [names[j] for j in self.columns_out]
        else:
            if isinstance(output, str):
                if output not in names:
                    raise ValueError(f"Unknown class {output!r}; the model's classes are {names}.")
                j = names.index(output)
            else:
                j = int(output)
                if not 0 <= j < len(names):
                    raise ValueError(f"Class index {output} is out of range for classes {names}.")
            self.columns_out, self.output_names = [j], [names[j]]
        if link == "logit":
            self.output_names = [f"log-odds({n})" for n in self.output_names]

    @property
    def n_outputs(self) -> int:
        return len(self.output_names)

    def columns(self, frame: pd.DataFrame) -> list[np.ndarray]:
        """One array per model feature: the rows' values in the model's input encoding."""
        frame = frame[self.features]
        if self.mode == "sklearn":
            from modelyard.models import encode_matrix

            matrix = encode_matrix(frame, self.predictor.schema)
            return [matrix[:, self._columns.index(f)] for f in self.features]
        view = encoded_view(self.predictor, frame)
        if view is not None:
            self.mode, self._view = "torch", view
            return [view.arrays[name][:, col] for name, col in (view.where[f] for f in self.features)]
        return [frame[f].to_numpy() for f in self.features]

    def run(self, cols: list[np.ndarray]) -> np.ndarray:
        """The chosen outputs ``(n, n_outputs)`` (float64, link applied) on rows given column by column."""
        n = len(cols[0])
        if self.mode == "torch":
            view = self._view
            arrays = {k: np.empty((n, v.shape[1]), dtype=v.dtype) for k, v in view.arrays.items()}
            for f, col in zip(self.features, cols, strict=True):
                name, j = view.where[f]
                arrays[name][:, j] = col
            raw = view.run(arrays)
        elif self.mode == "sklearn":
            matrix = np.empty((n, len(self._columns)), dtype=np.float32)
            for f, col in zip(self.features, cols, strict=True):
                matrix[:, self._columns.index(f)] = col
            est = self.predictor.estimator
            x = matrix if self._fit_names is None else pd.DataFrame(matrix, columns=self._fit_names)
            if self.task == "regression":
                raw = np.asarray(est.predict(x), dtype=np.float64)
            else:
                raw = np.asarray(est.predict_proba(x), dtype=np.float64)[:, self.predictor.proba_columns]
        else:
            # object columns stay object: letting pandas infer a string dtype costs more than the model
            frame = pd.DataFrame({f: pd.Series(c, dtype=object if c.dtype == object else c.dtype, copy=False)
                                  for f, c in zip(self.features, cols, strict=True)})
            raw = np.asarray(
                self.predictor.predict(frame) if self.task == "regression" else self.predictor.predict_proba(frame),
                dtype=np.float64,
            )
        out = raw.reshape(n, 1) if self.columns_out is None else raw.reshape(n, -1)[:, self.columns_out]
        if self.link == "logit":
            p = np.clip(out, 1e-16, 1 - 1e-16)
            out = np.log(p) - np.log1p(-p)
        return out


def coalition_values(
    game: Game,
    x_cols: list[np.ndarray],
    background: Background,
    bg_cols: list[np.ndarray],
    masks: np.ndarray,
    *,
    max_rows_per_call: int = 200_000,
) -> tuple[np.ndarray, int]:
    """``v[i, k] = sum_b w_b f(x_i on the features of masks[k], background row b elsewhere)``.

    Parameters
    ----------
    game : Game
    x_cols : list of ndarray
        The explained rows, one array of length ``n`` per model feature (:meth:`Game.columns`).
    background : Background
    bg_cols : list of ndarray
        The background rows, encoded the same way.
    masks : ndarray of bool, shape (K, n_model_features)
        ``True`` where the feature comes from the explained row.
    max_rows_per_call : int, default=200000

    Returns
    -------
    values : ndarray of shape (n, K, n_outputs)
    model_rows : int
        How many rows went to the model (the cost of the evaluation).
    """
    n, k_all, nb = len(x_cols[0]), len(masks), len(background)
    w = background.weights
    v = np.empty((n, k_all, game.n_outputs))
    model_rows = 0
    full = masks.all(axis=1)
    empty = ~masks.any(axis=1)
    if full.any():  # the row itself: one model row, not one per background row
        fx = game.run(x_cols)
        v[:, full] = fx[:, None, :]
        model_rows += n
    if empty.any():  # the background alone: the same for every row
        fnull = w @ game.run(bg_cols)
        v[:, empty] = fnull
        model_rows += nb
    todo = np.flatnonzero(~(full | empty))
    if len(todo) == 0:
        return v, model_rows
    per_row = len(todo) * nb
    if per_row <= max_rows_per_call:  # several explained rows per call
        rows_per_call, coal_per_call = max(1, max_rows_per_call // per_row), len(todo)
    else:  # a chunk of coalitions of one row per call
        rows_per_call, coal_per_call = 1, max(1, max_rows_per_call // nb)
    sub = masks[todo]
    for r0 in range(0, n, rows_per_call):
        r = np.arange(r0, min(n, r0 + rows_per_call))
        xr = [xc[r] for xc in x_cols]
        for c0 in range(0, len(todo), coal_per_call):
            m = sub[c0 : c0 + coal_per_call]  # (c, M)
            out, sent = _composite_outputs(game, xr, bg_cols, m)
            v[r[:, None], todo[c0 : c0 + len(m)][None, :]] = np.einsum("rcbo,b->rco", out, w)
            model_rows += sent
    return v, model_rows


def same_as_background(x_cols: list[np.ndarray], bg_cols: list[np.ndarray]) -> np.ndarray:
    """``(n, B, M)`` bool: does feature ``j`` of explained row ``i`` equal background row ``b``'s? (NaN equals NaN.)"""
    out = np.empty((len(x_cols[0]), len(bg_cols[0]), len(x_cols)), dtype=bool)
    for j, (xc, bc) in enumerate(zip(x_cols, bg_cols, strict=True)):
        xa, ba = np.asarray(xc), np.asarray(bc)
        out[:, :, j] = (xa[:, None] == ba[None, :]) | (pd.isna(xa)[:, None] & pd.isna(ba)[None, :])
    return out


def _composite_outputs(
    game: Game, x_cols: list[np.ndarray], bg_cols: list[np.ndarray], m: np.ndarray
) -> tuple[np.ndarray, int]:
    """Outputs ``(r, c, B, n_outputs)`` on the composite rows of ``r`` explained rows, coalitions ``m``, all background rows.

    The composite row of (i, coalition k, b) takes feature j from row i where ``m[k, j]``
    and from b elsewhere. Each feature's values (explained and background rows together)
    are coded as small integers, so a composite row is a tuple of codes; equal tuples are
    one input, and the model sees each distinct one once. That happens wherever the row
    and a background row agree on a feature, two background rows agree outside the
    coalition, or two explained rows agree on it. Returns the outputs and how many rows
    went to the model.
    """
    n_r, n_c, n_b = len(x_cols[0]), len(m), len(bg_cols[0])
    codes_x, codes_b, radix = [], [], []
    for xc, bc in zip(x_cols, bg_cols, strict=True):
        codes, uniques = pd.factorize(np.concatenate([np.asarray(xc), np.asarray(bc)]), use_na_sentinel=False)
        codes_x.append(codes[:n_r])
        codes_b.append(codes[n_r:])
        radix.append(len(uniques))
    if all(r == n_r + n_b for r in radix):  # every value differs from every other: no two composite rows agree
        cols = [np.where(m[None, :, j, None], xc[:, None, None], bc[None, None, :]).reshape(-1)
                for j, (xc, bc) in enumerate(zip(x_cols, bg_cols, strict=True))]  # fmt: skip
        return game.run(cols).reshape(n_r, n_c, n_b, -1), n_r * n_c * n_b
    code = np.stack(
        [np.where(m[None, :, j, None], cx[:, None, None], cb[None, None, :]).reshape(-1)
         for j, (cx, cb) in enumerate(zip(codes_x, codes_b, strict=True))], axis=1)  # fmt: skip  (N, M)
    if float(np.prod(np.asarray(radix, dtype=np.float64))) < 2.0**62:  # one int64 key per row, mixed radix
        strides = np.cumprod([1, *radix[:-1]]).astype(np.int64)
        keys = code.astype(np.int64) @ strides
    else:  # many features: the row of codes as one byte string
        raw = np.ascontiguousarray(code.astype(np.uint16 if max(radix) < 2**16 else np.int64))
        keys = raw.view(np.dtype((np.void, raw.shape[1] * raw.itemsize))).reshape(-1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    ri, ci, bi = np.unravel_index(first, (n_r, n_c, n_b))
    cols = [np.where(m[ci, j], xc[ri], bc[bi]) for j, (xc, bc) in enumerate(zip(x_cols, bg_cols, strict=True))]
    out = game.run(cols)
    return out[inverse.reshape(-1)].reshape(n_r, n_c, n_b, -1), len(first)
