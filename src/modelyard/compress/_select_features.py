"""Feature selection as a data step: keep a subset of the raw columns, chosen by validation accuracy.

:func:`select_features` scores every raw feature column, ranks them, fits a fast model
on the top ``k`` columns for each ``k`` on a grid, and keeps the smallest ``k`` whose
validation score is within ``tolerance`` of the best. The result is a plain subset of
the raw columns (same rows, fewer feature columns, schema rebuilt), so a model trained
on it still takes raw columns and exports to ONNX through the usual path.

Methods and how a raw column is scored
--------------------------------------
Scores are computed on the training split only. Categorical columns enter as one-hot
parts (:class:`~modelyard.compress._design.OneHotDesign`); each method says how its
parts' scores make the column's score:

=============  ==========  ==============================================================
method         kind        column score
=============  ==========  ==============================================================
mutual_info    filter      ``mutual_info_classif`` (``_regression``) on the encoded matrix
                           (numeric columns, then categorical codes marked discrete):
                           one score per raw column, no aggregation. Missing numbers are
                           filled with the training mean.
anova          filter      ``f_classif`` (``f_regression``) per design part; the column
                           scores its **largest** part F (its best single indicator).
chi2           filter      ``chi2`` on the design with numeric parts min-max scaled to
                           [0, 1] (chi2 needs non-negative inputs); the column scores the
                           **sum** of its parts, which for a categorical column is exactly
                           Pearson's chi-squared statistic of its category-by-class table.
                           Classification only.
rfe            wrapper     ``sklearn.feature_selection.RFE`` with the fast linear model on
                           the standardized design, ranking every part; the column
                           survives as long as its best part does. Score = fraction of
                           elimination rounds survived, ``1 - (best_rank - 1) / max_rank``.
l1             embedded    An L1 path: ``SelectFromModel`` around an L1-penalized logistic
                           regression (Lasso for regression) at 12 strengths from the
                           weakest that keeps any part to 1000x weaker; score = fraction of
                           the path on which any of the column's parts is selected (ties
                           broken by the largest absolute coefficient at the weakest
                           penalty).
tree           embedded    Permutation importance of a ``HistGradientBoosting`` model
                           (categorical columns as native categories): fitted on 80% of
                           the training rows, importance = mean drop of accuracy (R²) on
                           the other 20% when the column is shuffled (5 repeats). One
                           score per raw column; the validation split is left for choosing k.
=============  ==========  ==============================================================

Choosing k
----------
For every ``k`` on a grid (every ``k`` up to 30 columns, else 30 geometric steps), the
fast model (``model="linear"``: standardized one-hot + logistic regression, or ridge
for regression; ``model="gbm"``: ``HistGradientBoosting``) is fitted on the training
rows of the top-``k`` columns and scored on the validation rows (accuracy, or R²). With
``k="auto"`` the chosen ``k`` is the **smallest k whose validation score is at least the
best score minus** ``tolerance`` (default 0.005, half a point of accuracy, the accuracy
drop the compression goals allow). Each point also records the fast model's parameter
count and the float32 size of the MLP the pipeline would train on those columns, so the
size-accuracy trade-off can be plotted.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.compress._design import (
    FAST_MODELS,
    CurvePoint,
    OneHotDesign,
    check_tabular,
    choose_k,
    fast_model_score,
    k_grid,
    min_max,
    mlp_size_bytes,
    standardizer,
    subset_data,
    thread_limit,
)
from modelyard.data._tabular import TabularData
from modelyard.errors import DataError

__all__ = ["FEATURE_SELECTION_METHODS", "SelectionResult", "select_features"]

#: Selection methods by name, with their kind.
FEATURE_SELECTION_METHODS = {
    "mutual_info": "filter",
    "anova": "filter",
    "chi2": "filter",
    "rfe": "wrapper",
    "l1": "embedded",
    "tree": "embedded",
}

#: Strengths on the L1 path: from the weakest penalty that keeps a part (l1_min_c) to 1000x weaker.
L1_PATH = np.logspace(0, 3, 12)


@dataclass
class SelectionResult:
    """What :func:`select_features` found.

    Attributes
    ----------
    method : str
        One of :data:`FEATURE_SELECTION_METHODS`.
    kind : str
        ``"filter"``, ``"wrapper"`` or ``"embedded"``.
    metric : str
        ``"accuracy"`` (classification) or ``"r2"`` (regression): the curve's score.
    scores : dict of str to float
        Score of every raw feature column, in schema order (higher = more useful; see
        the module docstring for each method's score).
    ranking : list of str
        The raw feature columns, best first.
    curve : list of CurvePoint
        Validation score, fast-model parameters and downstream MLP bytes per ``k``.
    baseline : CurvePoint
        The curve's point with every feature column.
    k : int
        Columns kept.
    selected : list of str
        The kept columns, in schema order.
    reason : str
        Why this ``k``.
    tolerance : float
    model : str
        The fast model (``"linear"`` or ``"gbm"``).
    details : dict
        Method-specific figures: ``part_scores`` (design part -> score) for the part-based
        methods, ``l1_path`` (C values and parts selected at each), ``rfe_ranking`` (part ->
        rank).
    """

    method: str
    kind: str
    metric: str
    scores: dict[str, float]
    ranking: list[str]
    curve: list[CurvePoint]
    baseline: CurvePoint
    k: int
    selected: list[str]
    reason: str
    tolerance: float
    model: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen(self) -> CurvePoint:
        """The curve's point at the chosen ``k``."""
        return next(p for p in self.curve if p.k == self.k)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (the pipeline's ``selection.json``)."""
        out = dataclasses.asdict(self)
        out["curve"] = [p.to_dict() for p in self.curve]
        out["baseline"] = self.baseline.to_dict()
        return _jsonable(out)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def select_features(
    data: TabularData,
    method: str = "mutual_info",
    k: int | str = "auto",
    *,
    tolerance: float = 0.005,
    model: str = "linear",
    size_config: Any = None,
    rfe_step: float = 1,
    max_rows: int | None = None,
    n_threads: int | None = 1,
    seed: int = 0,
) -> tuple[TabularData, SelectionResult]:
    """Keep the raw feature columns a method ranks best, as many as validation accuracy needs.

    Parameters
    ----------
    data : TabularData
        Train, valid and test splits; scores come from train, ``k`` from valid.
    method : {"mutual_info", "anova", "chi2", "rfe", "l1", "tree"}, default="mutual_info"
        How columns are scored (table in the module docstring).
    k : int or "auto", default="auto"
        Columns to keep; ``"auto"`` picks the smallest ``k`` within ``tolerance`` of the best
        validation score. With an int the curve is still computed, for the report.
    tolerance : float, default=0.005
        Allowed drop of the validation score below the best (accuracy or R²).
    model : {"linear", "gbm"}, default="linear"
        The fast model that scores each ``k``.
    size_config : MLPConfig or None, default=None
        The MLP whose size each curve point reports (``MLPConfig()`` when None).
    rfe_step : int or float, default=1
        Parts removed per RFE round (a float in (0, 1): that fraction of the parts); raise
        it to speed up RFE on wide data.
    max_rows : int or None, default=None
        Score columns on at most this many training rows (a seeded sample); the curve
        always uses every row.
    n_threads : int or None, default=1
        BLAS and OpenMP threads for the fits (through threadpoolctl); None leaves the
        libraries' defaults. The fits are small, so extra threads mostly synchronise: on
        two busy cores the 13-point curve of a 4,000-row set took 5.8 s with two threads
        and 0.33 s with one.
    seed : int, default=0
        Seeds mutual information's noise, the tree model, the permutations and the sample.

    Returns
    -------
    (TabularData, SelectionResult)
        The data with only the kept feature columns (the target, sensitive and other
        non-feature columns stay in the frames), and the scores, curve and choice.

    Raises
    ------
    ValueError
        An unknown method or fast model (the message lists the known ones), ``k`` outside
        ``1 .. n_features``, a negative tolerance.
    DataError
        ``chi2`` on a regression task, an empty split.
    """
    check_tabular(data, "select_features")
    if method not in FEATURE_SELECTION_METHODS:
        raise ValueError(f"Unknown feature-selection method {method!r}; known: {list(FEATURE_SELECTION_METHODS)}.")
    if model not in FAST_MODELS:
        raise ValueError(f"Unknown fast model {model!r}; known: {list(FAST_MODELS)}.")
    schema = data.schema
    names = schema.feature_names
    n = len(names)
    if not (k == "auto" or (isinstance(k, (int, np.integer)) and not isinstance(k, bool))):
        raise ValueError(f"k must be 'auto' or an int between 1 and {n}; got {k!r}.")
    if k != "auto" and not 1 <= int(k) <= n:
        raise ValueError(
            f"k={k} but the data has {n} feature columns ({names}); pass k between 1 and {n}, or k='auto'."
        )
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ValueError(f"tolerance must be a number >= 0 (a drop of validation accuracy); got {tolerance!r}.")
    if method == "chi2" and schema.task == "regression":
        raise DataError(
            f"method='chi2' tests independence from a class label, but the target {schema.target!r} is a regression "
            "target; use method='anova' (F test), 'mutual_info', 'rfe', 'l1' or 'tree'."
        )
    if max_rows is not None and max_rows < 10:
        raise ValueError(f"max_rows must be None or at least 10; got {max_rows!r}.")
    if n_threads is not None and n_threads < 1:
        raise ValueError(f"n_threads must be None or at least 1; got {n_threads!r}.")
    with thread_limit(n_threads):
        return _select(data, method, k, tolerance=tolerance, model=model, size_config=size_config,
                       rfe_step=rfe_step, max_rows=max_rows, seed=seed)


def _select(data: TabularData, method: str, k: int | str, *, tolerance: float, model: str, size_config: Any,
            rfe_step: float, max_rows: int | None, seed: int) -> tuple[TabularData, SelectionResult]:
    schema = data.schema
    names = schema.feature_names
    n = len(names)

    design = OneHotDesign.fit(data.train)
    train = data.train
    frame, y = train.X, train.y
    if max_rows is not None and len(frame) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(len(frame), size=max_rows, replace=False))
        frame, y = frame.iloc[rows], y[rows]
    scores, order_key, details = _SCORERS[method](design, frame, y, schema.task, seed=seed, step=rfe_step)
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0, posinf=np.finfo(float).max)
    # Best first; ties by the secondary key (larger first), then schema order.
    ranking_idx = sorted(range(n), key=lambda i: (-scores[i], -order_key[i], i))
    ranking = [names[i] for i in ranking_idx]

    extra = set() if k == "auto" else {int(k)}  # an int k off the grid still gets its point
    curve = _curve(data, design, ranking_idx, extra, model=model, size_config=size_config, seed=seed)
    if k == "auto":
        k_chosen, reason = choose_k(curve, tolerance)
    else:
        k_chosen = int(k)
        reason = f"k={k_chosen} given; validation score {next(p.score for p in curve if p.k == k_chosen):.4f}"
    keep = set(ranking[:k_chosen])
    selected = [c for c in names if c in keep]
    out = _subset(data, selected)
    result = SelectionResult(
        method=method, kind=FEATURE_SELECTION_METHODS[method], metric="r2" if schema.task == "regression" else "accuracy",
        scores={c: float(scores[i]) for i, c in enumerate(names)}, ranking=ranking, curve=curve,
        baseline=next(p for p in curve if p.k == n), k=k_chosen, selected=selected, reason=reason,
        tolerance=float(tolerance), model=model, details=details,
    )
    return out, result


# -- the curve -------------------------------------------------------------------------
def _curve(data: TabularData, design: OneHotDesign, ranking_idx: list[int], extra: set[int], *, model: str,
           size_config: Any, seed: int) -> list[CurvePoint]:
    schema = data.schema
    names = schema.feature_names
    owner = design.owner
    if model == "linear":
        z_train, z_valid = design.matrix(data.train.X), design.matrix(data.valid.X)
    else:
        z_train, z_valid = design.code_matrix(data.train.X), design.code_matrix(data.valid.X)
        code_cols = schema.numeric_names + schema.categorical_names
        # Native categories need < 255 codes; a wider column is split on its codes as numbers.
        native = [False] * len(schema.numeric) + [len(c.categories) < 254 for c in schema.categorical]
    points = []
    for k in sorted(set(k_grid(len(names))) | extra):
        top = set(ranking_idx[:k])
        columns = tuple(c for i, c in enumerate(names) if i in top)
        if model == "linear":
            cols = np.flatnonzero(np.isin(owner, list(top)))
            categorical = None
        else:
            cols = np.asarray([j for j, c in enumerate(code_cols) if c in columns], dtype=np.int64)
            categorical = [native[j] for j in cols]
        if cols.size == 0:  # only constant columns: the fast model sees a constant
            x_tr, x_va = np.zeros((len(z_train), 1)), np.zeros((len(z_valid), 1))
        else:
            x_tr, x_va = z_train[:, cols], z_valid[:, cols]
        score, n_params = fast_model_score(x_tr, data.train.y, x_va, data.valid.y, schema.task, model=model,
                                           categorical=categorical, seed=seed)
        sub = dataclasses.replace(schema, features=tuple(c for c in schema.features if c.name in columns))
        points.append(CurvePoint(k, score, n_params, mlp_size_bytes(sub, size_config), columns))
    return points


def _subset(data: TabularData, selected: list[str]) -> TabularData:
    schema = data.schema
    drop = [c for c in schema.feature_names if c not in selected and c not in schema.sensitive and c != schema.target]
    new_schema = dataclasses.replace(schema, features=tuple(c for c in schema.features if c.name in selected))
    frames = {name: split.frame.drop(columns=drop) for name, split in data.splits.items()}
    return subset_data(data, new_schema, frames, suffix=f"[{len(selected)} features]")


# -- scorers: (scores per raw column, tie-break key, details) ------------------------------
def _aggregate(design: OneHotDesign, part_scores: np.ndarray, how: str) -> np.ndarray:
    n = len(design.schema.features)
    out = np.zeros(n)
    owner = design.owner
    for i in range(n):
        mine = part_scores[owner == i]
        if mine.size:
            out[i] = mine.max() if how == "max" else mine.sum()
    return out


def _score_mutual_info(design: OneHotDesign, frame: Any, y: np.ndarray, task: str, **kw: Any) -> tuple:
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

    x = design.code_matrix(frame)  # (n, n_num + n_cat): numeric, then codes
    schema = design.schema
    discrete = np.array([False] * len(schema.numeric) + [True] * len(schema.categorical))
    fn = mutual_info_regression if task == "regression" else mutual_info_classif
    mi = fn(x, y, discrete_features=discrete, random_state=kw["seed"])
    order = schema.numeric_names + schema.categorical_names
    scores = np.array([mi[order.index(c)] for c in schema.feature_names])
    return scores, np.zeros(len(scores)), {}


def _score_anova(design: OneHotDesign, frame: Any, y: np.ndarray, task: str, **kw: Any) -> tuple:
    from sklearn.feature_selection import f_classif, f_regression

    z = design.matrix(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a constant part has no F (NaN), scored 0
        warnings.filterwarnings("ignore", message="Features .* are constant")
        f, _ = (f_regression if task == "regression" else f_classif)(z, y)
    f = np.nan_to_num(f, nan=0.0)
    return _aggregate(design, f, "max"), np.zeros(len(design.schema.features)), {
        "part_scores": dict(zip(design.part_names, f.tolist(), strict=True))}


def _score_chi2(design: OneHotDesign, frame: Any, y: np.ndarray, task: str, **kw: Any) -> tuple:
    from sklearn.feature_selection import chi2

    z = design.matrix(frame)
    lo, span = min_max(z)
    c, _ = chi2((z - lo) / span, y)
    c = np.nan_to_num(c, nan=0.0)
    return _aggregate(design, c, "sum"), np.zeros(len(design.schema.features)), {
        "part_scores": dict(zip(design.part_names, c.tolist(), strict=True))}


def _linear(task: str) -> Any:
    from sklearn.linear_model import LogisticRegression, Ridge

    return Ridge(alpha=1.0) if task == "regression" else LogisticRegression(C=1.0, max_iter=1000)


def _score_rfe(design: OneHotDesign, frame: Any, y: np.ndarray, task: str, **kw: Any) -> tuple:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_selection import RFE

    z = design.matrix(frame)
    center, divisor = standardizer(z)
    n = len(design.schema.features)
    if z.shape[1] <= 1:  # nothing to eliminate
        return np.ones(n) * (z.shape[1] > 0), np.zeros(n), {}
    rfe = RFE(_linear(task), n_features_to_select=1, step=kw["step"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        rfe.fit((z - center) / divisor, y)
    rank = rfe.ranking_.astype(np.float64)  # 1 = survived longest
    worst = float(rank.max())
    best = np.full(n, np.inf)
    for j, i in enumerate(design.owner):
        best[i] = min(best[i], rank[j])
    scores = np.where(np.isfinite(best), 1.0 - (best - 1.0) / worst, 0.0)
    return scores, np.zeros(n), {"rfe_ranking": dict(zip(design.part_names, rfe.ranking_.tolist(), strict=True))}


def _score_l1(design: OneHotDesign, frame: Any, y: np.ndarray, task: str, **kw: Any) -> tuple:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_selection import SelectFromModel
    from sklearn.linear_model import Lasso, LogisticRegression
    from sklearn.svm import l1_min_c

    z = design.matrix(frame)
    center, divisor = standardizer(z)
    zs = (z - center) / divisor
    n = len(design.schema.features)
    owner = design.owner
    if task == "regression":
        yc = y - y.mean()
        alpha_max = float(np.max(np.abs(zs.T @ yc)) / len(yc)) or 1.0
        strengths = alpha_max / L1_PATH  # strong -> weak penalty

        def make(s: float) -> Any:
            return Lasso(alpha=s, max_iter=5000)
    else:
        c_min = float(l1_min_c(zs, y, loss="log"))
        strengths = c_min * L1_PATH
        multiclass = len(np.unique(y)) > 2

        def make(s: float) -> Any:
            if multiclass:  # liblinear is binary only
                return LogisticRegression(l1_ratio=1.0, solver="saga", C=s, max_iter=2000, tol=1e-3)
            return LogisticRegression(l1_ratio=1.0, solver="liblinear", C=s, max_iter=1000)

    on_path = np.zeros(n)
    path: list[list[str]] = []
    last_coef = np.zeros(z.shape[1])
    parts = design.part_names
    for s in strengths:
        sfm = SelectFromModel(make(float(s)), threshold=1e-5)  # SelectFromModel's own L1 threshold
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sfm.fit(zs, y)
        support = sfm.get_support()
        path.append([parts[j] for j in np.flatnonzero(support)])
        on_path[np.unique(owner[support])] += 1
        last_coef = np.abs(np.atleast_2d(sfm.estimator_.coef_)).sum(axis=0)  # (n_parts,): norm over classes
    scores = on_path / len(strengths)
    tie = _aggregate(design, last_coef, "max")
    return scores, tie, {"l1_path": {"strength": strengths.tolist(), "selected": path},
                         "part_scores": dict(zip(parts, last_coef.tolist(), strict=True))}


def _score_tree(design: OneHotDesign, frame: Any, y: np.ndarray, task: str, **kw: Any) -> tuple:
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )
    from sklearn.inspection import permutation_importance

    seed = kw["seed"]
    schema = design.schema
    x = design.code_matrix(frame)  # numeric, then codes
    # Native categories need < 255 codes; a wider column is split on its codes as numbers.
    mask = np.array([False] * len(schema.numeric) + [len(c.categories) < 254 for c in schema.categorical])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    cut = round(0.8 * len(x))
    fit_rows, hold_rows = order[:cut], order[cut:]
    if task == "regression":
        est = HistGradientBoostingRegressor(categorical_features=mask if mask.any() else None, random_state=seed)
    else:
        est = HistGradientBoostingClassifier(categorical_features=mask if mask.any() else None, random_state=seed)
    est.fit(x[fit_rows], y[fit_rows])
    imp = permutation_importance(est, x[hold_rows], y[hold_rows], n_repeats=5, random_state=seed)
    order_names = schema.numeric_names + schema.categorical_names
    scores = np.array([imp.importances_mean[order_names.index(c)] for c in schema.feature_names])
    return scores, np.zeros(len(scores)), {"importance_std": {
        c: float(imp.importances_std[order_names.index(c)]) for c in schema.feature_names}}


_SCORERS = {
    "mutual_info": _score_mutual_info,
    "anova": _score_anova,
    "chi2": _score_chi2,
    "rfe": _score_rfe,
    "l1": _score_l1,
    "tree": _score_tree,
}
