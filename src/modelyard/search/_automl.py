"""Tabular AutoML: tune several model families within one time budget, ensemble the best, rank them all.

:func:`automl` runs one search per family (``linear``, ``gbm``, ``mlp``) with a
strategy of :data:`~modelyard.search.SEARCH_STRATEGIES`, one after the other, each
within its share of ``time_budget``; keeps each family's best few fitted models; and
combines them:

* ``weighted``: ensemble selection with replacement (Caruana et al., 2004, "Ensemble
  Selection from Libraries of Models"): start from the best single model, then
  repeatedly add (with replacement) the model whose addition most improves the
  validation metric of the averaged predictions; the ensemble is the best one met on
  the way, so on the validation split it is never worse than the best single model.
  Weights are the selection counts divided by their sum.
* ``stacked``: a logistic-regression (classifiers; on the members' log-odds or
  log-probabilities) or non-negative least-squares (regression) meta-model on the
  members' predictions for the validation rows.
* ``none``: no ensemble; the best single model is the result.

Leakage. Members are fitted on the train split only, so their predictions for the
validation rows are out-of-sample for the members' weights. The validation split does
choose hyperparameters, MLP epochs (early stopping) and, here, the ensemble (weights or
meta-model), so every validation figure of a tuned model or an ensemble is optimistic.
For ``stacked`` the meta-model's validation figure is therefore cross-fitted: 5-fold
out-of-fold predictions on the validation rows (the meta-model is then refitted on all
of them). The honest figure is the one on the test split, which nothing here looks at
before the end.

Time budget. The searches share ``time_budget`` seconds: each family gets a share of
what is left when it starts (linear 1, gbm 2, mlp 2), so time a family does not use
rolls over to the next. Each family's first trial is its default config (where the
defaults lie inside its space). A family's search starts no trial after its share is spent; a
running MLP trial stops at the next epoch once the share is spent (pruned); a
gradient-boosting or linear fit, a few seconds at most, finishes. Ensembling and the
test evaluation come on top (well under a second on Adult), and so does the ONNX export
of :meth:`AutoMLResult.save`.

Models are kept in memory while searching (the top ``candidates`` per family), so no
trial is refitted. Everything is saved without pickle: :meth:`AutoMLResult.save` writes
the best model and the ensemble as ONNX (the ensemble is one graph holding every
member and the combination), ``leaderboard.csv`` and ``automl.json``.

The ``linear`` family is tuned here rather than through :func:`modelyard.search.run`,
whose families are the ones with a config in :mod:`modelyard.models` (``mlp``,
``gbm``); the searches of every family use the same spaces, strategies and metric
objectives as :func:`~modelyard.search.run`.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelyard.data._schema import Schema, encode_frame
from modelyard.errors import DataError, ModelFormatError, SpecError
from modelyard.models._base import OUTPUT_NAMES, BasePredictor
from modelyard.search._space import Categorical, Float, Int, SearchSpace

__all__ = [
    "AUTOML_FAMILIES",
    "ENSEMBLE_METHODS",
    "AutoMLResult",
    "EnsemblePredictor",
    "LinearConfig",
    "LinearPredictor",
    "automl",
    "check_automl_args",
    "ensemble_selection",
    "fit_linear",
    "linear_space",
]

#: Families :func:`automl` can tune, in the order it tunes them.
AUTOML_FAMILIES = ("linear", "gbm", "mlp")
#: Ways of combining the best models.
ENSEMBLE_METHODS = ("weighted", "stacked", "none")
#: Relative share of the time budget of each family (of the families chosen).
BUDGET_SHARES = {"linear": 1.0, "gbm": 2.0, "mlp": 2.0}
#: Trials of the linear family at most: its space has three parameters, and more trials stop paying off.
LINEAR_MAX_TRIALS = 30

UNKNOWN_AUTOML_FAMILY = "Unknown model family {family!r} for automl; use one of {known}."
DUPLICATE_FAMILY = "Model family {family!r} is given twice; give each family once."
NO_FAMILIES = "automl needs at least one model family; use some of {known}."
BAD_BUDGET = "The time budget (time_budget, --time-budget) must be a positive number of seconds; got {value!r}."
UNKNOWN_ENSEMBLE = "Unknown ensemble method {value!r}; use one of {known}."
NOT_A_METRIC = "automl ranks models by a validation metric; {name!r} is a cost. Use one of {known}."
NOTHING_FINISHED = (
    "No trial finished within the time budget of {budget:g} s ({detail}); raise the time budget "
    "(--time-budget) or use faster families (--families linear,gbm)."
)

_EPS = 1e-7  # probabilities are clipped to [_EPS, 1] before the log of the stacked meta-model
_STACK_FOLDS = 5


# =====================================================================================
# The linear family
# =====================================================================================
class LinearConfig(BaseModel):
    """Hyperparameters of the linear family (frozen; unknown fields are errors).

    Numeric features are optionally log-transformed (``sign(x) log1p(|x|)`` for
    non-negative columns whose training skewness exceeds 2, as the MLP does), then
    standardized with the training mean and standard deviation; a missing value becomes
    the mean (0 after standardizing). Each categorical column becomes one-hot indicators
    of its codes (code 0, missing or unseen, has its own indicator). Classifiers are
    L2-regularized logistic regression (lbfgs, multinomial for several classes),
    regressors ridge regression.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    C: float = Field(1.0, gt=0.0, description="Inverse L2 strength of logistic regression (classifiers).")
    class_weight: Literal["balanced"] | None = Field(
        None, description="'balanced' weighs classes by inverse frequency (classifiers)."
    )
    alpha: float = Field(1.0, gt=0.0, description="L2 strength of ridge regression (regression).")
    log_transform: bool = Field(True, description="Log-transform heavy-tailed non-negative numeric columns.")
    max_iter: int = Field(1000, ge=1, description="Iterations of the lbfgs solver at most.")
    seed: int = Field(0, ge=0, description="Random state handed to scikit-learn.")


def linear_space(task: str = "binary") -> SearchSpace:
    """The linear family's space: ``C`` (log scale) and ``class_weight`` for classifiers, ``alpha`` for regression.

    Both also search ``log_transform``. (An L1 penalty is not searched: scikit-learn
    fits it with saga, many times slower than lbfgs on one-hot data.)

    Parameters
    ----------
    task : {"binary", "multiclass", "regression"}, default="binary"

    Returns
    -------
    SearchSpace
    """
    if task == "regression":
        return SearchSpace({"alpha": Float(1e-4, 1e3, log=True), "log_transform": Categorical([True, False])})
    return SearchSpace(
        {
            "C": Float(1e-4, 1e2, log=True),
            "class_weight": Categorical([None, "balanced"]),
            "log_transform": Categorical([True, False]),
        }
    )


def _skew(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    if x.size < 3:
        return 0.0
    sd = x.std()
    return 0.0 if sd == 0 else float(np.mean(((x - x.mean()) / sd) ** 3))


class LinearPredictor(BasePredictor):
    """A linear model on standardized numeric features and one-hot categories, as plain arrays.

    Classifiers: ``logits = z @ num_coef + sum_j cat_table[offset_j + code_j] + intercept``,
    then a sigmoid (binary, one logit) or a softmax; regression returns the logit itself.
    Exported to ONNX exactly (float32 arithmetic in the graph) by the exporter this
    module registers; build one with :func:`fit_linear`.

    Parameters
    ----------
    schema : Schema
    log_mask : array of bool, shape (n_numeric,)
        Columns given ``sign(x) log1p(|x|)`` before standardizing.
    mean, scale : arrays of shape (n_numeric,)
    num_coef : array of shape (n_numeric, n_out)
    cat_table : array of shape (sum_j (n_categories_j + 1), n_out)
        One row per code of each categorical column (column ``j``'s codes start at ``cat_offsets[j]``).
    intercept : array of shape (n_out,)
        ``n_out`` is 1 for binary and regression, the number of classes otherwise.
    config : LinearConfig or None
    """

    def __init__(
        self,
        schema: Schema,
        *,
        log_mask: np.ndarray,
        mean: np.ndarray,
        scale: np.ndarray,
        num_coef: np.ndarray,
        cat_table: np.ndarray,
        intercept: np.ndarray,
        config: LinearConfig | None = None,
    ) -> None:
        super().__init__(schema)
        self.log_mask = np.asarray(log_mask, dtype=bool)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.num_coef = np.asarray(num_coef, dtype=np.float64)
        self.cat_table = np.asarray(cat_table, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.config = config
        sizes = [len(c.categories) + 1 for c in schema.categorical]
        self.cat_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if sizes else np.zeros(0, np.int64)
        self.cat_sizes = np.asarray(sizes, dtype=np.int64)
        n_out = 1 if schema.task in ("binary", "regression") else schema.n_classes
        n_num = len(schema.numeric)
        shapes = {
            "log_mask": (self.log_mask.shape, (n_num,)), "mean": (self.mean.shape, (n_num,)),
            "scale": (self.scale.shape, (n_num,)), "num_coef": (self.num_coef.shape, (n_num, n_out)),
            "cat_table": (self.cat_table.shape, (int(sum(sizes)), n_out)), "intercept": (self.intercept.shape, (n_out,)),
        }  # fmt: skip
        bad = [f"{k} is {got}, expected {want}" for k, (got, want) in shapes.items() if tuple(got) != want]
        if bad:
            raise ValueError(f"LinearPredictor arrays do not fit the schema: {'; '.join(bad)}.")
        _ensure_exporters()

    def __repr__(self) -> str:
        return f"LinearPredictor(task={self.task!r}, features={len(self.feature_names)}, config={self.config!r})"

    def standardized(self, x_num: np.ndarray) -> np.ndarray:
        """The numeric block of the design matrix: transformed, standardized, missing as 0. ``(n, n_numeric)``."""
        x = np.asarray(x_num, dtype=np.float64)
        if self.log_mask.any():
            x = np.where(self.log_mask, np.sign(x) * np.log1p(np.abs(x)), x)
        z = (x - self.mean) / self.scale
        return np.where(np.isnan(z), 0.0, z)

    def logits(self, X: pd.DataFrame) -> np.ndarray:
        """Raw scores ``(n, n_out)`` for checked raw feature columns."""
        x_num, x_cat = encode_frame(X, self.schema)  # (n, n_num) float32, (n, n_cat) int64
        out = np.tile(self.intercept, (len(X), 1))  # (n, n_out)
        if self.num_coef.shape[0]:
            out = out + self.standardized(x_num) @ self.num_coef
        if self.cat_table.shape[0]:
            codes = np.clip(x_cat, 0, self.cat_sizes - 1) + self.cat_offsets  # (n, n_cat)
            out = out + self.cat_table[codes].sum(axis=1)  # (n, n_cat, n_out) -> (n, n_out)
        return out

    def _forward(self, X: pd.DataFrame) -> np.ndarray:
        z = self.logits(X)
        if self.task == "regression":
            return z[:, 0]
        if self.task == "binary":
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def _linear_design(x_num: np.ndarray, x_cat: np.ndarray, model: LinearPredictor) -> Any:
    """The sparse design matrix ``[standardized numeric, one-hot codes]`` (CSR, float64)."""
    from scipy import sparse

    n = x_num.shape[0] if x_num.size else x_cat.shape[0]
    blocks = []
    if model.num_coef.shape[0]:
        blocks.append(sparse.csr_matrix(model.standardized(x_num)))
    if model.cat_table.shape[0]:
        codes = np.clip(x_cat, 0, model.cat_sizes - 1) + model.cat_offsets  # (n, n_cat)
        rows = np.repeat(np.arange(n), codes.shape[1])
        blocks.append(sparse.csr_matrix((np.ones(codes.size), (rows, codes.reshape(-1))),
                                        shape=(n, int(model.cat_sizes.sum()))))
    return sparse.hstack(blocks, format="csr")


def fit_linear(train: Any, valid: Any = None, config: LinearConfig = LinearConfig()) -> LinearPredictor:  # noqa: B008
    """Fit the linear family on a :class:`~modelyard.data.TabularSplit` (``valid`` is unused; linear fits need no early stopping).

    Parameters
    ----------
    train : TabularSplit
    valid : TabularSplit or None, default=None
        Accepted for symmetry with the other families' fit functions; not used.
    config : LinearConfig, default=LinearConfig()

    Returns
    -------
    LinearPredictor

    Raises
    ------
    DataError
        An empty train split, or one that misses a class.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from threadpoolctl import threadpool_limits

    if not isinstance(config, LinearConfig):
        raise TypeError(f"config must be a LinearConfig; got {type(config).__name__}.")
    schema = train.schema
    if len(train) == 0:
        raise DataError("The train split is empty; the linear family needs rows to fit.")
    x_num, x_cat = encode_frame(train.X, schema)  # (n, n_num) float32 with NaN, (n, n_cat) int64
    x64 = x_num.astype(np.float64)
    log_mask = np.zeros(x64.shape[1], dtype=bool)
    if config.log_transform:
        for j in range(x64.shape[1]):
            col = x64[:, j]
            finite = col[~np.isnan(col)]
            log_mask[j] = finite.size > 0 and finite.min() >= 0 and _skew(col) > 2.0
    t = np.where(log_mask, np.sign(x64) * np.log1p(np.abs(x64)), x64) if log_mask.any() else x64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: mean 0, scale 1 below
        mean = np.nanmean(t, axis=0) if t.shape[0] else np.zeros(t.shape[1])
        scale = np.nanstd(t, axis=0) if t.shape[0] else np.ones(t.shape[1])
    mean = np.where(np.isfinite(mean), mean, 0.0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    classify = schema.task != "regression"
    n_out = 1 if schema.task in ("binary", "regression") else schema.n_classes
    sizes = [len(c.categories) + 1 for c in schema.categorical]
    shell = LinearPredictor(
        schema, log_mask=log_mask, mean=mean, scale=scale, num_coef=np.zeros((x64.shape[1], n_out)),
        cat_table=np.zeros((int(sum(sizes)), n_out)), intercept=np.zeros(n_out), config=config,
    )  # fmt: skip
    design = _linear_design(x_num, x_cat, shell)
    y = train.y
    if classify:
        present = np.unique(y)
        if len(present) != schema.n_classes:
            absent = [schema.classes[i] for i in range(schema.n_classes) if i not in set(present.tolist())]
            raise DataError(
                f"The train split lacks classes {absent} of target {schema.target!r}; "
                "use a stratified split so that every class appears in train."
            )
        estimator: Any = LogisticRegression(
            C=config.C, class_weight=config.class_weight, max_iter=config.max_iter, random_state=config.seed
        )
    else:
        estimator = Ridge(alpha=config.alpha, random_state=config.seed)
    from sklearn.exceptions import ConvergenceWarning

    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # at max_iter the model is still a fitted model
        estimator.fit(design, y)
    coef = np.asarray(estimator.coef_, dtype=np.float64).reshape(n_out, -1).T  # (d, n_out)
    intercept = np.asarray(estimator.intercept_, dtype=np.float64).reshape(n_out)
    n_num = x64.shape[1]
    return LinearPredictor(
        schema, log_mask=log_mask, mean=mean, scale=scale, num_coef=coef[:n_num], cat_table=coef[n_num:],
        intercept=intercept, config=config,
    )  # fmt: skip


def _linear_core(model: LinearPredictor) -> Any:
    """ONNX core graph of a :class:`LinearPredictor`: input ``x`` (numeric then codes), float32 arithmetic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    schema = model.schema
    n_num, n_cat = len(schema.numeric), len(schema.categorical)
    n_out = model.intercept.shape[0]
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: Any, dtype: Any = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    parts = [const("intercept", model.intercept.reshape(1, n_out))]
    if n_num:
        nodes.append(helper.make_node("Slice", ["x", const("num_start", [0], np.int64), const("num_end", [n_num], np.int64),
                                                const("axis1", [1], np.int64)], ["numeric"]))
        cur = "numeric"
        if model.log_mask.any():
            nodes += [
                helper.make_node("Abs", [cur], ["abs"]),
                helper.make_node("Add", ["abs", const("one", 1.0)], ["abs1"]),
                helper.make_node("Log", ["abs1"], ["log1p"]),
                helper.make_node("Sign", [cur], ["sign"]),
                helper.make_node("Mul", ["sign", "log1p"], ["slog"]),
                helper.make_node("Where", [const("log_mask", model.log_mask.reshape(1, n_num), np.bool_), "slog", cur],
                                 ["logged"]),
            ]  # fmt: skip
            cur = "logged"
        nodes += [
            helper.make_node("Sub", [cur, const("mean", model.mean.reshape(1, n_num))], ["centered"]),
            helper.make_node("Div", ["centered", const("scale", model.scale.reshape(1, n_num))], ["z_raw"]),
            helper.make_node("IsNaN", ["z_raw"], ["z_nan"]),
            helper.make_node("Where", ["z_nan", const("zero", 0.0), "z_raw"], ["z"]),
            helper.make_node("MatMul", ["z", const("num_coef", model.num_coef)], ["num_logits"]),
        ]  # fmt: skip
        parts.append("num_logits")
    if n_cat:
        nodes += [
            helper.make_node("Slice", ["x", const("cat_start", [n_num], np.int64),
                                       const("cat_end", [n_num + n_cat], np.int64), "axis1" if n_num else
                                       const("axis1", [1], np.int64)], ["codes_f"]),
            helper.make_node("Cast", ["codes_f"], ["codes"], to=TensorProto.INT64),
            helper.make_node("Max", ["codes", const("code_min", np.zeros((1, n_cat)), np.int64)], ["codes_lo"]),
            helper.make_node("Min", ["codes_lo", const("code_max", (model.cat_sizes - 1).reshape(1, n_cat), np.int64)],
                             ["codes_in"]),
            helper.make_node("Add", ["codes_in", const("offsets", model.cat_offsets.reshape(1, n_cat), np.int64)],
                             ["rows"]),
            helper.make_node("Gather", [const("cat_table", model.cat_table), "rows"], ["cat_terms"], axis=0),
            helper.make_node("ReduceSum", ["cat_terms", const("axis1_sum", [1], np.int64)], ["cat_logits"],
                             keepdims=0),
        ]  # fmt: skip
        parts.append("cat_logits")
    nodes.append(helper.make_node("Sum", parts, ["logits"]))
    if schema.task == "regression":
        out_name = OUTPUT_NAMES[1]
        nodes.append(helper.make_node("Reshape", ["logits", const("flat", [-1], np.int64)], [out_name]))
        output = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N"])
    else:
        out_name = OUTPUT_NAMES[0]
        if schema.task == "binary":
            nodes += [
                helper.make_node("Sigmoid", ["logits"], ["p1"]),
                helper.make_node("Sub", [const("one_p", 1.0), "p1"], ["p0"]),
                helper.make_node("Concat", ["p0", "p1"], [out_name], axis=1),
            ]
        else:
            nodes.append(helper.make_node("Softmax", ["logits"], [out_name], axis=1))
        output = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", schema.n_classes])
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_num + n_cat])], [output],
        initializer=inits,
    )  # fmt: skip
    core = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelyard")
    core.ir_version = 8
    onnx.checker.check_model(core)
    return core


# =====================================================================================
# Ensembles
# =====================================================================================
def _oriented(metric: str) -> tuple[Callable[[np.ndarray, np.ndarray], float], bool]:
    from modelyard.evaluate import METRICS

    fn = METRICS.get(metric)
    return fn, bool(fn.greater_is_better)


def ensemble_selection(
    predictions: Sequence[np.ndarray],
    y: np.ndarray,
    *,
    metric: str | Callable[[np.ndarray, np.ndarray], float],
    greater_is_better: bool | None = None,
    n_iter: int = 50,
    tie_break: str | Callable[[np.ndarray, np.ndarray], float] | None = None,
    tie_break_greater_is_better: bool | None = None,
) -> tuple[np.ndarray, list[float]]:
    """Caruana's ensemble selection with replacement; return the weights and the score path.

    Starts from the single best model (one selection), then ``n_iter - 1`` times adds the
    model whose addition gives the best metric of the averaged predictions (ties: the
    lowest index). The result is the ensemble at the best step of the path (the earliest
    of equal ones), so its score is at least the best single model's.

    Parameters
    ----------
    predictions : sequence of arrays
        Each model's validation predictions: probabilities ``(n, n_classes)`` or values ``(n,)``.
    y : array of shape (n,)
    metric : str or callable
        A name in :data:`modelyard.evaluate.METRICS` or ``fn(y, pred) -> float``.
    greater_is_better : bool or None, default=None
        Required for a callable metric; taken from the registry for a name.
    n_iter : int, default=50
        Selections made along the path (the first one included).
    tie_break : str or callable or None, default=None
        A second metric that orders candidates of equal ``metric`` (log_loss makes
        accuracy-driven selection move on plateaus).
    tie_break_greater_is_better : bool or None, default=None
        Required for a callable ``tie_break``.

    Returns
    -------
    weights : ndarray of shape (n_models,)
        Selection counts divided by their sum.
    path : list of float
        The metric after each selection (length ``n_iter``).
    """
    if not predictions:
        raise ValueError("ensemble_selection needs at least one model's predictions.")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive integer; got {n_iter!r}.")

    def resolve(m: Any, gib: bool | None, what: str) -> tuple[Callable[..., float], bool]:
        if isinstance(m, str):
            return _oriented(m)
        if not callable(m) or gib is None:
            raise ValueError(f"{what} must be a metric name, or a callable with its greater_is_better given.")
        return m, bool(gib)

    fn, gib = resolve(metric, greater_is_better, "metric")
    sign = 1.0 if gib else -1.0
    tb = resolve(tie_break, tie_break_greater_is_better, "tie_break") if tie_break is not None else None
    preds = [np.asarray(p, dtype=np.float64) for p in predictions]

    def key(pred: np.ndarray) -> tuple[float, float]:
        value = sign * float(fn(y, pred))
        second = (1.0 if tb[1] else -1.0) * float(tb[0](y, pred)) if tb is not None else 0.0
        return (-math.inf if math.isnan(value) else value, -math.inf if math.isnan(second) else second)

    counts = np.zeros(len(preds), dtype=np.int64)
    first = max(range(len(preds)), key=lambda i: (key(preds[i]), -i))
    counts[first] = 1
    total = preds[first].copy()
    best_key, best_counts = key(total), counts.copy()
    path = [sign * best_key[0]]
    for step in range(2, n_iter + 1):
        scored = [(key((total + p) / step), -i) for i, p in enumerate(preds)]
        (k, neg_i) = max(scored)
        i = -neg_i
        counts[i] += 1
        total += preds[i]
        path.append(sign * k[0])
        if k > best_key:
            best_key, best_counts = k, counts.copy()
    return best_counts / best_counts.sum(), path


def _stack_features(outputs: Sequence[np.ndarray], task: str) -> np.ndarray:
    """Meta-model inputs: binary ``log p1 - log p0``, multiclass ``log p_k``, regression the values."""
    if task == "regression":
        return np.stack([np.asarray(o, dtype=np.float64).reshape(-1) for o in outputs], axis=1)
    feats = []
    for o in outputs:
        logp = np.log(np.clip(np.asarray(o, dtype=np.float64), _EPS, None))  # (n, k)
        feats.append(logp[:, 1:2] - logp[:, 0:1] if task == "binary" else logp)
    return np.concatenate(feats, axis=1)


def _fit_meta(features: np.ndarray, y: np.ndarray, task: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit the stacking meta-model; return ``(coef (d, n_out), intercept (n_out,))``."""
    from sklearn.linear_model import LinearRegression, LogisticRegression

    if task == "regression":
        est: Any = LinearRegression(positive=True).fit(features, y)
        return np.asarray(est.coef_, dtype=np.float64).reshape(-1, 1), np.asarray([est.intercept_], dtype=np.float64)
    est = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(features, y)
    n_out = 1 if task == "binary" else len(est.classes_)
    if est.classes_.tolist() != list(range(max(2, n_out))):
        raise DataError("A stacked ensemble needs every class in the validation split; "
                        "use a larger valid fraction or ensemble='weighted'.")
    return np.asarray(est.coef_, dtype=np.float64).reshape(n_out, -1).T, np.asarray(est.intercept_).reshape(n_out)


def _apply_meta(features: np.ndarray, coef: np.ndarray, intercept: np.ndarray, task: str) -> np.ndarray:
    z = features @ coef + intercept  # (n, n_out)
    if task == "regression":
        return z[:, 0]
    if task == "binary":
        p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class EnsemblePredictor(BasePredictor):
    """Several fitted predictors of one schema combined by weights or by a linear meta-model.

    ``weighted``: the weighted mean of the members' probabilities (classifiers) or
    predictions (regression). ``stacked``: a meta-model on the members' outputs (see
    :func:`_stack_features`): logistic for classifiers, linear for regression.

    Export it with :func:`modelyard.compress.export_onnx`: the file is one ONNX graph
    holding every member's graph and the combination, so it serves like any model
    (:class:`~modelyard.models.OnnxPredictor`), with no pickle anywhere.

    Parameters
    ----------
    members : sequence of Predictor
        Fitted models sharing one schema, each with an ONNX exporter to be exportable.
    weights : array-like of shape (n_members,), optional
        Non-negative weights of ``weighted`` (normalized to sum 1); default equal weights.
    method : {"weighted", "stacked"}, default="weighted"
    meta_coef, meta_intercept : arrays, optional
        The ``stacked`` meta-model: ``(n_features, n_out)`` and ``(n_out,)``.
    names : sequence of str, optional
        Members' names (e.g. ``"gbm#3"``), for display.
    """

    def __init__(
        self,
        members: Sequence[Any],
        weights: Sequence[float] | np.ndarray | None = None,
        *,
        method: Literal["weighted", "stacked"] = "weighted",
        meta_coef: np.ndarray | None = None,
        meta_intercept: np.ndarray | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        members = list(members)
        if not members:
            raise ValueError("An ensemble needs at least one member.")
        schema = members[0].schema
        for i, m in enumerate(members[1:], start=1):
            if m.schema != schema:
                raise ValueError(f"Ensemble member {i} has another schema than member 0; fit every member on one data set.")
        super().__init__(schema)
        if method not in ("weighted", "stacked"):
            raise ValueError(f"method must be 'weighted' or 'stacked'; got {method!r}.")
        self.members = members
        self.method = method
        self.names = list(names) if names is not None else [f"member{i}" for i in range(len(members))]
        if method == "weighted":
            w = np.full(len(members), 1.0 / len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
            if w.shape != (len(members),) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"weights must be {len(members)} non-negative numbers with a positive sum; got {w!r}.")
            self.weights: np.ndarray | None = w / w.sum()
            self.meta_coef = self.meta_intercept = None
        else:
            if meta_coef is None or meta_intercept is None:
                raise ValueError("A stacked ensemble needs meta_coef and meta_intercept.")
            self.weights = None
            self.meta_coef = np.asarray(meta_coef, dtype=np.float64)
            self.meta_intercept = np.asarray(meta_intercept, dtype=np.float64)
        _ensure_exporters()

    def __repr__(self) -> str:
        return f"EnsemblePredictor({self.method}, members={self.names}, task={self.task!r})"

    def member_outputs(self, X: pd.DataFrame) -> list[np.ndarray]:
        """Each member's probabilities (classifiers) or predictions (regression)."""
        return [np.asarray(_outputs(m, X, self.task), dtype=np.float64) for m in self.members]

    def _forward(self, X: pd.DataFrame) -> np.ndarray:
        outputs = self.member_outputs(X)
        if self.method == "weighted":
            assert self.weights is not None
            return sum(w * o for w, o in zip(self.weights, outputs, strict=True))  # type: ignore[return-value]
        assert self.meta_coef is not None and self.meta_intercept is not None
        return _apply_meta(_stack_features(outputs, self.task), self.meta_coef, self.meta_intercept, self.task)


def _prefixed_graph(core: Any, prefix: str, inputs: Mapping[str, str]) -> Any:
    """Copy ``core``'s graph with every tensor and node name prefixed, its inputs renamed by ``inputs``."""
    import onnx

    graph = onnx.GraphProto()
    graph.CopyFrom(core.graph)
    if len(core.functions):
        raise ModelFormatError("An ensemble member's ONNX graph holds local functions; they cannot be merged.")

    inputs = {k: v for k, v in inputs.items() if k in {i.name for i in graph.input}}  # only real graph inputs

    def ren(name: str) -> str:
        if not name:
            return name
        return inputs[name] if name in inputs else prefix + name

    for index, node in enumerate(graph.node):
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise ModelFormatError(
                    f"An ensemble member's ONNX graph has a {node.op_type} node with a subgraph; it cannot be merged."
                )
        node.input[:] = [ren(n) for n in node.input]
        node.output[:] = [ren(n) for n in node.output]
        node.name = prefix + (node.name or f"#{index}/{node.op_type}")  # node names must be unique too
    for init in graph.initializer:
        init.name = ren(init.name)
    for vi in list(graph.value_info) + list(graph.output):
        vi.name = ren(vi.name)
    return graph


def _ensemble_core(ens: EnsemblePredictor) -> Any:
    """ONNX core graph of an :class:`EnsemblePredictor`: inputs ``x_num``/``x_cat``; every member inlined."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from modelyard.compress._export import ONNX_EXPORTERS

    schema = ens.schema
    n_num, n_cat = len(schema.numeric), len(schema.categorical)
    task = schema.task
    nodes: list[Any] = []
    inits: list[Any] = []
    graph_inputs = []
    if n_num:
        graph_inputs.append(helper.make_tensor_value_info("x_num", TensorProto.FLOAT, ["N", n_num]))
    if n_cat:
        graph_inputs.append(helper.make_tensor_value_info("x_cat", TensorProto.INT64, ["N", n_cat]))

    def const(name: str, value: Any, dtype: Any = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    cores = [ONNX_EXPORTERS.get(m)(m) for m in ens.members]
    opsets: dict[str, int] = {"": 17}
    ir_version = 8
    for core in cores:
        for op in core.opset_import:
            domain = "" if op.domain == "ai.onnx" else op.domain
            opsets[domain] = max(opsets.get(domain, 0), op.version)
        ir_version = max(ir_version, core.ir_version)
    if any("x" in [i.name for i in core.graph.input] for core in cores):
        parts = ["x_num"] if n_num else []
        if n_cat:
            nodes.append(helper.make_node("Cast", ["x_cat"], ["ens/x_cat_f"], to=TensorProto.FLOAT))
            parts.append("ens/x_cat_f")
        nodes.append(helper.make_node("Concat" if len(parts) > 1 else "Identity", parts, ["ens/x"],
                                      **({"axis": 1} if len(parts) > 1 else {})))  # fmt: skip
    out_name = OUTPUT_NAMES[1] if task == "regression" else OUTPUT_NAMES[0]
    member_out = []
    for i, core in enumerate(cores):
        names = [o.name for o in core.graph.output]
        if out_name not in names:
            raise ModelFormatError(f"Ensemble member {i}'s ONNX graph has outputs {names}, not {out_name!r}.")
        graph = _prefixed_graph(core, f"m{i}/", {"x_num": "x_num", "x_cat": "x_cat", "x": "ens/x"})
        nodes.extend(graph.node)
        inits.extend(graph.initializer)
        member_out.append(f"m{i}/{out_name}")
    if ens.method == "weighted":
        assert ens.weights is not None
        for i, w in enumerate(ens.weights):
            nodes.append(helper.make_node("Mul", [member_out[i], const(f"ens/w{i}", w)], [f"ens/weighted{i}"]))
        nodes.append(helper.make_node("Sum", [f"ens/weighted{i}" for i in range(len(cores))], [out_name]))
    else:
        assert ens.meta_coef is not None and ens.meta_intercept is not None
        feats = []
        for i, o in enumerate(member_out):
            if task == "regression":
                nodes.append(helper.make_node("Unsqueeze", [o, const("ens/axis1", [1], np.int64) if i == 0 else
                                                            "ens/axis1"], [f"ens/f{i}"]))  # fmt: skip
            else:
                nodes += [
                    helper.make_node("Clip", [o, const("ens/eps", _EPS) if i == 0 else "ens/eps"], [f"ens/clip{i}"]),
                    helper.make_node("Log", [f"ens/clip{i}"], [f"ens/logp{i}"]),
                ]
                if task == "binary":
                    if i == 0:
                        for j in range(3):
                            const(f"ens/c{j}", [j], np.int64)
                        const("ens/ax1", [1], np.int64)
                    nodes += [
                        helper.make_node("Slice", [f"ens/logp{i}", "ens/c1", "ens/c2", "ens/ax1"], [f"ens/l1_{i}"]),
                        helper.make_node("Slice", [f"ens/logp{i}", "ens/c0", "ens/c1", "ens/ax1"], [f"ens/l0_{i}"]),
                        helper.make_node("Sub", [f"ens/l1_{i}", f"ens/l0_{i}"], [f"ens/f{i}"]),
                    ]
                else:
                    nodes.append(helper.make_node("Identity", [f"ens/logp{i}"], [f"ens/f{i}"]))
            feats.append(f"ens/f{i}")
        nodes += [
            helper.make_node("Concat", feats, ["ens/features"], axis=1),
            helper.make_node("MatMul", ["ens/features", const("ens/meta_coef", ens.meta_coef)], ["ens/zm"]),
            helper.make_node("Add", ["ens/zm", const("ens/meta_b", ens.meta_intercept.reshape(1, -1))], ["ens/z"]),
        ]
        if task == "regression":
            nodes.append(helper.make_node("Reshape", ["ens/z", const("ens/flat", [-1], np.int64)], [out_name]))
        elif task == "binary":
            nodes += [
                helper.make_node("Sigmoid", ["ens/z"], ["ens/p1"]),
                helper.make_node("Sub", [const("ens/one", 1.0), "ens/p1"], ["ens/p0"]),
                helper.make_node("Concat", ["ens/p0", "ens/p1"], [out_name], axis=1),
            ]
        else:
            nodes.append(helper.make_node("Softmax", ["ens/z"], [out_name], axis=1))
    if task == "regression":
        output = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N"])
    else:
        output = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", schema.n_classes])
    graph = helper.make_graph(nodes, "ensemble", graph_inputs, [output], initializer=inits)
    core = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                             producer_name="modelyard")  # fmt: skip
    core.ir_version = ir_version
    onnx.checker.check_model(core)
    return core


def _ensure_exporters() -> None:
    """Register this module's ONNX exporters (once; importing the exporter registry imports torch)."""
    from modelyard.compress._export import ONNX_EXPORTERS

    if LinearPredictor not in ONNX_EXPORTERS:
        ONNX_EXPORTERS.register(LinearPredictor)(_linear_core)
    if EnsemblePredictor not in ONNX_EXPORTERS:
        ONNX_EXPORTERS.register(EnsemblePredictor)(_ensemble_core)


# =====================================================================================
# The AutoML loop
# =====================================================================================
@dataclass
class _Kept:
    """A fitted trial kept as an ensemble candidate."""

    family: str
    trial: int
    value: float
    predictor: Any
    valid_pred: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.family}#{self.trial}"


def _one_thread() -> Any:
    """One OpenMP thread for scikit-learn's tree predictions: on a machine whose cores other processes keep
    busy, a descheduled thread stalls every tree's barrier (measured: 7 ms per tree instead of 0.1 ms)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="openmp")


def _outputs(predictor: Any, X: pd.DataFrame, task: str) -> np.ndarray:
    with _one_thread():
        return predictor.predict(X) if task == "regression" else predictor.predict_proba(X)


def _default_point(space: SearchSpace, family: str, base: Any) -> dict[str, Any]:
    """The family's default config as a point of ``space`` (numbers clamped into their range, say an L2 of 0
    to the log range's low end; a default not among a categorical's choices is left to the sampler).

    Each family's search starts from this point, so the defaults (tuned on Adult for gbm and
    mlp) are always among the candidates, as AutoML systems seed their searches with known
    good configurations.
    """
    values = dict(base.model_dump())
    if family == "mlp" and "hidden_sizes" in values:
        sizes = tuple(values["hidden_sizes"])
        values["n_layers"] = len(sizes)
        values.update({f"hidden_{i}": w for i, w in enumerate(sizes, start=1)})
    point: dict[str, Any] = {}
    for name, param in space.params.items():
        if name not in values:
            continue
        v = values[name]
        if isinstance(param, Categorical):
            if v in param.choices:
                point[name] = v
        elif isinstance(param, (Float, Int)) and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = min(max(v, param.low), param.high)
            if isinstance(param, Int):
                v = round(v)
            if param.step is None or (v - param.low) % param.step == 0:
                point[name] = v
    return point


def _fit_family(family: str, params: Mapping[str, Any], base: Any, train: Any, valid: Any, deadline: float) -> Any:
    from modelyard.search._space import to_config

    if family == "linear":
        return fit_linear(train, valid, LinearConfig(**{**base.model_dump(), **params}))
    if family == "gbm":
        from modelyard.models import fit_gbm

        return fit_gbm(train, valid, to_config(params, "gbm", base), n_threads=1)
    import optuna

    from modelyard.train import fit_mlp

    def out_of_time(epoch: int, max_epochs: int, logs: Mapping[str, float]) -> None:
        if time.monotonic() > deadline:  # the family's share is spent: stop here
            raise optuna.TrialPruned(f"time budget spent at epoch {epoch}")

    return fit_mlp(train, valid, to_config(params, "mlp", base), callback=out_of_time)


@dataclass
class AutoMLResult:
    """What :func:`automl` found.

    Attributes
    ----------
    leaderboard : pandas.DataFrame
        Every finished trial of every family and the ensemble, best first by the validation
        metric: ``rank, model, family, trial, valid_<metric>, test_<metric>, fit_seconds, params``.
        ``test_<metric>`` is filled for the kept candidates and the ensemble (NaN elsewhere,
        and everywhere when there is no test split).
    best_model : Predictor
        The best single model on the validation split.
    ensemble : EnsemblePredictor or None
        None with ``ensemble="none"``.
    model : Predictor
        The recommended model: the ensemble unless its validation figure is worse than the
        best single model's (possible for ``stacked`` only), else ``best_model``.
    metric : str
    maximize : bool
    summary : dict
        Plain JSON data (written as ``automl.json``): budget, families, best, ensemble, test figures.
    """

    leaderboard: pd.DataFrame
    best_model: Any
    ensemble: EnsemblePredictor | None
    model: Any
    metric: str
    maximize: bool
    summary: dict[str, Any]
    sample: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    @property
    def model_is_ensemble(self) -> bool:
        return self.ensemble is not None and self.model is self.ensemble

    def save(self, folder: str | os.PathLike[str], *, sample: pd.DataFrame | None = None) -> dict[str, Path]:
        """Write ``best_model.onnx``, ``ensemble.onnx`` (if any), ``leaderboard.csv`` and ``automl.json``.

        Every file is first written, parity-checked (ONNX against the in-memory model, atol
        1e-5) and complete in a temporary folder beside ``folder``, then moved in with one
        atomic rename per file, so an error leaves ``folder`` as it was.

        Parameters
        ----------
        folder : path
        sample : DataFrame or None
            Raw rows for the ONNX parity check; default: up to 2,000 validation rows.

        Returns
        -------
        dict of str to Path
            The files written, by name.
        """
        with _one_thread():
            return self._save(Path(folder), self.sample if sample is None else sample)

    def _save(self, folder: Path, rows: pd.DataFrame) -> dict[str, Path]:
        import shutil
        import tempfile

        from modelyard._atomic import atomic_path
        from modelyard.compress import export_onnx

        if len(rows) == 0:
            raise ValueError("save needs raw sample rows for the ONNX parity check; pass sample=...")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            names = {"leaderboard.csv": staging / "leaderboard.csv", "automl.json": staging / "automl.json"}
            parity = {"best_model.onnx": export_onnx(self.best_model, staging / "best_model.onnx", sample=rows)}
            names["best_model.onnx"] = staging / "best_model.onnx"
            if self.ensemble is not None:
                parity["ensemble.onnx"] = export_onnx(self.ensemble, staging / "ensemble.onnx", sample=rows)
                names["ensemble.onnx"] = staging / "ensemble.onnx"
            self.summary["files"] = {
                "model": "ensemble.onnx" if self.model_is_ensemble else "best_model.onnx",
                "onnx_max_abs_diff": {k: float(v.max_abs_diff) for k, v in parity.items()},
                "parity_rows": len(rows),
            }
            self.leaderboard.to_csv(names["leaderboard.csv"], index=False)
            names["automl.json"].write_text(json.dumps(_jsonable(self.summary), indent=2), encoding="utf-8")
            folder.mkdir(parents=True, exist_ok=True)
            out = {}
            for name, path in names.items():
                with atomic_path(folder / name) as tmp:
                    shutil.copyfile(path, tmp)
                out[name] = folder / name
            if self.ensemble is None:  # an earlier run's ensemble would contradict automl.json
                (folder / "ensemble.onnx").unlink(missing_ok=True)
            return out
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _jsonable(obj: Any) -> Any:
    def default(o: Any) -> Any:
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating, float)):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    text = json.dumps(obj, default=default, allow_nan=True)
    return json.loads(text, parse_constant=lambda c: None)  # NaN -> null: strict JSON readers accept it


def check_automl_args(
    families: Sequence[str], time_budget: Any, ensemble: str, strategy: Any
) -> tuple[list[str], float]:
    """Validate the arguments :func:`automl` checks before any data is read; return (families, budget).

    Raises
    ------
    SpecError
        An empty or repeated family list, an unknown family, a budget that is not a
        positive number, an unknown ensemble method or strategy name (each lists the known ones).
    """
    from modelyard.search._strategies import SEARCH_STRATEGIES, BaseSearchStrategy

    fams = [families] if isinstance(families, str) else list(families)
    if not fams:
        raise SpecError(NO_FAMILIES.format(known=list(AUTOML_FAMILIES)))
    for f in fams:
        if f not in AUTOML_FAMILIES:
            raise SpecError(UNKNOWN_AUTOML_FAMILY.format(family=f, known=list(AUTOML_FAMILIES)))
    for f in fams:
        if fams.count(f) > 1:
            raise SpecError(DUPLICATE_FAMILY.format(family=f))
    if isinstance(time_budget, bool) or not isinstance(time_budget, (int, float)) or not time_budget > 0 \
            or not math.isfinite(time_budget):
        raise SpecError(BAD_BUDGET.format(value=time_budget))
    if ensemble not in ENSEMBLE_METHODS:
        raise SpecError(UNKNOWN_ENSEMBLE.format(value=ensemble, known=list(ENSEMBLE_METHODS)))
    if isinstance(strategy, str):
        import modelyard.search  # noqa: F401 - registers the rl strategy beside the others

        if strategy not in SEARCH_STRATEGIES:
            raise SpecError(f"Unknown search strategy {strategy!r}; known: {SEARCH_STRATEGIES.names()}.")
    elif not isinstance(strategy, BaseSearchStrategy):
        raise SpecError(f"strategy must be a name or a BaseSearchStrategy; got {type(strategy).__name__}.")
    order = [f for f in AUTOML_FAMILIES if f in fams]  # cheap families first, whatever the order given
    return order, float(time_budget)


def automl(
    data: Any,
    *,
    families: Sequence[str] = AUTOML_FAMILIES,
    time_budget: float = 60.0,
    strategy: str | Any = "auto",
    metric: str | None = None,
    ensemble: Literal["weighted", "stacked", "none"] = "weighted",
    seed: int = 0,
    candidates: int = 5,
    ensemble_iterations: int = 50,
    max_trials: int | None = None,
    base_configs: Mapping[str, Any] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> AutoMLResult:
    """Tune several model families within a time budget, ensemble the best and rank everything.

    See the module docstring for the budget, the ensembles and what the validation and
    test figures mean.

    Parameters
    ----------
    data : TabularData
        Trials fit on ``data.train`` and are scored on ``data.valid``; ``data.test`` (if it
        has rows) is scored once at the end.
    families : sequence of {"linear", "gbm", "mlp"}, default=all three
        Tuned in that order (cheapest first).
    time_budget : float, default=60.0
        Seconds shared by the families' searches.
    strategy : str or BaseSearchStrategy, default="auto"
        A name of :data:`~modelyard.search.SEARCH_STRATEGIES` (single-objective) or an instance.
    metric : str or None, default=None
        Validation metric to rank by and to ensemble for; default log_loss (classifiers) or rmse.
        Log-loss, a proper scoring rule, overfits a few thousand validation rows less than
        accuracy: on Adult (120 s budget) ranking by it gave 0.8738 test accuracy against
        0.8695 when ranking by accuracy (bench/search/RESULTS_automl.md).
    ensemble : {"weighted", "stacked", "none"}, default="weighted"
    seed : int, default=0
        Seeds the samplers (family ``i`` gets ``seed + i``) and every model.
    candidates : int, default=5
        Best models kept per family as ensemble candidates.
    ensemble_iterations : int, default=50
        Selections of the weighted ensemble.
    max_trials : int or None, default=None
        Trials per family at most (the linear family stops at 30 in any case).
    base_configs : mapping or None, default=None
        Fixed settings per family outside the space, e.g. ``{"mlp": {"max_epochs": 20}}``
        (a dict or the family's config).
    progress : callable or None, default=None
        Called with a dict after each trial (``event="trial"``: family, trial, state,
        value, best, elapsed, budget) and when a family starts (``event="family"``).

    Returns
    -------
    AutoMLResult

    Raises
    ------
    SpecError
        Bad families, budget, ensemble method, strategy, metric or base config; checked
        before any trial.
    RuntimeError
        No trial of any family finished within the budget.
    """
    import optuna

    from modelyard.data import TabularData
    from modelyard.models._config import GBMConfig, MLPConfig
    from modelyard.search._objectives import resolve_objectives
    from modelyard.search._space import gbm_space, mlp_space
    from modelyard.search._strategies import resolve_strategy

    if not isinstance(data, TabularData):
        raise TypeError(f"data must be a TabularData (modelyard.data.load or from_csv); got {type(data).__name__}.")
    order, budget = check_automl_args(families, time_budget, ensemble, strategy)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"seed must be a non-negative integer; got {seed!r}.")
    for name, value in (("candidates", candidates), ("ensemble_iterations", ensemble_iterations),
                        ("max_trials", 1 if max_trials is None else max_trials)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"{name} must be a positive integer; got {value!r}.")
    task = data.schema.task
    metric = metric or ("rmse" if task == "regression" else "log_loss")
    (objective,) = resolve_objectives([metric], task)
    if objective.kind != "metric":
        from modelyard.search._objectives import _fit_names

        raise SpecError(NOT_A_METRIC.format(name=metric, known=[n for n in _fit_names(task) if n not in ("n_params", "latency_ms")]))
    strat = resolve_strategy(strategy)
    strat.check(1, (metric,))
    metric_fn, maximize = _oriented(metric)
    sign = 1.0 if maximize else -1.0
    configs = {"linear": LinearConfig, "gbm": GBMConfig, "mlp": MLPConfig}
    bases: dict[str, Any] = {}
    for fam in order:
        given = (base_configs or {}).get(fam)
        klass = configs[fam]
        try:
            if given is None:
                bases[fam] = klass(seed=seed)
            elif isinstance(given, klass):
                bases[fam] = given
            else:
                bases[fam] = klass.model_validate({"seed": seed, **dict(given)})
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise SpecError(f"base config of family {fam!r}: {where}: {first['msg']}.") from None
    unknown = sorted(set(base_configs or {}) - set(order))
    if unknown:
        raise SpecError(f"base_configs names families {unknown} that are not tuned; tuned: {order}.")
    space_of = {"linear": linear_space(task), "gbm": gbm_space(), "mlp": mlp_space()}
    train, valid, test = data.train, data.valid, data.test
    if len(valid) == 0:
        raise DataError("The validation split is empty; automl ranks and ensembles models on it. Give valid > 0.")

    _ensure_exporters()  # imports the exporters (and torch) now, not inside the first timed trial
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t_start = time.monotonic()
    search_deadline = t_start + budget
    kept: dict[str, list[_Kept]] = {f: [] for f in order}
    rows: list[dict[str, Any]] = []
    fam_info: dict[str, dict[str, Any]] = {}
    best_overall: list[float] = []
    for index, fam in enumerate(order):
        now = time.monotonic()
        remaining = max(0.0, search_deadline - now)
        shares = [BUDGET_SHARES[f] for f in order[index:]]
        share = remaining * BUDGET_SHARES[fam] / sum(shares)
        deadline = now + share
        space = space_of[fam]
        if progress:
            progress({"event": "family", "family": fam, "budget": share, "elapsed": now - t_start, "total": budget})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(direction=objective.direction,
                                        sampler=strat.make_sampler(space, seed + index, 1))  # fmt: skip

        study.enqueue_trial(_default_point(space, fam, bases[fam]))  # trial 0: the family's defaults

        def run_trial(trial: optuna.Trial, fam: str = fam, space: SearchSpace = space, deadline: float = deadline) -> float:
            params = space.suggest(trial)
            t0 = time.perf_counter()
            predictor = _fit_family(fam, params, bases[fam], train, valid, deadline)
            fit_s = time.perf_counter() - t0
            pred = _outputs(predictor, valid.X, task)
            value = float(metric_fn(valid.y, pred))
            trial.set_user_attr("fit_seconds", fit_s)
            if not math.isfinite(value):
                raise optuna.TrialPruned(f"validation {metric} is {value}")
            pool = kept[fam]
            pool.append(_Kept(fam, trial.number, value, predictor, np.asarray(pred, dtype=np.float64)))
            pool.sort(key=lambda k: (-sign * k.value, k.trial))
            del pool[candidates:]
            return value

        def after(study: optuna.Study, trial: Any, fam: str = fam) -> None:
            if trial.state == optuna.trial.TrialState.COMPLETE:
                best_overall.append(sign * float(trial.value))
            if progress:
                best = max(best_overall) * sign if best_overall else None
                progress({"event": "trial", "family": fam, "trial": trial.number, "state": trial.state.name,
                          "value": trial.value, "best": best, "elapsed": time.monotonic() - t_start, "total": budget})

        cap = LINEAR_MAX_TRIALS if fam == "linear" else None
        if max_trials is not None:
            cap = max_trials if cap is None else min(cap, max_trials)
        t_fam = time.monotonic()
        if share > 0:
            # A diverged MLP (FloatingPointError) fails its trial only; any other error is a bug and propagates.
            study.optimize(run_trial, n_trials=cap, timeout=share, callbacks=[after], catch=(FloatingPointError,))
        states = [t.state.name for t in study.trials]
        fam_info[fam] = {
            "budget_s": round(share, 3), "seconds": round(time.monotonic() - t_fam, 3), "trials": len(states),
            "completed": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
            "best_valid": kept[fam][0].value if kept[fam] else None,
        }  # fmt: skip
        for t in study.trials:
            if t.state != optuna.trial.TrialState.COMPLETE:
                continue
            rows.append({"model": f"{fam}#{t.number}", "family": fam, "trial": t.number,
                         f"valid_{metric}": float(t.value), f"test_{metric}": math.nan,
                         "fit_seconds": float(t.user_attrs.get("fit_seconds", math.nan)),
                         "params": json.dumps(t.params, sort_keys=True, default=str)})  # fmt: skip
    search_seconds = time.monotonic() - t_start

    library = [k for fam in order for k in kept[fam]]
    if not library:
        detail = ", ".join(f"{f}: {i['trials']} started" for f, i in fam_info.items())
        raise RuntimeError(NOTHING_FINISHED.format(budget=budget, detail=detail))
    library.sort(key=lambda k: (-sign * k.value, order.index(k.family), k.trial))
    best = library[0]

    # -- the ensemble ----------------------------------------------------------------
    t_ens = time.perf_counter()
    ens: EnsemblePredictor | None = None
    ens_info: dict[str, Any] = {"method": ensemble}
    y_valid = valid.y
    if ensemble == "weighted":
        tie = None if task == "regression" else "log_loss"
        weights, path = ensemble_selection([k.valid_pred for k in library], y_valid, metric=metric,
                                           n_iter=ensemble_iterations, tie_break=tie if metric != tie else None)
        chosen = [i for i in range(len(library)) if weights[i] > 0]
        ens = EnsemblePredictor([library[i].predictor for i in chosen], weights[chosen], method="weighted",
                                names=[library[i].name for i in chosen])
        ens_valid_pred = sum(weights[i] * library[i].valid_pred for i in chosen)
        ens_valid = float(metric_fn(y_valid, ens_valid_pred))
        ens_info.update(valid=ens_valid, valid_note="in-sample: weights were chosen on the validation split",
                        path=[float(v) for v in path],
                        members=[{"model": library[i].name, "family": library[i].family, "trial": library[i].trial,
                                  "weight": float(weights[i])} for i in chosen])
    elif ensemble == "stacked":
        if task != "regression" and len(np.unique(y_valid)) < data.schema.n_classes:
            raise DataError("A stacked ensemble needs every class in the validation split; use a larger valid "
                            "fraction or ensemble='weighted'.")
        feats = _stack_features([k.valid_pred for k in library], task)
        oof = _cross_fit_meta(feats, y_valid, task, seed)
        ens_valid = float(metric_fn(y_valid, oof)) if oof is not None else math.nan
        coef, intercept = _fit_meta(feats, y_valid, task, seed)
        ens = EnsemblePredictor([k.predictor for k in library], method="stacked", meta_coef=coef,
                                meta_intercept=intercept, names=[k.name for k in library])
        if oof is None:  # too few rows per class to cross-fit: in-sample, and say so
            ens_valid = float(metric_fn(y_valid, _apply_meta(feats, coef, intercept, task)))
        ens_info.update(valid=ens_valid, valid_note=("out-of-fold: 5-fold cross-fitted meta-model on the validation "
                                                     "split" if oof is not None else "in-sample: too few rows to "
                                                     "cross-fit"),
                        members=[{"model": k.name, "family": k.family, "trial": k.trial} for k in library],
                        meta_coef=coef.tolist(), meta_intercept=intercept.tolist())  # fmt: skip
    ens_seconds = time.perf_counter() - t_ens
    model: Any = best.predictor
    if ens is not None and sign * ens_info["valid"] >= sign * best.value:
        model = ens

    # -- test figures ----------------------------------------------------------------
    has_test = test is not None and len(test) > 0
    test_scores: dict[str, float] = {}
    if has_test:
        test_out = {k.name: np.asarray(_outputs(k.predictor, test.X, task), dtype=np.float64) for k in library}
        for name, out in test_out.items():
            test_scores[name] = float(metric_fn(test.y, out))
        if ens is not None:  # from the members' outputs above, as EnsemblePredictor computes it
            member_out = [test_out[name] for name in ens.names]
            if ens.method == "weighted":
                assert ens.weights is not None
                ens_test = sum(w * o for w, o in zip(ens.weights, member_out, strict=True))
            else:
                assert ens.meta_coef is not None and ens.meta_intercept is not None
                ens_test = _apply_meta(_stack_features(member_out, task), ens.meta_coef, ens.meta_intercept, task)
            test_scores["ensemble"] = float(metric_fn(test.y, ens_test))
            ens_info["test"] = test_scores["ensemble"]
    for row in rows:
        row[f"test_{metric}"] = test_scores.get(row["model"], math.nan)
    if ens is not None:
        rows.append({"model": "ensemble", "family": "ensemble", "trial": None, f"valid_{metric}": ens_info["valid"],
                     f"test_{metric}": test_scores.get("ensemble", math.nan), "fit_seconds": ens_seconds,
                     "params": json.dumps({m["model"]: round(m.get("weight", 1.0), 4) for m in ens_info["members"]})
                     if ensemble == "weighted" else json.dumps({"stacked": [m["model"] for m in ens_info["members"]]})})
    board = pd.DataFrame(rows, columns=["model", "family", "trial", f"valid_{metric}", f"test_{metric}",
                                        "fit_seconds", "params"])  # fmt: skip
    board["trial"] = board["trial"].astype("Int64")
    board["_ens"] = board["family"] != "ensemble"  # the ensemble first among equals
    board = board.sort_values([f"valid_{metric}", "_ens"], ascending=[not maximize, True], kind="mergesort",
                              na_position="last").drop(columns="_ens").reset_index(drop=True)  # fmt: skip
    board.insert(0, "rank", range(1, len(board) + 1))

    summary: dict[str, Any] = {
        "task": task, "target": data.schema.target, "metric": metric, "maximize": maximize,
        "time_budget_s": budget, "search_seconds": round(search_seconds, 3),
        "elapsed_s": round(time.monotonic() - t_start, 3), "strategy": getattr(strat, "name", str(strategy)),
        "seed": seed, "families": fam_info,
        "rows": {"train": len(train), "valid": len(valid), "test": len(test) if has_test else 0},
        "best": {"model": best.name, "family": best.family, "trial": best.trial, "valid": best.value,
                 "test": test_scores.get(best.name),
                 "params": json.loads(board.loc[board["model"] == best.name, "params"].iloc[0])},
        "ensemble": ens_info if ens is not None else None,
        "model": "ensemble" if model is ens and ens is not None else best.name,
        "test": {"ensemble": test_scores.get("ensemble"), "best": test_scores.get(best.name)} if has_test else None,
    }  # fmt: skip
    sample = valid.X.head(2000)
    return AutoMLResult(leaderboard=board, best_model=best.predictor, ensemble=ens, model=model, metric=metric,
                        maximize=maximize, summary=summary, sample=sample)  # fmt: skip


def _cross_fit_meta(features: np.ndarray, y: np.ndarray, task: str, seed: int) -> np.ndarray | None:
    """Out-of-fold meta-model predictions on the validation rows, or None when there are too few rows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(y)
    if task == "regression":
        if n < 2 * _STACK_FOLDS:
            return None
        splitter: Any = KFold(_STACK_FOLDS, shuffle=True, random_state=seed)
        out = np.zeros(n)
    else:
        counts = np.bincount(y)
        if counts[counts > 0].min() < _STACK_FOLDS or (counts == 0).any():
            return None
        splitter = StratifiedKFold(_STACK_FOLDS, shuffle=True, random_state=seed)
        out = np.zeros((n, len(counts)))
    for fit_idx, held in splitter.split(features, y):
        if task != "regression" and len(np.unique(y[fit_idx])) != len(counts):
            return None
        coef, intercept = _fit_meta(features[fit_idx], y[fit_idx], task, seed)
        out[held] = _apply_meta(features[held], coef, intercept, task)
    return out
