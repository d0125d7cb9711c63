"""Tree SHAP for tree ensembles: exact Shapley values in time polynomial in the trees' size.

A tree ensemble is read into one flat set of root-to-leaf *paths*. Along a path, the
splits on one feature merge into one element: the feature's *one fraction* (does the
row satisfy every split of the path on that feature: 1 or 0) and its *zero fraction*
(the product of the training cover ratios of those splits). This is the form of
GPUTreeShap (Mitchell et al., 2022); the split rule itself (a threshold, a set of
categories, a missing-value direction) only decides the one fractions, so categorical
set splits are handled exactly. Two games are explained:

* ``tree_path_dependent`` (no background): Lundberg et al. (2020, Algorithm 2). An
  absent feature follows both branches weighted by training cover. Attributions sum to
  ``f(x) - E_cover[f]``. The per-path EXTEND/UNWIND recursions run in numba, over rows
  in parallel.
* ``interventional`` (a background): the value function ``E_b[f(x_S, b_{not S})]`` of
  :func:`~modelyard.explain.exact_shapley`. For one background row ``b`` a path is
  reachable in a coalition ``S`` iff ``S`` holds every feature where only ``x``
  satisfies the path (set ``A``) and none where only ``b`` does (set ``B``); that
  game's Shapley values are closed form (``+v (|A|-1)! |B|! / (|A|+|B|)!`` to each
  member of ``A``, ``-v |A|! (|B|-1)! / (|A|+|B|)!`` to each member of ``B``). With the
  same background the values equal exact interventional Shapley values of the margin.

Both explain the ensemble's *raw output*: log-odds (or per-class scores) for gradient
boosting classifiers, the prediction for regressors, class probabilities for random
forests and decision trees. Supported: scikit-learn ``HistGradientBoosting*``
(numeric and native categorical splits; shap's TreeExplainer reads categorical splits
as thresholds and gets those models wrong), ``RandomForest*``, ``ExtraTrees*``,
``DecisionTree*``, and LightGBM (``LGBMClassifier``, ``LGBMRegressor``, ``Booster``),
alone or inside a :class:`~modelyard.models.SklearnPredictor` on the encoded matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from modelyard.explain._explanation import Explanation
from modelyard.explain._masking import (
    Background,
    check_features,
    resolve_background,
    select_rows,
)

__all__ = ["TreeModel", "tree_model", "tree_shap"]

_NUMERIC, _HGB_CATEGORICAL, _LGBM_CATEGORICAL = 0, 1, 2
#: Rows on which tree_shap(check_efficiency=True) verifies efficiency.
EFFICIENCY_CHECK_ROWS = 512
_NAN_DEFAULT, _ZERO_DEFAULT, _NAN_AS_ZERO = 0, 1, 2  # missing-value rules of numeric splits


@dataclass
class _Tree:
    """One tree in node arrays (children -1 at leaves); ``value`` (n_nodes, n_outputs) is read at leaves."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    default_left: np.ndarray
    missing: np.ndarray
    kind: np.ndarray
    category_set: np.ndarray  # row of the model's left-category sets, or -1
    known_set: np.ndarray  # row of the model's known-category sets (HGB), or -1
    value: np.ndarray
    cover: np.ndarray


@dataclass
class TreeModel:
    """A tree ensemble as flat paths (see the module docstring).

    Attributes
    ----------
    n_columns : int
        Columns of the input matrix the splits read.
    base_offset : ndarray of shape (n_outputs,)
        Added to the sum of the trees (e.g. the baseline of gradient boosting).
    output_kind : str
        ``log-odds``, ``score`` (multiclass raw scores), ``probability`` or ``prediction``.
    """

    n_columns: int
    n_outputs: int
    base_offset: np.ndarray
    output_kind: str
    # internal nodes, numbered across all trees
    node_feature: np.ndarray
    node_threshold: np.ndarray
    node_default_left: np.ndarray
    node_missing: np.ndarray
    node_kind: np.ndarray
    node_set: np.ndarray
    node_known: np.ndarray
    left_sets: np.ndarray  # (n_sets, width) bool: a category in the set goes left
    known_sets: np.ndarray  # (n_known, width) bool
    # paths and their per-feature elements
    path_value: np.ndarray  # (P, n_outputs)
    path_start: np.ndarray
    path_len: np.ndarray
    elem_column: np.ndarray
    elem_zero: np.ndarray
    cond_start: np.ndarray
    cond_len: np.ndarray
    cond_node: np.ndarray
    cond_left: np.ndarray
    #: the model's own input preprocessing (HGB's ordinal encoding of categorical columns), if any
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None
    #: input column read by each internal feature index (HGB puts categorical columns first)
    column_of_feature: np.ndarray | None = None
    _tables: tuple[int, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """The matrix the splits read, from the estimator's input matrix (float64)."""
        if self.preprocess is not None:
            x = self.preprocess(x)
        return np.asarray(x, dtype=np.float64)

    def decisions(self, x: np.ndarray) -> np.ndarray:
        """Whether each row goes left at each internal node: bool ``(n_rows, n_nodes)``, from :meth:`prepare` output."""
        known = self.known_sets if len(self.known_sets) else np.zeros((1, self.left_sets.shape[1]), dtype=bool)
        left_sets = self.left_sets if len(self.left_sets) else np.zeros((1, 256), dtype=bool)
        return _kernels().decide(np.ascontiguousarray(x, dtype=np.float64), self.node_feature, self.node_threshold,
                                    self.node_default_left, self.node_missing, self.node_kind, self.node_set,
                                    self.node_known, left_sets, known)

    def tables(self, max_len: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Per-path lookup tables of path-dependent Tree SHAP weights (built once, cached).

        For a path of ``d <= max_len`` features, entry ``[pattern, k]`` is the weight
        ``(o_k - z_k) * unwound_sum_k`` of its ``k``-th feature when the row satisfies
        the features in the bit pattern; a row then costs ``O(d)`` per path instead of
        ``O(d^2)`` (the idea of Fast TreeSHAP v2, Yang 2021). Longer paths get offset -1
        and are computed directly.
        """
        cached = self._tables
        if cached is not None and cached[0] == max_len:
            return cached[1], cached[2]
        sizes = np.where(self.path_len <= max_len, (2 ** np.minimum(self.path_len, max_len)) * self.path_len, 0)
        offsets = np.where(self.path_len <= max_len, np.concatenate([[0], np.cumsum(sizes)[:-1]]), -1).astype(np.int64)
        flat = _kernels().fill_tables(self.path_start, self.path_len, self.elem_zero, offsets, int(sizes.sum()))
        self._tables = (max_len, offsets, flat)
        return offsets, flat

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The raw output ``(n_rows, n_outputs)``: the sum over trees of the leaf each row reaches, plus the offset."""
        d = self.decisions(self.prepare(x))
        out = _kernels().leaf_sums(d, self.path_start, self.path_len, self.path_value, self.cond_start,
                                      self.cond_len, self.cond_node, self.cond_left)
        return out + self.base_offset


def _flatten(trees: list[_Tree], n_columns: int, n_outputs: int, base: np.ndarray, kind: str,
             left_sets: np.ndarray, known_sets: np.ndarray) -> TreeModel:
    feats, thr, dl, miss, kinds, sets, known = [], [], [], [], [], [], []
    pv, ps, pl, ec, ez, cs, cl, cn, cleft = [], [], [], [], [], [], [], [], []
    offset = 0
    for tree in trees:
        internal = np.flatnonzero(tree.left >= 0)
        gid = np.full(len(tree.left), -1, dtype=np.int64)
        gid[internal] = offset + np.arange(len(internal))
        offset += len(internal)
        feats.append(tree.feature[internal])
        thr.append(tree.threshold[internal])
        dl.append(tree.default_left[internal])
        miss.append(tree.missing[internal])
        kinds.append(tree.kind[internal])
        sets.append(tree.category_set[internal])
        known.append(tree.known_set[internal])
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(0, [])]
        while stack:
            node, steps = stack.pop()
            if tree.left[node] < 0:
                by_column: dict[int, list[tuple[int, bool, float]]] = {}
                for parent, went_left in steps:
                    child = tree.left[parent] if went_left else tree.right[parent]
                    ratio = tree.cover[child] / tree.cover[parent] if tree.cover[parent] > 0 else 0.0
                    by_column.setdefault(int(tree.feature[parent]), []).append((int(gid[parent]), went_left, ratio))
                ps.append(len(ec))
                pl.append(len(by_column))
                pv.append(tree.value[node])
                for column, conds in by_column.items():
                    ec.append(column)
                    ez.append(math.prod(c[2] for c in conds))
                    cs.append(len(cn))
                    cl.append(len(conds))
                    cn.extend(c[0] for c in conds)
                    cleft.extend(c[1] for c in conds)
                continue
            stack.append((int(tree.right[node]), [*steps, (node, False)]))
            stack.append((int(tree.left[node]), [*steps, (node, True)]))
    cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
    return TreeModel(
        n_columns=n_columns, n_outputs=n_outputs, base_offset=np.asarray(base, dtype=np.float64).reshape(n_outputs),
        output_kind=kind, node_feature=cat(feats, np.int64), node_threshold=cat(thr, np.float64),
        node_default_left=cat(dl, bool), node_missing=cat(miss, np.int8), node_kind=cat(kinds, np.int8),
        node_set=cat(sets, np.int64), node_known=cat(known, np.int64), left_sets=left_sets, known_sets=known_sets,
        path_value=np.asarray(pv, dtype=np.float64).reshape(len(pv), n_outputs),
        path_start=np.asarray(ps, dtype=np.int64), path_len=np.asarray(pl, dtype=np.int64),
        elem_column=np.asarray(ec, dtype=np.int64), elem_zero=np.asarray(ez, dtype=np.float64),
        cond_start=np.asarray(cs, dtype=np.int64), cond_len=np.asarray(cl, dtype=np.int64),
        cond_node=np.asarray(cn, dtype=np.int64), cond_left=np.asarray(cleft, dtype=bool),
    )


def _bits(bitsets: np.ndarray, width: int = 256) -> np.ndarray:
    """uint32 bitsets ``(n, 8)`` -> bool ``(n, width)``."""
    words = np.asarray(bitsets, dtype=np.uint32).reshape(len(bitsets), -1)
    v = np.arange(width)
    return ((words[:, v >> 5] >> (v & 31).astype(np.uint32)) & 1).astype(bool)


def _hgb(est: Any) -> TreeModel:
    known_bitsets, f_idx_map = est._bin_mapper.make_known_categories_bitsets()
    known_sets = _bits(known_bitsets) if len(known_bitsets) else np.zeros((0, 256), dtype=bool)
    trees, left_sets = [], []
    per_iter = len(est._predictors[0])
    for it in est._predictors:
        for k, pred in enumerate(it):
            nodes = pred.nodes
            leaf = nodes["is_leaf"].astype(bool)
            is_cat = nodes["is_categorical"].astype(bool) & ~leaf
            offset = len(left_sets)
            if len(pred.raw_left_cat_bitsets):
                left_sets.extend(_bits(pred.raw_left_cat_bitsets))
            value = np.zeros((len(nodes), per_iter))
            value[:, k] = nodes["value"]
            feature = nodes["feature_idx"].astype(np.int64)
            trees.append(_Tree(
                left=np.where(leaf, -1, nodes["left"].astype(np.int64)),
                right=np.where(leaf, -1, nodes["right"].astype(np.int64)),
                feature=feature, threshold=nodes["num_threshold"].astype(np.float64),
                default_left=nodes["missing_go_to_left"].astype(bool),
                missing=np.full(len(nodes), _NAN_DEFAULT, dtype=np.int8),
                kind=np.where(is_cat, _HGB_CATEGORICAL, _NUMERIC).astype(np.int8),
                category_set=np.where(is_cat, offset + nodes["bitset_idx"].astype(np.int64), -1),
                known_set=np.where(is_cat, f_idx_map[feature].astype(np.int64), -1),
                value=value, cover=nodes["count"].astype(np.float64),
            ))
    base = np.asarray(est._baseline_prediction, dtype=np.float64).reshape(-1)
    classifier = hasattr(est, "classes_")
    kind = ("log-odds" if per_iter == 1 else "score") if classifier else "prediction"
    sets = np.array(left_sets, dtype=bool).reshape(-1, 256)
    model = _flatten(trees, est.n_features_in_, per_iter, base, kind, sets, known_sets)
    if est._preprocessor is not None:
        # scikit-learn ordinal-encodes categorical columns (unknown -> NaN) and puts them first
        is_cat = np.asarray(est.is_categorical_, dtype=bool)
        model.column_of_feature = np.concatenate([np.flatnonzero(is_cat), np.flatnonzero(~is_cat)]).astype(np.int64)
        names = getattr(est, "feature_names_in_", None)

        def preprocess(x: np.ndarray) -> np.ndarray:
            frame = x if names is None else pd.DataFrame(x, columns=names)
            return np.asarray(est._preprocessor.transform(frame), dtype=np.float64)

        model.preprocess = preprocess
    return model


def _sklearn_trees(est: Any) -> TreeModel:
    estimators = list(getattr(est, "estimators_", [est]))
    classifier = hasattr(est, "classes_")
    trees = []
    for e in estimators:
        t = e.tree_
        if classifier:
            value = t.value[:, 0, :] / len(estimators)  # class fractions
        else:
            value = t.value[:, :, 0] / len(estimators)
        n = t.node_count
        go_left = getattr(t, "missing_go_to_left", np.zeros(n, dtype=np.uint8))
        trees.append(_Tree(
            left=t.children_left.astype(np.int64), right=t.children_right.astype(np.int64),
            feature=np.maximum(t.feature, 0).astype(np.int64), threshold=t.threshold.astype(np.float64),
            default_left=np.asarray(go_left).astype(bool), missing=np.full(n, _NAN_DEFAULT, dtype=np.int8),
            kind=np.zeros(n, dtype=np.int8), category_set=np.full(n, -1), known_set=np.full(n, -1),
            value=value, cover=t.weighted_n_node_samples.astype(np.float64),
        ))
    n_out = trees[0].value.shape[1]
    return _flatten(trees, est.n_features_in_, n_out, np.zeros(n_out), "probability" if classifier else "prediction",
                    np.zeros((0, 256), dtype=bool), np.zeros((0, 256), dtype=bool))


def _lightgbm_nodes(root: dict) -> list[dict]:
    """The nodes of a LightGBM tree dump in pre-order, each internal one with ``_left``/``_right`` positions."""
    nodes: list[dict] = []

    def walk(node: dict) -> int:
        me = len(nodes)
        nodes.append(node)
        if "leaf_value" not in node:
            node["_left"] = walk(node["left_child"])
            node["_right"] = walk(node["right_child"])
        return me

    walk(root)
    return nodes


def _lightgbm(model: Any) -> TreeModel:
    booster = getattr(model, "booster_", model)
    dump = booster.dump_model()
    per_iter = int(dump.get("num_tree_per_iteration", 1))
    n_columns = int(dump["max_feature_idx"]) + 1
    cat_lists: list[list[int]] = []
    trees = []
    for i, info in enumerate(dump["tree_info"]):
        nodes = _lightgbm_nodes(info["tree_structure"])
        n = len(nodes)
        left, right = np.full(n, -1), np.full(n, -1)
        feature, thr = np.zeros(n, dtype=np.int64), np.zeros(n)
        default_left, missing = np.zeros(n, dtype=bool), np.full(n, _NAN_DEFAULT, dtype=np.int8)
        kind, cset = np.zeros(n, dtype=np.int8), np.full(n, -1)
        value, cover = np.zeros((n, per_iter)), np.zeros(n)
        for j, nd in enumerate(nodes):
            if "leaf_value" in nd:
                value[j, i % per_iter] = nd["leaf_value"]
                cover[j] = nd.get("leaf_count", 1.0)
                continue
            left[j], right[j] = nd["_left"], nd["_right"]
            feature[j] = nd["split_feature"]
            default_left[j] = bool(nd.get("default_left", False))
            cover[j] = nd.get("internal_count", 1.0)
            mt = nd.get("missing_type", "None")
            if nd["decision_type"] == "==":
                kind[j] = _LGBM_CATEGORICAL
                missing[j] = _NAN_DEFAULT if mt == "NaN" else _NAN_AS_ZERO
                cset[j] = len(cat_lists)
                cat_lists.append([int(c) for c in str(nd["threshold"]).split("||")])
            else:
                thr[j] = float(nd["threshold"])
                missing[j] = {"NaN": _NAN_DEFAULT, "Zero": _ZERO_DEFAULT}.get(mt, _NAN_AS_ZERO)
        trees.append(_Tree(left, right, feature, thr, default_left, missing, kind, cset, np.full(n, -1), value, cover))
    width = max([256] + [max(c) + 1 for c in cat_lists if c])
    sets = np.zeros((len(cat_lists), width), dtype=bool)
    for r, cats in enumerate(cat_lists):
        sets[r, [c for c in cats if c >= 0]] = True
    objective = str(dump.get("objective", ""))
    kind = ("log-odds" if per_iter == 1 else "score") if objective.startswith(("binary", "multiclass", "cross_entropy")) else "prediction"
    return _flatten(trees, n_columns, per_iter, np.zeros(per_iter), kind, sets, np.zeros((0, width), dtype=bool))


def tree_model(estimator: Any) -> TreeModel:
    """Read a fitted tree ensemble into a :class:`TreeModel`.

    Raises
    ------
    TypeError
        Not a supported tree ensemble (the message lists the supported ones).
    """
    name = type(estimator).__name__
    module = type(estimator).__module__
    if name in ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor"):
        return _hgb(estimator)
    if name in ("RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier", "ExtraTreesRegressor",
                "DecisionTreeClassifier", "DecisionTreeRegressor", "ExtraTreeClassifier", "ExtraTreeRegressor"):
        return _sklearn_trees(estimator)
    if module.startswith("lightgbm") and name in ("LGBMClassifier", "LGBMRegressor", "LGBMModel", "Booster"):
        return _lightgbm(estimator)
    raise TypeError(
        f"tree_shap does not know {name}. It reads scikit-learn HistGradientBoosting*, RandomForest*, ExtraTrees*, "
        "DecisionTree* and LightGBM models (alone or in a SklearnPredictor on the encoded matrix); "
        "use kernel_shap(...) or exact_shapley(...) for any other model."
    )


# -- numba kernels ---------------------------------------------------------------------


def _kernels() -> Any:
    """The compiled kernels (:mod:`modelyard.explain._tree_kernels`); numba is needed from here on."""
    try:
        from modelyard.explain import _tree_kernels
    except ImportError as exc:  # pragma: no cover - numba comes with shap
        raise ImportError("tree_shap needs numba (pip install numba, or shap, which installs it).") from exc
    return _tree_kernels


# -- the public function ---------------------------------------------------------------


def _resolve(model: Any) -> tuple[Any, list[str] | None, Any]:
    """``(estimator, the encoded column names or None, the SklearnPredictor or None)``."""
    from modelyard.models import SklearnPredictor, encoded_feature_names

    if isinstance(model, SklearnPredictor):
        if model.inputs != "encoded":
            raise TypeError(
                "tree_shap reads the trees of a SklearnPredictor on the encoded matrix (inputs='encoded'); this one "
                "preprocesses raw columns itself, so its splits are not on raw features. Use kernel_shap(...)."
            )
        return model.estimator, encoded_feature_names(model.schema), model
    if hasattr(model, "predict_proba") and hasattr(model, "feature_names") and not hasattr(model, "fit"):
        raise TypeError(
            f"tree_shap reads the trees of a tree ensemble; {type(model).__name__} is not one (or hides it). "
            "Use kernel_shap(...) or exact_shapley(...), which work on any model."
        )
    return model, None, None


def tree_shap(
    model: Any,
    X: pd.DataFrame | np.ndarray,
    *,
    rows: int | Sequence[int] | None = None,
    background: Background | pd.DataFrame | None = None,
    n_background: int = 100,
    random_state: int | None = 0,
    check_efficiency: bool = True,
    chunk_rows: int = 4096,
) -> Explanation:
    """Tree SHAP values of a tree ensemble's raw output, per raw feature.

    Parameters
    ----------
    model : SklearnPredictor or fitted tree ensemble
        A :class:`~modelyard.models.SklearnPredictor` on the encoded matrix (the
        attributions are per raw feature of its schema), or a bare supported estimator
        (attributions per input column; ``X`` is then its numeric input).
    X : pandas.DataFrame or ndarray
        Raw rows for a predictor; the estimator's input matrix (or a DataFrame of its
        columns) for a bare estimator.
    rows : int, sequence of int or None, default=None
        Positions in ``X`` to explain; all if None.
    background : Background, pandas.DataFrame or None, default=None
        None: path-dependent Tree SHAP (cover-weighted; sums to ``f(x) - E_cover[f]``).
        Rows (summarized by k-means to ``n_background`` if there are more) or a
        :class:`Background`: interventional Tree SHAP (sums to ``f(x) - E_b[f(b)]``),
        equal to :func:`exact_shapley` of the raw output with that background.
    n_background : int, default=100
    random_state : int or None, default=0
        Seeds the k-means summary of the background.
    check_efficiency : bool, default=True
        Check, on up to 512 evenly spread rows, that base value plus attributions
        equal the ensemble's raw output (computed from the same paths, without
        calling the model): a guard against misread trees.
    chunk_rows : int, default=4096
        Rows per batch of split decisions.

    Returns
    -------
    Explanation
        ``method`` is ``tree_path_dependent`` or ``tree_interventional``; outputs are
        ``log-odds(<class>)`` (binary boosting), ``score(<class>)`` (multiclass
        boosting), class probabilities (forests) or ``prediction``.

    Raises
    ------
    TypeError
        A model that is not a supported tree ensemble (the message names the methods
        that work on any model).
    DataError, SchemaMismatchError
        A row position out of range; ``X`` or the background without the model's features.
    """
    estimator, columns, predictor = _resolve(model)
    tm = tree_model(estimator)
    if predictor is not None:
        features = check_features(predictor, X, "X")
        from modelyard.models import encode_matrix

        def matrix(frame: pd.DataFrame) -> np.ndarray:
            return encode_matrix(frame[features], predictor.schema).astype(np.float64)

        player_of_column = np.array([features.index(c) for c in columns], dtype=np.int64)
        classes = [str(c) for c in predictor.schema.classes]
        if predictor.task == "regression":
            keep = list(range(tm.n_outputs))
        elif tm.n_outputs == 1:  # binary boosting: one log-odds output
            keep, classes = [0], classes[1:]
        else:  # estimator's class order -> the schema's
            keep = [int(c) for c in predictor.proba_columns]
            if predictor.task == "binary":
                keep, classes = keep[1:], classes[1:]
    else:
        if isinstance(X, pd.DataFrame):
            features = [str(c) for c in X.columns]
        else:
            X = pd.DataFrame(np.asarray(X, dtype=np.float64))
            features = [f"x{j}" for j in range(X.shape[1])]
            X.columns = features
        if len(features) != tm.n_columns:
            from modelyard.errors import SchemaMismatchError

            raise SchemaMismatchError(f"The model reads {tm.n_columns} columns; X has {len(features)}: {features}.")

        def matrix(frame: pd.DataFrame) -> np.ndarray:
            return frame[features].to_numpy(dtype=np.float64)

        player_of_column = np.arange(tm.n_columns)
        found = getattr(estimator, "classes_", None)
        classes = [str(c) for c in found] if found is not None else []
        if len(classes) == 2:  # binary: the positive class (log-odds, or its probability for forests)
            keep, classes = [tm.n_outputs - 1], classes[1:]
        else:
            keep = list(range(tm.n_outputs))
    if len(X) == 0:
        from modelyard.errors import DataError

        raise DataError("X has no rows to explain.")
    idx = select_rows(X, rows)
    x = matrix(X.iloc[idx])
    kernels = _kernels()
    n_players = len(features)
    columns_read = tm.elem_column if tm.column_of_feature is None else tm.column_of_feature[tm.elem_column]
    elem_player = player_of_column[columns_read]
    max_len = int(tm.path_len.max()) if len(tm.path_len) else 0
    args = (tm.path_start, tm.path_len, tm.path_value, elem_player)
    conds = (tm.cond_start, tm.cond_len, tm.cond_node, tm.cond_left)
    phi = np.zeros((len(idx), n_players, tm.n_outputs))
    if background is None:
        method, n_bg = "tree_path_dependent", 0
        offsets, tables = tm.tables()
        z_prod = np.ones(len(tm.path_len))
        if len(tm.elem_zero):
            np.multiply.at(z_prod, np.repeat(np.arange(len(tm.path_len)), tm.path_len), tm.elem_zero)
        base = np.broadcast_to(z_prod @ tm.path_value + tm.base_offset, (len(idx), tm.n_outputs)).copy()
        for lo in range(0, len(idx), chunk_rows):
            d = tm.decisions(tm.prepare(x[lo : lo + chunk_rows]))
            phi[lo : lo + chunk_rows] = kernels.path_dependent(d, *args, tm.elem_zero, *conds, n_players, max_len,
                                                                  offsets, tables)
    else:
        method = "tree_interventional"
        if predictor is not None:
            bg = resolve_background(predictor, background, X, n_background, random_state)
        elif isinstance(background, Background):
            bg = background
        else:
            frame = background if isinstance(background, pd.DataFrame) else pd.DataFrame(
                np.asarray(background, dtype=np.float64), columns=features)
            bg = Background(frame[features], np.ones(len(frame)))
        b = matrix(bg.frame)
        db = tm.decisions(tm.prepare(b))
        fact = np.array([math.factorial(k) for k in range(max_len + 1)], dtype=np.float64)
        base = np.broadcast_to(bg.weights @ tm.predict(b), (len(idx), tm.n_outputs)).copy()
        for lo in range(0, len(idx), chunk_rows):
            dx = tm.decisions(tm.prepare(x[lo : lo + chunk_rows]))
            phi[lo : lo + chunk_rows] = kernels.interventional(
                dx, db, bg.weights, *args, *conds, n_players, max_len, fact)
        n_bg = len(bg)
    if check_efficiency and len(idx):
        some = np.linspace(0, len(idx) - 1, min(len(idx), EFFICIENCY_CHECK_ROWS)).astype(np.int64)
        fx = tm.predict(x[some])
        gap = float(np.abs(base[some] + phi[some].sum(axis=1) - fx).max())
        if gap > 1e-6 * max(1.0, float(np.abs(fx).max())):  # pragma: no cover - a reader bug, not a user error
            raise RuntimeError(f"Tree SHAP values miss the model's output by {gap:.3g}; please report this model.")
    phi, base = phi[:, :, keep], base[:, keep]
    if tm.output_kind in ("log-odds", "score"):
        out_names = [f"{tm.output_kind}({c})" for c in classes]
    elif tm.output_kind == "probability":
        out_names = classes
    else:
        out_names = ["prediction"] if len(keep) == 1 else [f"prediction[{k}]" for k in keep]
    values, base_values = (phi[:, :, 0], base[:, 0]) if len(keep) == 1 else (phi, base)
    info = {"output": tm.output_kind, "paths": len(tm.path_len), "background_rows": n_bg}
    return Explanation(values, base_values, X.iloc[idx].reset_index(drop=True)[features], features,
                       out_names, method, idx, info)
