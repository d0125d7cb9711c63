"""LIME (Ribeiro, Singh & Guestrin, 2016): local linear surrogates for tabular rows and images, reproducible.

Tabular
-------
The algorithm of the ``lime`` package's ``LimeTabularExplainer`` (its defaults), run
vectorized: for each explained row, ``n_samples`` neighbours are drawn feature by
feature from training statistics, the model predicts all of them (for all explained
rows) in few large calls, and a weighted ridge regression on *interpretable* features
gives the explanation.

* ``discretize=True`` (lime's default): numeric features are cut at their training
  quartiles. A neighbour's bin is drawn from the training bin frequencies and its
  value from a normal with the bin's training mean and standard deviation, truncated
  to the bin; a categorical feature's value is drawn from the training category
  frequencies. The interpretable feature is 1 where the neighbour is in the explained
  row's bin (category), else 0, and a coefficient is the effect of "being in this
  row's bin" (named like lime: ``28.00 < age <= 37.00``, ``sex=Male``).
* ``discretize=False``: numeric values are drawn from a normal with the training mean
  and standard deviation and the interpretable feature is the standardized value (the
  coefficient is the local slope per standard deviation); categoricals as above.

The neighbour's weight is ``sqrt(exp(-d^2 / w^2))`` with ``d`` the Euclidean distance to
the explained row in interpretable space and ``w = 0.75 sqrt(M)``; the surrogate is
``Ridge(alpha=1)`` fitted with those weights, as lime does. Randomness comes from
``numpy.random.default_rng([random_state, row])``: the same seed gives identical
arrays, and a row's explanation does not depend on which other rows are explained
with it (the lime package draws from one global stream, so its results move with call
order: marcotcr/lime#119).

Images
------
:func:`lime_image` splits an image into superpixels (SLIC from scikit-image, or a
regular grid that needs nothing), switches random subsets of them off (replaced by
their mean colour, or a fixed value), predicts all perturbed images in batches, and
fits a weighted ridge of the target class's probability on the on/off pattern
(cosine distance to the full image, kernel width 0.25, as ``lime_image``). The
coefficients, painted onto their superpixels, form a heatmap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from modelyard.errors import DataError, SchemaMismatchError
from modelyard.explain._explanation import Explanation
from modelyard.explain._masking import (
    Game,
    _categorical_names,
    check_features,
    select_rows,
)

__all__ = ["ImageExplanation", "lime_image", "lime_tabular", "weighted_ridge"]


def weighted_ridge(z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression with an unpenalized intercept and sample weights (as scikit-learn's ``Ridge``).

    Parameters
    ----------
    z : ndarray of shape (n, p)
    y : ndarray of shape (n, k)
    w : ndarray of shape (n,)
    alpha : float

    Returns
    -------
    coef : ndarray of shape (p, k)
    intercept : ndarray of shape (k,)
    """
    sw = w / w.sum()
    zm, ym = sw @ z, sw @ y
    zc, yc = z - zm, y - ym
    gram = (zc * w[:, None]).T @ zc + alpha * np.eye(z.shape[1])
    coef = np.linalg.solve(gram, (zc * w[:, None]).T @ yc)
    return coef, ym - zm @ coef


def _weighted_r2(y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    mean = (w @ y) / w.sum()
    ss_res = w @ (y - pred) ** 2
    ss_tot = w @ (y - mean) ** 2
    return np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), 1.0)


@dataclass
class _Numeric:
    name: str
    edges: np.ndarray  # quartile borders (unique)
    freq: np.ndarray  # per bin (last bin: missing, if any)
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    overall_mean: float
    overall_std: float
    has_missing: bool


@dataclass
class _Categorical:
    name: str
    values: np.ndarray  # object
    freq: np.ndarray
    encoded: np.ndarray = field(default_factory=lambda: np.empty(0))


def _numeric_stats(name: str, column: pd.Series) -> _Numeric:
    x = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    ok = x[~np.isnan(x)]
    if ok.size == 0:
        raise DataError(f"Numeric feature {name!r} has no values in the training rows; LIME needs its distribution.")
    edges = np.unique(np.percentile(ok, [25, 50, 75]))
    bins = np.searchsorted(edges, ok)
    nb = len(edges) + 1
    counts = np.bincount(bins, minlength=nb).astype(np.float64)
    mean = np.array([ok[bins == b].mean() if counts[b] else 0.0 for b in range(nb)])
    std = np.array([ok[bins == b].std() if counts[b] else 0.0 for b in range(nb)]) + 1e-11
    low = np.concatenate([[ok.min()], edges])
    high = np.concatenate([edges, [ok.max()]])
    missing = float(np.isnan(x).sum())
    freq = np.append(counts, missing) if missing else counts
    std_all = ok.std()
    return _Numeric(name, edges, freq / freq.sum(), mean, std, low, high, float(ok.mean()),
                    float(std_all if std_all > 0 else 1.0), bool(missing))


def _categorical_stats(name: str, column: pd.Series) -> _Categorical:
    counts = column.value_counts(dropna=False, sort=False)
    labels = [None if pd.isna(v) else v for v in counts.index]
    order = np.argsort([str(v) for v in labels], kind="stable")
    vals = np.empty(len(counts), dtype=object)
    vals[:] = [labels[i] for i in order]
    freq = counts.to_numpy(dtype=np.float64)[order]
    return _Categorical(name, vals, freq / freq.sum())


def _truncated_normal(u: np.ndarray, b: np.ndarray, s: _Numeric) -> np.ndarray:
    """Values of bins ``b`` of ``s`` at uniform quantiles ``u``: ``N(bin mean, bin sd)`` truncated to the bin.

    Inverts the truncated CDF; a bin entirely above its mean is sampled as the mirrored
    lower tail, where ``ndtr`` keeps its precision. Bin constants are computed once.
    """
    from scipy.special import ndtr, ndtri

    lo, hi = (s.low - s.mean) / s.std, (s.high - s.mean) / s.std
    flip = lo > 0
    pa, pb = ndtr(np.where(flip, -hi, lo)), ndtr(np.where(flip, -lo, hi))  # per bin
    z = ndtri(np.clip(pa[b] + u * (pb - pa)[b], 1e-300, 1 - 1e-16))
    z = np.where(flip[b], -z, z)
    return np.clip(np.where(s.high[b] > s.low[b], s.mean[b] + s.std[b] * z, s.low[b]), s.low[b], s.high[b])


def _draw(freq: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Category (bin) indices with probabilities ``freq`` at uniform draws ``u``."""
    cdf = np.cumsum(freq)
    cdf /= cdf[-1]
    if len(cdf) <= 8:  # a few bins: counting thresholds passed beats a binary search
        out = np.zeros(u.shape, dtype=np.int64)
        for c in cdf[:-1]:
            out += u >= c
        return out
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(freq) - 1)


def lime_tabular(
    predictor: Any,
    X: pd.DataFrame,
    *,
    rows: int | Sequence[int] | None = None,
    training: pd.DataFrame | None = None,
    n_samples: int = 5000,
    discretize: bool = True,
    n_features: int | None = None,
    kernel_width: float | None = None,
    alpha: float = 1.0,
    output: int | str | None = None,
    random_state: int = 0,
    max_rows_per_call: int = 200_000,
) -> Explanation:
    """LIME explanations of tabular rows (see the module docstring).

    Parameters
    ----------
    predictor : Predictor
        Any model on raw rows.
    X : pandas.DataFrame
        Rows holding the model's features.
    rows : int, sequence of int or None, default=None
        Positions in ``X`` to explain; all if None.
    training : pandas.DataFrame or None, default=None
        Rows whose distribution the neighbours are drawn from (the training set);
        ``X`` if None.
    n_samples : int, default=5000
        Neighbours per explained row (the first is the row itself).
    discretize : bool, default=True
        Quartile bins for numeric features (lime's default); else standardized values.
    n_features : int or None, default=None
        Keep only this many features in the surrogate (lime's ``highest_weights``
        selection); all if None.
    kernel_width : float or None, default=None
        ``0.75 * sqrt(n_features_of_the_model)`` if None.
    alpha : float, default=1.0
        Ridge penalty of the surrogate.
    output : int, str or None, default=None
        As in :func:`~modelyard.explain.exact_shapley` (positive class, every class, or one).
    random_state : int, default=0
    max_rows_per_call : int, default=200000

    Returns
    -------
    Explanation
        ``method="lime"``: ``values`` are the surrogate's coefficients (0 for
        features left out by ``n_features``), ``base_values`` its intercepts;
        ``info`` holds ``score`` (weighted R^2 per row and output),
        ``local_prediction`` (the surrogate at the row), ``model_prediction`` and
        ``conditions`` (each row's interpretable feature names).

    Raises
    ------
    DataError
        A row position out of range, a numeric feature with no training values.
    SchemaMismatchError
        ``X`` or ``training`` without the model's features, or ``training`` with
        columns the model does not take.
    ValueError
        Bad ``n_samples``, ``n_features``, ``kernel_width`` or ``alpha``.
    """
    features = check_features(predictor, X, "X")
    idx = select_rows(X, rows)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer of at least 2; got {n_samples!r}.")
    m = len(features)
    if n_features is not None and not 1 <= int(n_features) <= m:
        raise ValueError(f"n_features must be between 1 and the model's {m} features; got {n_features!r}.")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0; got {alpha!r}.")
    width = float(np.sqrt(m) * 0.75 if kernel_width is None else kernel_width)
    if not width > 0:
        raise ValueError(f"kernel_width must be positive; got {kernel_width!r}.")
    train = X if training is None else training
    if training is not None:
        check_features(predictor, training, "training")
        schema = getattr(predictor, "schema", None)
        allowed = set(features) | ({schema.target, *schema.sensitive} if schema is not None else set())
        extra = [str(c) for c in training.columns if c not in allowed]
        if extra:
            raise SchemaMismatchError(
                f"The training rows have columns the model does not take {extra}. The model takes {features}; "
                "pass rows from the model's training data."
            )
    game = Game(predictor, output, "identity")
    categorical = _categorical_names(train[features], predictor)
    stats: list[_Numeric | _Categorical] = [
        _categorical_stats(f, train[f]) if f in categorical else _numeric_stats(f, train[f]) for f in features]
    # the encoded value of every training category, computed once
    cats = [s for s in stats if isinstance(s, _Categorical)]
    if cats:
        longest = max(len(s.values) for s in cats)
        template = X[features].iloc[[0] * longest].reset_index(drop=True)
        for s in cats:
            template[s.name] = pd.Series(np.resize(s.values, longest), dtype=object)
        encoded = game.columns(template)
        for s in cats:
            s.encoded = encoded[features.index(s.name)][: len(s.values)]
    rows_frame = X.iloc[idx][features].reset_index(drop=True)
    x_cols = game.columns(rows_frame)
    raw_rows = rows_frame.to_numpy(dtype=object)
    n = len(idx)
    # every random number of a row comes from that row's own generator, in one draw
    numeric = [j for j, st in enumerate(stats) if isinstance(st, _Numeric)]
    n_draws = m + len(numeric) if discretize else m  # a bin (category) per feature; a value per numeric bin
    u = np.empty((n_draws, n, n_samples))
    for r in range(n):
        u[:, r] = np.random.default_rng([int(random_state), int(idx[r])]).random((n_draws, n_samples))
    value_draw = {j: (m + i if discretize else j) for i, j in enumerate(numeric)}
    z_all = np.empty((n, n_samples, m))
    cols = []
    names = np.empty((n, m), dtype=object)
    for j, s in enumerate(stats):
        raw = raw_rows[:, j]
        if isinstance(s, _Categorical):
            own = np.array([next((k for k, v in enumerate(s.values) if (v is None and pd.isna(x)) or v == x), -1)
                            for x in raw])
            draw = _draw(s.freq, u[j])
            z = (draw == own[:, None]).astype(np.float64)
            vals = s.encoded[draw]
            names[:, j] = [f"{s.name}={x}" for x in raw]
        else:
            value = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy(dtype=np.float64)
            if discretize:
                nbins = len(s.edges) + 1
                own = np.where(np.isnan(value), nbins, np.searchsorted(s.edges, np.nan_to_num(value)))
                draw = _draw(s.freq, u[j])
                inside = draw < nbins
                vals = np.full(draw.shape, np.nan)
                d = draw[inside]
                vals[inside] = _truncated_normal(u[value_draw[j]][inside], d, s)
                z = (draw == own[:, None]).astype(np.float64)
                names[:, j] = [_bin_name(s, b) for b in own]
            else:
                from scipy.special import ndtri

                vals = ndtri(np.clip(u[value_draw[j]], 1e-16, 1 - 1e-16)) * s.overall_std + s.overall_mean
                z = (vals - s.overall_mean) / s.overall_std
                z[:, 0] = np.where(np.isnan(value), 1.0, (value - s.overall_mean) / s.overall_std)
                names[:, j] = s.name
        if discretize or isinstance(s, _Categorical):
            z[:, 0] = 1.0  # the row itself is in its own bin
        vals[:, 0] = x_cols[j]  # the first neighbour is the row itself
        z_all[:, :, j] = z
        cols.append(vals.reshape(-1).astype(x_cols[j].dtype if isinstance(s, _Categorical) else np.float64))
    conditions = names.tolist()
    preds = np.empty((n * n_samples, game.n_outputs))
    for lo in range(0, n * n_samples, max_rows_per_call):
        preds[lo : lo + max_rows_per_call] = game.run([c[lo : lo + max_rows_per_call] for c in cols])
    preds = preds.reshape(n, n_samples, -1)
    coef = np.zeros((n, m, game.n_outputs))
    intercept = np.zeros((n, game.n_outputs))
    score = np.zeros((n, game.n_outputs))
    local = np.zeros((n, game.n_outputs))
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # small solves: BLAS threads only contend
        dist2 = ((z_all - z_all[:, :1]) ** 2).sum(axis=2)  # (n, n_samples)
        kernel = np.sqrt(np.exp(-dist2 / width**2))
        for r in range(n):
            z, y, w = z_all[r], preds[r], kernel[r]
            used = np.arange(m)
            if n_features is not None and n_features < m:  # lime's "highest_weights": a light ridge on all, then the top
                c0, _ = weighted_ridge(z, y, w, 0.01)
                strength = np.abs(c0 * z[0][:, None]).max(axis=1)
                used = np.sort(np.argsort(-strength, kind="stable")[: int(n_features)])
            c, b = weighted_ridge(z[:, used], y, w, alpha)
            coef[r, used] = c
            intercept[r] = b
            fit = z[:, used] @ c + b
            score[r] = _weighted_r2(y, fit, w)
            local[r] = fit[0]
    single = game.n_outputs == 1
    info = {
        "score": score[:, 0] if single else score,
        "local_prediction": local[:, 0] if single else local,
        "model_prediction": preds[:, 0, 0] if single else preds[:, 0],
        "conditions": conditions,
        "n_samples": n_samples,
        "kernel_width": width,
        "discretize": discretize,
        "model_rows": n * n_samples,
    }
    values, base = (coef[:, :, 0], intercept[:, 0]) if single else (coef, intercept)
    return Explanation(values, base, X.iloc[idx].reset_index(drop=True)[features], features, game.output_names,
                       "lime", idx, info)


def _bin_name(s: _Numeric, b: int) -> str:
    e = s.edges
    if b >= len(e) + 1:
        return f"{s.name} is missing"
    if b == 0:
        return f"{s.name} <= {e[0]:.2f}"
    if b == len(e):
        return f"{s.name} > {e[-1]:.2f}"
    return f"{e[b - 1]:.2f} < {s.name} <= {e[b]:.2f}"


# -- images ----------------------------------------------------------------------------


@dataclass
class ImageExplanation:
    """LIME explanations of images.

    Attributes
    ----------
    heatmaps : ndarray of shape (N, H, W)
        Each pixel holds its superpixel's coefficient (positive: evidence for the target).
    segments : ndarray of int, shape (N, H, W)
        Superpixel labels ``0 .. S_i - 1``.
    coefficients : list of ndarray
        Per image, one coefficient per superpixel.
    intercepts, scores : ndarray of shape (N,)
        The surrogate's intercept and weighted R^2.
    targets : ndarray of int, shape (N,)
        The class explained per image.
    """

    heatmaps: np.ndarray
    segments: np.ndarray
    coefficients: list[np.ndarray]
    intercepts: np.ndarray
    scores: np.ndarray
    targets: np.ndarray

    def top_mask(self, i: int, k: int = 5, *, positive_only: bool = True) -> np.ndarray:
        """Bool ``(H, W)``: the ``k`` superpixels of image ``i`` with the largest (positive) coefficients."""
        c = self.coefficients[i]
        order = np.argsort(-c if positive_only else -np.abs(c), kind="stable")[:k]
        if positive_only:
            order = order[c[order] > 0]
        return np.isin(self.segments[i], order)


def _grid_segments(h: int, w: int, n_segments: int) -> np.ndarray:
    side = max(1, round(float(np.sqrt(h * w / max(1, n_segments)))))
    rows, cols = np.arange(h) // side, np.arange(w) // side
    return rows[:, None] * (cols.max() + 1) + cols[None, :]


def _segment(image: np.ndarray, method: str, n_segments: int) -> np.ndarray:
    """Superpixels of one image ``(C, H, W)``."""
    c, h, w = image.shape
    if method == "grid":
        return _grid_segments(h, w, n_segments)
    if method != "slic":
        raise ValueError(f"segments must be 'slic', 'grid', a label array or a callable; got {method!r}.")
    try:
        from skimage.segmentation import slic
    except ImportError as exc:
        raise ImportError(
            "segments='slic' needs scikit-image (pip install scikit-image); or pass segments='grid', "
            "which needs nothing, or your own label array."
        ) from exc
    pixels = image.astype(np.float64)
    if image.dtype == np.uint8:
        pixels /= 255.0
    labels = slic(np.moveaxis(pixels, 0, -1), n_segments=n_segments, compactness=0.1 if c == 1 else 10.0,
                  start_label=0, channel_axis=-1)
    return np.unique(labels, return_inverse=True)[1].reshape(h, w)


def lime_image(
    predictor: Any,
    images: np.ndarray,
    *,
    target: int | Sequence[int] | None = None,
    n_samples: int = 1000,
    segments: str | np.ndarray | Callable[[np.ndarray], np.ndarray] = "slic",
    n_segments: int = 50,
    hide: str | float = "mean",
    kernel_width: float = 0.25,
    alpha: float = 1.0,
    random_state: int = 0,
    batch_size: int = 2048,
) -> ImageExplanation:
    """LIME explanations of images with superpixels (see the module docstring).

    Parameters
    ----------
    predictor : object with ``predict_proba(images)``
        E.g. :class:`~modelyard.models.ImagePredictor`: class probabilities of
        ``(N, C, H, W)`` images.
    images : ndarray of shape (N, C, H, W) or (C, H, W)
        uint8 or float images, as the predictor takes them.
    target : int, sequence of int or None, default=None
        The class to explain per image; the predicted class if None.
    n_samples : int, default=1000
        Perturbed images per image (the first is the image itself).
    segments : {"slic", "grid"}, ndarray or callable, default="slic"
        ``slic`` (scikit-image's SLIC, compactness 0.1 on grey and 10 on colour
        images) needs scikit-image; ``grid`` cuts squares of about
        ``H*W/n_segments`` pixels and needs nothing; an int array ``(H, W)`` or
        ``(N, H, W)`` gives the labels; a callable maps ``(C, H, W)`` to labels.
        (lime's default, quickshift with ``kernel_size=4, max_dist=200``, makes a
        single segment of a 28x28 image, so it is not offered.)
    n_segments : int, default=50
        Target number of superpixels for ``slic`` and ``grid``.
    hide : "mean" or float, default="mean"
        What a switched-off superpixel shows: its mean colour (lime's default) or a value.
    kernel_width : float, default=0.25
    alpha : float, default=1.0
    random_state : int, default=0
        Seeds the masks per image (``default_rng([random_state, i])``).
    batch_size : int, default=2048
        Perturbed images per ``predict_proba`` call.

    Returns
    -------
    ImageExplanation

    Raises
    ------
    ValueError
        Images that are not ``(N, C, H, W)``, segment labels of another shape, a bad target.
    DataError
        A target class index out of range.
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"images must be an array (N, C, H, W) or (C, H, W); got shape {np.shape(images)}.")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer of at least 2; got {n_samples!r}.")
    n, c, h, w = x.shape
    probs0 = np.asarray(predictor.predict_proba(x), dtype=np.float64)
    k = probs0.shape[1]
    if target is None:
        targets = probs0.argmax(axis=1)
    else:
        targets = np.broadcast_to(np.asarray(target, dtype=np.int64), (n,)).copy()
        bad = targets[(targets < 0) | (targets >= k)]
        if bad.size:
            raise DataError(f"target class {int(bad[0])} is out of range for a model with {k} classes (0 .. {k - 1}).")
    if isinstance(segments, np.ndarray):
        seg_all = np.broadcast_to(segments, (n, h, w)) if segments.ndim == 2 else segments
        if seg_all.shape != (n, h, w):
            raise ValueError(f"segments must have shape (H, W) = {(h, w)} or (N, H, W); got {segments.shape}.")
        seg_all = np.stack([np.unique(s, return_inverse=True)[1].reshape(h, w) for s in seg_all])
    elif callable(segments):
        seg_all = np.stack([np.unique(segments(img), return_inverse=True)[1].reshape(h, w) for img in x])
    else:
        seg_all = np.stack([_segment(img, str(segments), n_segments) for img in x])
    heatmaps = np.zeros((n, h, w))
    coefs, intercepts, scores = [], np.zeros(n), np.zeros(n)
    for i in range(n):
        seg = seg_all[i]
        s = int(seg.max()) + 1
        img = x[i]
        if hide == "mean":
            flat = img.reshape(c, -1).astype(np.float64)
            sums = np.stack([np.bincount(seg.reshape(-1), weights=ch, minlength=s) for ch in flat])
            counts = np.bincount(seg.reshape(-1), minlength=s)
            fudged = (sums / counts)[:, seg].astype(img.dtype) if img.dtype != np.uint8 else np.rint(
                (sums / counts)[:, seg]).astype(np.uint8)
        else:
            fudged = np.full_like(img, hide)
        rng = np.random.default_rng([int(random_state), i])
        z = rng.integers(0, 2, size=(n_samples, s)).astype(bool)
        z[0] = True
        y = np.empty(n_samples)
        for lo in range(0, n_samples, batch_size):
            on = z[lo : lo + batch_size][:, seg]  # (b, H, W)
            batch = np.where(on[:, None], img[None], fudged[None])
            y[lo : lo + batch_size] = np.asarray(predictor.predict_proba(batch), dtype=np.float64)[:, targets[i]]
        zf = z.astype(np.float64)
        norms = np.sqrt(zf.sum(axis=1))
        cos = zf.sum(axis=1) / np.maximum(norms * np.sqrt(s), 1e-300)  # 0 for the all-off pattern
        dist = 1.0 - cos
        wts = np.sqrt(np.exp(-(dist**2) / kernel_width**2))
        coef, b = weighted_ridge(zf, y[:, None], wts, alpha)
        coefs.append(coef[:, 0])
        intercepts[i] = b[0]
        scores[i] = _weighted_r2(y, zf @ coef[:, 0] + b[0], wts)
        heatmaps[i] = coef[seg, 0]
    return ImageExplanation(heatmaps, seg_all, coefs, intercepts, scores, targets)
