"""Our own converter from scikit-learn's histogram gradient boosting to an ONNX core graph.

We write it ourselves (rather than depend on skl2onnx) so that it keeps up with
scikit-learn releases and writes categorical splits exactly. It reads the fitted
trees (``estimator._predictors``: one ``TreePredictor`` per round and per class, whose
``nodes`` structured array holds ``feature_idx``, ``num_threshold``,
``missing_go_to_left``, ``left``, ``right``, ``is_leaf``, ``value``, and for
categorical splits ``is_categorical``/``bitset_idx`` into ``raw_left_cat_bitsets``)
and the starting score ``estimator._baseline_prediction``. These are private
attributes; the parity tests against scikit-learn guard every release.

The core graph
--------------
* input ``x``: ``float32 [N, n_features]``, the encoded matrix (numeric features, then
  categorical codes as floats), as :func:`modelyard.models.encode_matrix` builds it and
  :func:`modelyard.compress.with_raw_inputs` feeds it;
* one ``ai.onnx.ml.TreeEnsemble`` node (opset 5), ``SUM`` aggregation, one target per
  class (one for binary and regression), then ``Add`` of the baseline;
* binary: ``probabilities = [1 - sigmoid(s), sigmoid(s)]``; multiclass:
  ``probabilities = softmax(s)``; regression: ``prediction = s`` (``exp(s)`` for the
  log-link losses poisson and gamma). Outputs are ``float32``: ``probabilities
  [N, n_classes]`` or ``prediction [N]``.

Precision: why the ensemble runs in float64
-------------------------------------------
scikit-learn compares ``float64(x) <= threshold`` with float64 thresholds, which are
midpoints between adjacent training values and often not representable in float32.
Rounding a threshold ``t`` to the nearest float32 ``t32 > t`` would send an input equal
to ``t32`` left in ONNX but right in scikit-learn. We therefore cast ``x`` to float64
inside the graph (exact: every float32 is a float64) and keep the float64 thresholds,
so every split decision equals scikit-learn's for every float32 input; scikit-learn
sees the same float32 values, because :class:`~modelyard.models.SklearnPredictor`
feeds it the float32 encoded matrix. Leaf values are summed in float64 too, as in
scikit-learn; only the order of the sum differs (ONNX Runtime adds the baseline last),
a relative difference near 1e-15. The float32 outputs then differ from scikit-learn's
float64 ones by their rounding alone: at most half a float32 ulp, about 3e-8 for a
probability. (A float32 ensemble would be exact too with thresholds rounded *down*,
``x <= t  <=>  x <= max{f in float32 : f <= t}`` for float32 ``x``, but its float32
sum of hundreds of leaf values would add rounding error at every term.)

Categorical splits are exact as well: scikit-learn sends a code left when it is in the
split's left set, right when it is another known category, and the way of missing
values (``missing_go_to_left``) when it is NaN, negative or unseen in training. Each
becomes one ``BRANCH_MEMBER`` node testing the set that goes the *other* way than
missing values: the left set when missing values go right, the known categories not
in the left set when they go left. NaN follows ``nodes_missing_value_tracks_true = 0``,
so every value outside the set, known or not, takes the missing way. (scikit-learn
ordinal-encodes native categorical columns internally and moves them first; the
converter maps tree features and encoded categories back to the columns and codes of
``x``.)

Registered in :data:`modelyard.compress._export.ONNX_EXPORTERS` for
:class:`~modelyard.models.SklearnPredictor`, so ``export_onnx`` handles the
gradient-boosting baseline; estimators without a converter get a ``TypeError`` that
lists those supported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import sklearn
from onnx import TensorProto, helper, numpy_helper
from sklearn._loss.link import IdentityLink, LogitLink, LogLink, MultinomialLogit
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from modelyard.compress._export import ONNX_EXPORTERS
from modelyard.models._sklearn import SklearnPredictor, encoded_feature_names

__all__ = ["hgb_to_onnx", "sklearn_to_onnx", "SUPPORTED_ESTIMATORS", "ONNX_OPSET", "ONNX_ML_OPSET"]

#: Default-domain opset of the core graph (Softmax over one axis, Squeeze with an axes input).
ONNX_OPSET = 17
#: ``ai.onnx.ml`` opset: ``TreeEnsemble`` with ``BRANCH_MEMBER`` nodes is in opset 5. ONNX Runtime
#: implements it since late 2024 (microsoft/onnxruntime#22333, about 1.20); tested with 1.32.
ONNX_ML_OPSET = 5
_IR_VERSION = 10  # what ONNX Runtime releases with ai.onnx.ml opset 5 read

# TreeEnsemble node modes (ai.onnx.ml opset 5).
_BRANCH_LEQ, _BRANCH_LT, _BRANCH_MEMBER = 0, 1, 6
_AGGREGATE_SUM = 1
_POST_TRANSFORM_NONE = 0


def _supported_names() -> str:
    return ", ".join(sorted(t.__name__ for t in SUPPORTED_ESTIMATORS))


def _unsupported(estimator: Any) -> TypeError:
    return TypeError(
        f"Cannot convert {type(estimator).__name__} to ONNX: the tree-ensemble converter supports "
        f"{_supported_names()} (binary, multiclass and regression). Fit one of those, e.g. with "
        "modelyard.models.fit_gbm."
    )


# -- reading the fitted trees -----------------------------------------------------------------------


def _bitset_values(bitset: np.ndarray) -> np.ndarray:
    """The integers 0..255 whose bit is set in a scikit-learn bitset (8 x uint32)."""
    v = np.arange(256)
    words = np.asarray(bitset, dtype=np.uint32)[v // 32]
    return v[((words >> (v % 32).astype(np.uint32)) & 1).astype(bool)]


@dataclass(frozen=True)
class _FeatureLayout:
    """How the trees' feature indices and category values relate to the columns of ``x``."""

    columns: np.ndarray  # (n_features,): column of x read by each feature index the trees use
    categories: dict[int, np.ndarray]  # tree feature index -> value in x (the code) of each encoded category


def _feature_layout(estimator: Any) -> _FeatureLayout:
    """Undo scikit-learn's internal preprocessing of categorical features.

    With native categorical features, scikit-learn (>= 1.4) fits a ``ColumnTransformer``
    (``estimator._preprocessor``) that ordinal-encodes the categorical columns (value
    ``categories_[i]`` becomes ``i``; unseen values and NaN become NaN) and moves them in
    front of the numeric ones; the trees index and compare the transformed columns.
    The ONNX graph reads ``x`` directly, so each tree feature is mapped back to its
    column and each encoded category to its value in ``x``.
    """
    name = type(estimator).__name__
    n_features = int(estimator.n_features_in_)
    preprocessor = getattr(estimator, "_preprocessor", None)
    if preprocessor is None:
        if getattr(estimator, "is_categorical_", None) is not None and np.any(estimator.is_categorical_):
            raise TypeError(
                f"{name} has native categorical features but no internal preprocessor, a layout of scikit-learn "
                f"before 1.4 that the converter does not read (this is {sklearn.__version__}). Upgrade "
                "scikit-learn, or fit with GBMConfig(categorical='ordinal')."
            )
        return _FeatureLayout(np.arange(n_features), {})

    columns = np.full(n_features, -1, dtype=np.int64)
    categories: dict[int, np.ndarray] = {}
    for part, transformer, selected in preprocessor.transformers_:
        out = preprocessor.output_indices_.get(part, slice(0, 0))
        if isinstance(transformer, str) or out.stop == out.start:  # "drop"/"passthrough" of no columns
            continue
        selected = np.asarray(selected)
        inputs = np.flatnonzero(selected) if selected.dtype == bool else selected.astype(np.int64)
        columns[out] = inputs  # both parts map columns one to one, in order
        if part == "encoder":
            for feature, values in zip(range(out.start, out.stop), transformer.categories_, strict=True):
                try:
                    values = np.asarray(values, dtype=np.float64)
                except (TypeError, ValueError):  # string categories of a DataFrame column
                    values = np.array([0.5])  # fails the check below
                values = values[~np.isnan(values)]  # NaN is not a category: it takes the missing way
                if not np.array_equal(values, np.round(values)):
                    raise ValueError(
                        f"{name} was fitted on non-integer values in categorical column {int(columns[feature])}; "
                        "the converter expects integer category codes in a float matrix, as "
                        "modelyard.models.encode_matrix gives."
                    )
                categories[feature] = values
    if (columns < 0).any() or sorted(columns.tolist()) != list(range(n_features)):
        raise TypeError(
            f"{name}'s internal preprocessor has a layout the converter does not know "
            f"(scikit-learn {sklearn.__version__}); fit with GBMConfig(categorical='ordinal') to export it."
        )
    return _FeatureLayout(columns, categories)


class _EnsembleBuilder:
    """Accumulates the ``nodes_*``/``leaf_*`` attributes of one ``TreeEnsemble`` node.

    Interior nodes and leaves are numbered globally across trees, as opset 5 wants.
    """

    def __init__(self, layout: _FeatureLayout) -> None:
        self.layout = layout
        self.roots: list[int] = []
        self.featureids: list[np.ndarray] = []
        self.modes: list[np.ndarray] = []
        self.splits: list[np.ndarray] = []
        self.true_ids: list[np.ndarray] = []
        self.true_leafs: list[np.ndarray] = []
        self.false_ids: list[np.ndarray] = []
        self.false_leafs: list[np.ndarray] = []
        self.missing_true: list[np.ndarray] = []
        self.members: list[np.ndarray] = []  # each set followed by NaN, in the order of BRANCH_MEMBER nodes
        self.leaf_targets: list[np.ndarray] = []
        self.leaf_weights: list[np.ndarray] = []
        self.n_nodes = 0
        self.n_leaves = 0

    def add_tree(self, predictor: Any, target: int) -> None:
        """Append one scikit-learn ``TreePredictor`` contributing to ``target``."""
        nodes = predictor.nodes
        is_leaf = nodes["is_leaf"].astype(bool)
        leaves = np.flatnonzero(is_leaf)
        pos = np.empty(len(nodes), dtype=np.int64)  # position of each scikit-learn node among ONNX nodes or leaves
        pos[leaves] = self.n_leaves + np.arange(len(leaves))
        self.leaf_targets.append(np.full(len(leaves), target, dtype=np.int64))
        self.leaf_weights.append(nodes["value"][leaves].astype(np.float64))
        self.n_leaves += len(leaves)

        if not (~is_leaf).any():
            # A tree that is a single leaf: one node whose both branches reach that leaf.
            self.roots.append(self.n_nodes)
            self._append(
                featureids=[0], modes=[_BRANCH_LEQ], splits=[0.0], true_ids=[pos[0]], true_leafs=[1],
                false_ids=[pos[0]], false_leafs=[1], missing_true=[0],
            )
            return

        # Each interior node: which child is the ONNX "true" branch, its mode, split and member set.
        true_child = nodes["left"].astype(np.int64)  # numeric: true = (x <= threshold) = left
        false_child = nodes["right"].astype(np.int64)
        missing_true = nodes["missing_go_to_left"].astype(np.int64)  # NaN goes left iff missing_go_to_left
        modes = np.full(len(nodes), _BRANCH_LEQ, dtype=np.uint8)
        splits = nodes["num_threshold"].astype(np.float64)
        members: dict[int, np.ndarray] = {}
        for i in np.flatnonzero(~is_leaf & nodes["is_categorical"].astype(bool)):
            known = self.layout.categories[int(nodes["feature_idx"][i])]  # value in x of each encoded category
            encoded = _bitset_values(predictor.raw_left_cat_bitsets[nodes["bitset_idx"][i]])
            left_set = known[encoded[encoded < len(known)]]  # larger codes never reach the trees
            if nodes["missing_go_to_left"][i]:
                # Left = left set + missing + unseen: test the known categories that go right.
                member = np.setdiff1d(known, left_set)
                true_child[i], false_child[i] = false_child[i], true_child[i]
            else:
                member = left_set  # everything else (other categories, missing, unseen) goes right
            missing_true[i] = 0  # NaN takes the false branch, the way of missing values
            if len(member) == 0:
                # Nothing goes the non-missing way: "x < -inf" is false for every x, NaN included.
                modes[i], splits[i] = _BRANCH_LT, -np.inf
            else:
                modes[i], splits[i] = _BRANCH_MEMBER, 0.0  # the split value is ignored for BRANCH_MEMBER
                members[int(i)] = member

        # Number interior nodes in pre-order, true branch first. Set members are listed in node
        # order (the spec); a reader that consumes them while walking the tree true-first (as
        # onnx.reference does) then agrees.
        order: list[int] = []
        stack = [0]  # scikit-learn's root is node 0
        while stack:
            i = stack.pop()
            if not is_leaf[i]:
                order.append(i)
                stack += [int(false_child[i]), int(true_child[i])]
        interior = np.array(order, dtype=np.int64)
        pos[interior] = self.n_nodes + np.arange(len(interior))
        self.roots.append(int(pos[0]))
        self.members += [np.append(members[i].astype(np.float64), np.nan) for i in order if i in members]
        t, f = true_child[interior], false_child[interior]
        self._append(
            featureids=self.layout.columns[nodes["feature_idx"][interior].astype(np.int64)],
            modes=modes[interior], splits=splits[interior],
            true_ids=pos[t], true_leafs=is_leaf[t].astype(np.int64),
            false_ids=pos[f], false_leafs=is_leaf[f].astype(np.int64),
            missing_true=missing_true[interior],
        )

    def _append(self, **columns: Sequence[Any] | np.ndarray) -> None:
        for name, values in columns.items():
            getattr(self, name).append(np.asarray(values))
        self.n_nodes += len(columns["modes"])

    def node(self, input_name: str, output_name: str, n_targets: int) -> onnx.NodeProto:
        """The ``TreeEnsemble`` node (float64 splits and leaf weights; see the module docstring)."""

        def ints(parts: list[np.ndarray]) -> list[int]:
            return np.concatenate(parts).astype(np.int64).tolist()

        attrs: dict[str, Any] = dict(
            n_targets=n_targets,
            aggregate_function=_AGGREGATE_SUM,
            post_transform=_POST_TRANSFORM_NONE,
            tree_roots=self.roots,
            nodes_featureids=ints(self.featureids),
            nodes_modes=numpy_helper.from_array(np.concatenate(self.modes).astype(np.uint8), "nodes_modes"),
            nodes_splits=numpy_helper.from_array(np.concatenate(self.splits).astype(np.float64), "nodes_splits"),
            nodes_truenodeids=ints(self.true_ids),
            nodes_trueleafs=ints(self.true_leafs),
            nodes_falsenodeids=ints(self.false_ids),
            nodes_falseleafs=ints(self.false_leafs),
            nodes_missing_value_tracks_true=ints(self.missing_true),
            leaf_targetids=ints(self.leaf_targets),
            leaf_weights=numpy_helper.from_array(
                np.concatenate(self.leaf_weights).astype(np.float64), "leaf_weights"
            ),
        )
        if self.members:
            attrs["membership_values"] = numpy_helper.from_array(
                np.concatenate(self.members).astype(np.float64), "membership_values"
            )
        return helper.make_node(
            "TreeEnsemble", [input_name], [output_name], domain="ai.onnx.ml", name="trees", **attrs
        )


# -- the converter ------------------------------------------------------------------------------------


def hgb_to_onnx(
    estimator: HistGradientBoostingClassifier | HistGradientBoostingRegressor,
    *,
    class_order: Sequence[int] | None = None,
) -> onnx.ModelProto:
    """Convert a fitted histogram gradient-boosting model into an ONNX core graph.

    Parameters
    ----------
    estimator : HistGradientBoostingClassifier or HistGradientBoostingRegressor
        Fitted, on a float matrix whose categorical columns (if declared categorical)
        hold non-negative integer codes, as :func:`~modelyard.models.fit_gbm` does.
    class_order : sequence of int or None, default=None
        Classifiers only: output column ``i`` is the estimator's ``predict_proba``
        column ``class_order[i]``. None keeps the estimator's order.

    Returns
    -------
    onnx.ModelProto
        Input ``x`` ``float32 [N, n_features_in_]``; output ``probabilities``
        ``float32 [N, n_classes]`` or ``prediction`` ``float32 [N]``. It matches
        ``predict_proba``/``predict`` on the same float32 rows to float32 rounding
        (see the module docstring). Checked with ``onnx.checker``.

    Raises
    ------
    TypeError
        If the estimator is of another type, or uses a loss whose link function the
        converter does not know.
    ValueError
        If the estimator is not fitted, or ``class_order`` is not a permutation of
        the classes.
    """
    if not isinstance(estimator, SUPPORTED_ESTIMATORS):
        raise _unsupported(estimator)
    name = type(estimator).__name__
    if not hasattr(estimator, "_predictors"):
        raise ValueError(f"{name} is not fitted; call fit(...) before converting it to ONNX.")
    link = estimator._loss.link
    is_classifier = isinstance(estimator, HistGradientBoostingClassifier)
    if is_classifier and not isinstance(link, (LogitLink, MultinomialLogit)):
        raise TypeError(f"{name} with link {type(link).__name__} is not supported; use loss='log_loss'.")
    if not is_classifier and not isinstance(link, (IdentityLink, LogLink)):
        raise TypeError(
            f"{name} with loss {estimator.loss!r} (link {type(link).__name__}) is not supported; the converter "
            "handles identity-link losses (squared_error, absolute_error, quantile) and log-link ones "
            "(poisson, gamma)."
        )

    order: list[int] | None = None
    if class_order is not None:
        if not is_classifier:
            raise ValueError("class_order applies to classifiers only; this is a regressor.")
        n_classes = len(estimator.classes_)
        order = [int(i) for i in class_order]
        if sorted(order) != list(range(n_classes)):
            raise ValueError(f"class_order must be a permutation of 0..{n_classes - 1}, but got {list(class_order)}.")

    n_features = int(estimator.n_features_in_)
    n_targets = int(estimator.n_trees_per_iteration_)  # 1 (binary, regression) or n_classes
    builder = _EnsembleBuilder(_feature_layout(estimator))
    for round_predictors in estimator._predictors:
        for k, predictor in enumerate(round_predictors):
            builder.add_tree(predictor, k)
    baseline = np.asarray(estimator._baseline_prediction, dtype=np.float64).reshape(-1)  # (n_targets,)

    inits = [numpy_helper.from_array(baseline, "baseline")]
    nodes = [
        helper.make_node("Cast", ["x"], ["x64"], to=TensorProto.DOUBLE, name="to_float64"),
        builder.node("x64", "scores", n_targets),  # (N, n_targets) float64, baseline not included
        helper.make_node("Add", ["scores", "baseline"], ["raw"], name="add_baseline"),  # (N, n_targets)
    ]
    if is_classifier:
        n_classes = len(estimator.classes_)
        if n_targets == 1:
            inits.append(numpy_helper.from_array(np.array(1.0, dtype=np.float64), "one"))
            nodes += [
                helper.make_node("Sigmoid", ["raw"], ["p1"], name="sigmoid"),  # (N, 1)
                helper.make_node("Sub", ["one", "p1"], ["p0"], name="complement"),  # (N, 1)
                helper.make_node("Concat", ["p0", "p1"], ["proba64"], axis=1, name="binary_proba"),  # (N, 2)
            ]
        else:
            nodes.append(helper.make_node("Softmax", ["raw"], ["proba64"], axis=1, name="softmax"))  # (N, K)
        proba = "proba64"
        if order is not None and order != list(range(n_classes)):
            inits.append(numpy_helper.from_array(np.array(order, dtype=np.int64), "class_order"))
            nodes.append(helper.make_node("Gather", [proba, "class_order"], ["proba_ordered"], axis=1, name="reorder"))
            proba = "proba_ordered"
        nodes.append(helper.make_node("Cast", [proba], ["probabilities"], to=TensorProto.FLOAT, name="to_float32"))
        output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes])
    else:
        value = "raw"
        if isinstance(link, LogLink):
            nodes.append(helper.make_node("Exp", ["raw"], ["mean"], name="inverse_log_link"))
            value = "mean"
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
        nodes += [
            helper.make_node("Squeeze", [value, "axis1"], ["pred64"], name="squeeze"),  # (N,)
            helper.make_node("Cast", ["pred64"], ["prediction"], to=TensorProto.FLOAT, name="to_float32"),
        ]
        output = helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N"])

    graph = helper.make_graph(
        nodes,
        "hgb_core",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_features])],
        [output],
        initializer=inits,
        doc_string=(
            f"{name}: {len(estimator._predictors)} rounds x {n_targets} trees, "
            f"{builder.n_leaves} leaves; converted by modelyard from scikit-learn {sklearn.__version__}."
        ),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid("ai.onnx.ml", ONNX_ML_OPSET)],
        producer_name="modelyard",
    )
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return model


@ONNX_EXPORTERS.register(SklearnPredictor)
def sklearn_to_onnx(predictor: SklearnPredictor) -> onnx.ModelProto:
    """The core ONNX graph of a :class:`~modelyard.models.SklearnPredictor` (the ``ONNX_EXPORTERS`` entry).

    The predictor must feed its estimator the encoded matrix (``inputs="encoded"``),
    whose layout is the core input ``x``; a raw-frame pipeline does preprocessing the
    converter cannot see.

    Raises
    ------
    TypeError
        If the predictor is not a ``SklearnPredictor``, takes raw frames, or wraps an
        estimator the converter does not support (the message lists those it does).
    """
    if not isinstance(predictor, SklearnPredictor):
        raise TypeError(f"sklearn_to_onnx converts a SklearnPredictor; got {type(predictor).__name__}.")
    if predictor.inputs != "encoded":
        raise TypeError(
            f"Cannot convert a SklearnPredictor with inputs='raw' ({type(predictor.estimator).__name__}): its "
            "preprocessing is opaque to the converter. Fit the estimator on modelyard.models.encode_matrix(X, schema) "
            "and wrap it with inputs='encoded'."
        )
    convert = next((f for t, f in _ESTIMATOR_CONVERTERS.items() if isinstance(predictor.estimator, t)), None)
    if convert is None:
        raise _unsupported(predictor.estimator)
    n_expected = len(encoded_feature_names(predictor.schema))
    if int(predictor.estimator.n_features_in_) != n_expected:  # SklearnPredictor checks this too
        raise ValueError(
            f"{type(predictor.estimator).__name__} takes {predictor.estimator.n_features_in_} features; "
            f"the schema encodes {n_expected}."
        )
    order = predictor.proba_columns
    return convert(predictor.estimator, class_order=None if order is None else order.tolist())


#: Estimator types the converter handles, and the function converting each.
_ESTIMATOR_CONVERTERS: dict[type, Callable[..., onnx.ModelProto]] = {
    HistGradientBoostingClassifier: hgb_to_onnx,
    HistGradientBoostingRegressor: hgb_to_onnx,
}
SUPPORTED_ESTIMATORS: tuple[type, ...] = tuple(_ESTIMATOR_CONVERTERS)
