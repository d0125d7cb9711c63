"""Explain a trained model in one call: what the pipeline's ``explain`` step and ``modelyard explain`` run.

:func:`explain_model` computes, on rows of one split,

* **permutation importance** with Student-t intervals (:func:`permutation_importance`);
* a **SHAP summary**: Tree SHAP for a gradient-boosting model stored as ONNX (its
  ``TreeEnsemble`` is read back into a :class:`~modelyard.explain.TreeModel`;
  interventional, so the values are exact Shapley values of the log-odds for the
  background), exact Shapley values for a model with few features, Kernel SHAP
  otherwise, all on a small k-means background of training rows;
* **PDP/ICE** of the most important features (:func:`partial_dependence`);
* **per-row explanations** of chosen rows (SHAP values, LIME coefficients or
  integrated gradients), and **integrated gradients** for differentiable models
  (heatmaps for image models);

and returns everything as plain JSON data. :func:`explanation_figures` draws the plots
from that data alone (importance bars, beeswarm, dependence, PDP/ICE, per-row
waterfalls or bars, IG heatmaps), so the step's PNG files, the CLI's and the HTML
report's charts are the same drawings of the same numbers.

The defaults are sized to run in seconds: 500 rows for permutation importance and
PDP, 100 rows for the SHAP summary, 20 background rows, a 20-point grid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard.errors import DataError, SpecError

__all__ = ["EXPLAIN_METHODS", "ROW_METHODS", "ExplainOptions", "explain_model", "explanation_figures",
           "onnx_tree_model", "run_explain_step", "save_figures"]

#: Methods the step and the CLI know.
EXPLAIN_METHODS = ("permutation", "shap", "pdp", "lime", "ig")
#: Methods for an image model: one heatmap per chosen image each (``lime`` on superpixels).
IMAGE_EXPLAIN_METHODS = ("ig", "saliency", "lime")
#: Methods that explain single rows (the others are global).
ROW_METHODS = ("shap", "lime", "ig")


@dataclass(frozen=True)
class ExplainOptions:
    """What to compute and on how many rows (the ``explain:`` spec section without ``model``/``split``)."""

    methods: tuple[str, ...] | None = None  # None: permutation, shap, pdp (+ ig for a differentiable model)
    rows: tuple[int, ...] = (0,)  # positions in the split explained one by one
    max_rows: int = 500  # rows for permutation importance and PDP/ICE (a seeded sample of the split)
    shap_rows: int = 100  # rows of the SHAP summary (a subset of those), plus the chosen rows
    background: int = 20  # k-means background rows for SHAP (each costs one model row per coalition)
    background_pool: int = 500  # training rows the background is summarized from
    n_repeats: int = 5  # permutation repeats (the interval's degrees of freedom + 1)
    metric: str | None = None  # permutation metric; accuracy (classifiers) or rmse
    top_k: int = 3  # features with PDP/ICE and dependence plots
    grid_resolution: int = 20  # PDP grid points
    ice_rows: int = 30  # ICE curves kept (and drawn) per feature
    kernel_samples: int = 512  # Kernel SHAP coalitions per row
    exact_max_features: int = 8  # exact Shapley values up to this many features (2^M coalitions)
    lime_samples: int = 1000  # LIME neighbours per row
    ig_steps: int = 32  # integrated-gradients quadrature points (Gauss-Legendre)
    seed: int = 0  # seeds the row samples, the background, the shuffles and the samplers
    row_method: str | None = None  # method of the per-row tables: shap, else lime, else ig

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ExplainOptions:
        """The options from a step config (unknown keys such as ``model``/``split`` are ignored)."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names}
        for key in ("methods", "rows"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


# -- small helpers --------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain JSON data: numpy scalars and arrays to Python, NaN and infinities to None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if value is None or isinstance(value, (int, str)):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def _cell(value: Any) -> Any:
    """One raw feature value as JSON (number, string or None for missing)."""
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    return str(value)


def check_rows(rows: Sequence[int], n: int, split: str) -> list[int]:
    """The chosen row positions, checked against the split's size (a clear error names the valid range)."""
    out = []
    for r in rows:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise DataError(f"Row {r!r} is not a row position; give integers such as 0,5,9.")
        if not 0 <= int(r) < n:
            valid = f"0..{n - 1}" if n else "none: the split is empty"
            raise DataError(f"Row {int(r)} is out of range: the {split} split has {n} rows (valid rows: {valid}).")
        if int(r) not in out:
            out.append(int(r))
    return out


def resolve_methods(predictor: Any, methods: Sequence[str] | None) -> tuple[list[str], list[dict[str, str]]]:
    """``(methods to run, skipped methods with the reason)`` for this model."""
    differentiable = bool(getattr(predictor, "differentiable", False))
    unknown = [m for m in (methods or ()) if m not in EXPLAIN_METHODS]
    if unknown:
        raise SpecError(f"Unknown explain method(s) {unknown}; known: {', '.join(EXPLAIN_METHODS)}.")
    if methods is None:
        chosen = ["permutation", "shap", "pdp"] + (["ig"] if differentiable else [])
        return chosen, []
    chosen, skipped = [], []
    for m in dict.fromkeys(methods):
        if m == "ig" and not differentiable:
            skipped.append({"method": "ig", "reason": f"integrated gradients need a differentiable (torch) model; "
                            f"{type(predictor).__name__} has no gradients. Use shap or lime for this model."})
            continue
        chosen.append(m)
    return chosen, skipped


def _output_index(predictor: Any) -> int | None:
    """Which probability column the explanations follow: the positive class (binary), else None."""
    return 1 if getattr(predictor, "task", "") == "binary" else None


# -- Tree SHAP for gradient boosting stored as ONNX -----------------------------------------


def _attr(node: Any, name: str) -> Any:
    from onnx import helper, numpy_helper

    for a in node.attribute:
        if a.name == name:
            if a.type == a.TENSOR:
                return numpy_helper.to_array(a.t)
            return helper.get_attribute_value(a)
    return None


def onnx_tree_model(path: str | Path, schema: Any) -> tuple[Any, list[str], list[int]] | None:
    """Read the ``TreeEnsemble`` of a modelyard gradient-boosting ONNX file into a :class:`TreeModel`.

    The file is the one :func:`modelyard.compress.export_onnx` writes for the GBM
    family: raw columns in, the encoded matrix (:func:`~modelyard.models.encode_matrix`
    order) into one ``TreeEnsemble`` (``SUM``, no post transform), ``Add`` of the
    baseline, then a sigmoid (binary), a softmax (multiclass) or nothing (regression).
    ONNX stores no node covers, so the result serves interventional Tree SHAP only.

    Returns
    -------
    (TreeModel, output names, output columns) or None
        None when the graph is not of that form (an ensemble, a log-link regressor, a
        split rule the reader does not know): use Kernel SHAP then. ``output columns``
        are the tree targets of the schema's classes (binary: the one log-odds).
    """
    import onnx

    from modelyard.explain._tree import _NAN_DEFAULT, _NUMERIC, _flatten, _Tree

    model = onnx.load(str(path))
    graph = model.graph
    trees_nodes = [n for n in graph.node if n.op_type == "TreeEnsemble" and n.domain == "ai.onnx.ml"]
    if len(trees_nodes) != 1:
        return None
    node = trees_nodes[0]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    consumers = [n for n in graph.node if node.output[0] in n.input]
    if len(consumers) != 1 or consumers[0].op_type != "Add":
        return None
    add = consumers[0]
    other = [i for i in add.input if i != node.output[0]]
    if len(other) != 1 or other[0] not in inits:
        return None
    base = np.asarray(inits[other[0]], dtype=np.float64).reshape(-1)
    ops = {n.op_type for n in graph.node}
    if "Exp" in ops or (_attr(node, "aggregate_function") or 1) != 1 or (_attr(node, "post_transform") or 0) != 0:
        return None
    n_targets = int(_attr(node, "n_targets"))
    task = schema.task
    if task == "binary" and not ("Sigmoid" in ops and n_targets == 1):
        return None
    if task == "multiclass" and "Softmax" not in ops:
        return None
    roots = list(_attr(node, "tree_roots"))
    feature = np.asarray(_attr(node, "nodes_featureids"), dtype=np.int64)
    modes = np.asarray(_attr(node, "nodes_modes")).astype(np.int64)
    splits = np.asarray(_attr(node, "nodes_splits"), dtype=np.float64)
    true_ids = np.asarray(_attr(node, "nodes_truenodeids"), dtype=np.int64)
    true_leaf = np.asarray(_attr(node, "nodes_trueleafs"), dtype=np.int64)
    false_ids = np.asarray(_attr(node, "nodes_falsenodeids"), dtype=np.int64)
    false_leaf = np.asarray(_attr(node, "nodes_falseleafs"), dtype=np.int64)
    missing_true = np.asarray(_attr(node, "nodes_missing_value_tracks_true") or np.zeros(len(modes)), dtype=np.int64)
    leaf_targets = np.asarray(_attr(node, "leaf_targetids"), dtype=np.int64)
    leaf_weights = np.asarray(_attr(node, "leaf_weights"), dtype=np.float64)
    members_flat = _attr(node, "membership_values")
    # Member sets follow the BRANCH_MEMBER nodes in node order, each ended by NaN.
    member_sets: dict[int, np.ndarray] = {}
    if members_flat is not None:
        flat = np.asarray(members_flat, dtype=np.float64)
        ends = np.flatnonzero(np.isnan(flat))
        starts = np.concatenate([[0], ends[:-1] + 1])
        member_nodes = np.flatnonzero(modes == 6)
        if len(member_nodes) != len(ends):
            return None
        for j, s, e in zip(member_nodes, starts, ends, strict=True):
            member_sets[int(j)] = flat[s:e]
    width = 256
    for values in member_sets.values():
        if len(values) and (np.any(values < 0) or np.any(values != np.round(values))):
            return None
        if len(values):
            width = max(width, int(values.max()) + 1)
    left_sets: list[np.ndarray] = []
    trees = []
    for root in roots:
        rows: list[dict[str, Any]] = []

        def visit(nid: int, is_leaf: bool, rows: list[dict[str, Any]] = rows) -> int:
            me = len(rows)
            rows.append({})
            if is_leaf:
                value = np.zeros(n_targets)
                value[int(leaf_targets[nid])] = leaf_weights[nid]
                rows[me] = {"leaf": True, "value": value}
                return me
            mode = int(modes[nid])
            entry: dict[str, Any] = {"leaf": False, "feature": int(feature[nid]), "threshold": 0.0,
                                     "default_left": bool(missing_true[nid]), "kind": _NUMERIC, "set": -1}
            if mode == 0:  # BRANCH_LEQ: x <= t goes to the true branch
                entry["threshold"] = float(splits[nid])
            elif mode == 1:  # BRANCH_LT: x < t, i.e. x <= the float64 just below t
                entry["threshold"] = float(np.nextafter(splits[nid], -np.inf))
            elif mode == 6:  # BRANCH_MEMBER: a category in the set goes true, NaN and the rest false
                if missing_true[nid]:
                    raise _Unsupported
                entry["kind"], entry["set"], entry["default_left"] = 2, len(left_sets), False
                sets = np.zeros(width, dtype=bool)
                sets[member_sets[int(nid)].astype(np.int64)] = True
                left_sets.append(sets)
            else:
                raise _Unsupported
            rows[me] = entry
            rows[me]["left"] = visit(int(true_ids[nid]), bool(true_leaf[nid]), rows)
            rows[me]["right"] = visit(int(false_ids[nid]), bool(false_leaf[nid]), rows)
            return me

        try:
            visit(int(root), False)
        except _Unsupported:
            return None
        n = len(rows)
        leaf = np.array([r["leaf"] for r in rows])
        trees.append(_Tree(
            left=np.array([-1 if r["leaf"] else r["left"] for r in rows], dtype=np.int64),
            right=np.array([-1 if r["leaf"] else r["right"] for r in rows], dtype=np.int64),
            feature=np.array([0 if r["leaf"] else r["feature"] for r in rows], dtype=np.int64),
            threshold=np.array([0.0 if r["leaf"] else r["threshold"] for r in rows], dtype=np.float64),
            default_left=np.array([False if r["leaf"] else r["default_left"] for r in rows], dtype=bool),
            missing=np.full(n, _NAN_DEFAULT, dtype=np.int8),
            kind=np.array([_NUMERIC if r["leaf"] else r["kind"] for r in rows], dtype=np.int8),
            category_set=np.array([-1 if r["leaf"] else r["set"] for r in rows], dtype=np.int64),
            known_set=np.full(n, -1, dtype=np.int64),
            value=np.stack([r["value"] if r["leaf"] else np.zeros(n_targets) for r in rows]),
            cover=np.where(leaf, 1.0, 1.0),  # ONNX has no covers: interventional Tree SHAP ignores them
        ))
    from modelyard.models import encoded_feature_names

    n_columns = len(encoded_feature_names(schema))
    if len(base) == 1 and n_targets > 1:
        base = np.repeat(base, n_targets)
    kind = "log-odds" if task == "binary" else ("score" if task == "multiclass" else "prediction")
    sets = np.array(left_sets, dtype=bool).reshape(-1, width)
    tm = _flatten(trees, n_columns, n_targets, base, kind, sets, np.zeros((0, width), dtype=bool))
    classes = [str(c) for c in schema.classes]
    if task == "binary":
        return tm, [f"log-odds({classes[1]})"], [0]
    if task == "multiclass":
        order = next((np.asarray(v).reshape(-1) for k, v in inits.items() if k.endswith("class_order")), None)
        columns = [int(c) for c in order] if order is not None else list(range(n_targets))
        return tm, [f"score({c})" for c in classes], columns
    return tm, ["prediction"], [0]


class _Unsupported(Exception):
    """A split rule the ONNX tree reader does not map (the step falls back to Kernel SHAP)."""


def _tree_shap_onnx(predictor: Any, frame: pd.DataFrame, rows: np.ndarray, pool: pd.DataFrame,
                    options: ExplainOptions) -> tuple[Any, np.ndarray] | None:
    """Interventional Tree SHAP of an ONNX gradient-boosting model: ``(Explanation, raw outputs)`` or None."""
    from modelyard.explain._explanation import Explanation
    from modelyard.explain._masking import resolve_background
    from modelyard.explain._tree import _kernels
    from modelyard.models import encode_matrix, encoded_feature_names

    path = getattr(predictor, "path", None)
    if path is None:
        return None
    read = onnx_tree_model(path, predictor.schema)
    if read is None:
        return None
    tm, out_names, columns = read
    schema = predictor.schema
    features = [str(f) for f in predictor.feature_names]
    player_of_column = np.array([features.index(c) for c in encoded_feature_names(schema)], dtype=np.int64)
    bg = resolve_background(predictor, pool[features], frame, options.background, options.seed)
    x = encode_matrix(frame.iloc[rows][features], schema).astype(np.float64)
    b = encode_matrix(bg.frame[features], schema).astype(np.float64)
    kernels = _kernels()
    max_len = int(tm.path_len.max()) if len(tm.path_len) else 0
    fact = np.array([math.factorial(k) for k in range(max_len + 1)], dtype=np.float64)
    dx, db = tm.decisions(tm.prepare(x)), tm.decisions(tm.prepare(b))
    phi = kernels.interventional(dx, db, bg.weights, tm.path_start, tm.path_len, tm.path_value,
                                 player_of_column[tm.elem_column], tm.cond_start, tm.cond_len, tm.cond_node,
                                 tm.cond_left, len(features), max_len, fact)  # (n, m, targets)
    raw = tm.predict(x)  # (n, targets), float64
    base = np.broadcast_to(bg.weights @ tm.predict(b), raw.shape)
    # Guard: the trees read back must reproduce what ONNX Runtime serves (float32 outputs: 1e-6).
    if schema.task == "regression":
        served, mine = predictor.predict(frame.iloc[rows]), raw[:, 0]
        ok = np.allclose(mine, served, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(served).max(initial=0))))
    else:
        proba = predictor.predict_proba(frame.iloc[rows])
        if schema.task == "binary":
            mine = 1.0 / (1.0 + np.exp(-raw[:, 0]))
            ok = np.allclose(mine, proba[:, 1], atol=1e-6)
        else:
            z = raw[:, columns] - raw[:, columns].max(axis=1, keepdims=True)
            mine = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            ok = np.allclose(mine, proba, atol=1e-6)
    if not ok:
        return None
    phi, base, raw = phi[:, :, columns], base[:, columns], raw[:, columns]
    single = len(columns) == 1
    values, base_values = (phi[:, :, 0], base[:, 0]) if single else (phi, base)
    info = {"output": tm.output_kind, "paths": len(tm.path_len), "background_rows": len(bg), "source": "onnx"}
    expl = Explanation(values, np.array(base_values), frame.iloc[rows].reset_index(drop=True)[features], features,
                       out_names, "tree_interventional", np.asarray(rows), info)
    return expl, (raw[:, 0] if single else raw)


# -- the computation ------------------------------------------------------------------------


def _model_outputs(predictor: Any, frame: pd.DataFrame) -> np.ndarray:
    """The output SHAP/LIME explain with output=None: positive-class probability, every class, or the prediction."""
    task = getattr(predictor, "task", "regression")
    if task == "regression":
        return np.asarray(predictor.predict(frame), dtype=np.float64)
    proba = np.asarray(predictor.predict_proba(frame), dtype=np.float64)
    return proba[:, 1] if task == "binary" else proba


def _contributions(features: list[str], data: pd.DataFrame, values: np.ndarray) -> list[dict[str, Any]]:
    """One row's ``[{feature, value, contribution}]``, largest |contribution| first."""
    order = np.argsort(-np.abs(values), kind="stable")
    return [{"feature": features[j], "value": _cell(data[features[j]]), "contribution": float(values[j])}
            for j in order]


def _explanation_json(expl: Any, predictions: np.ndarray, chosen: list[int]) -> dict[str, Any]:
    values = np.asarray(expl.values)
    return {
        "method": expl.method,
        "output_names": list(expl.output_names),
        "feature_names": list(expl.feature_names),
        "rows": [int(r) for r in expl.rows],
        "values": values,
        "base_values": np.asarray(expl.base_values),
        "predictions": np.asarray(predictions),
        "data": {f: [_cell(v) for v in expl.data[f]] for f in expl.feature_names},
        "chosen_rows": chosen,
        "info": {k: v for k, v in expl.info.items() if isinstance(v, (int, float, str, bool, np.integer, np.floating))},
    }


def _importance_from(values: np.ndarray, features: list[str]) -> list[dict[str, Any]]:
    v = np.abs(values)
    mean = v.mean(axis=0) if v.ndim == 2 else v.sum(axis=2).mean(axis=0)
    order = np.argsort(-mean, kind="stable")
    return [{"feature": features[j], "importance": float(mean[j])} for j in order]


def _pick_output(values: np.ndarray) -> int | None:
    """Output drawn by the summary plots of a multi-output explanation (the one with the largest attributions)."""
    if values.ndim == 2:
        return None
    return int(np.argmax(np.abs(values).sum(axis=(0, 1))))


def explain_model(
    predictor: Any,
    frame: pd.DataFrame,
    *,
    train: pd.DataFrame | None = None,
    options: ExplainOptions = ExplainOptions(),
    model: str = "model",
    family: str | None = None,
    split: str = "test",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Explain ``predictor`` on the rows of one split; return the numbers as plain JSON data.

    Parameters
    ----------
    predictor : Predictor
        A tabular model (torch, scikit-learn or ONNX), or an image model.
    frame : pandas.DataFrame or (images, labels)
        The split's raw rows with the target column; for an image model a pair of
        ``uint8 (N, C, H, W)`` images and labels.
    train : pandas.DataFrame or None
        Training rows: the SHAP background and LIME's sampling distribution (the
        split itself if None).
    options : ExplainOptions
    model, family, split : str
        Recorded in the result.
    progress : callable or None
        Called with the name of each part as it starts.

    Returns
    -------
    dict
        ``permutation``, ``shap``, ``pdp``, ``lime``, ``ig`` (those computed), ``rows``
        (per-row explanations), ``skipped`` and the run's facts; see the module
        docstring. Shapley values satisfy ``base_value + sum(values) == prediction``
        per row.

    Raises
    ------
    DataError
        A chosen row out of range (the message gives the valid range), no rows.
    SpecError
        An unknown method.
    """
    say = progress or (lambda _name: None)
    if hasattr(predictor, "image_shape"):
        return _explain_images(predictor, frame, options=options, model=model, family=family, split=split)
    if not isinstance(frame, pd.DataFrame) or len(frame) == 0:
        raise DataError(f"The {split} split has no rows to explain.")
    frame = frame.reset_index(drop=True)
    n = len(frame)
    chosen = check_rows(options.rows, n, split)
    methods, skipped = resolve_methods(predictor, options.methods)
    features = [str(f) for f in predictor.feature_names]
    task = getattr(predictor, "task", "regression")
    perm = np.random.default_rng([options.seed, 0]).permutation(n)
    sub = np.sort(perm[: min(n, options.max_rows)])
    shap_sub = np.sort(perm[: min(n, options.shap_rows)])
    pool_src = frame if train is None or len(train) == 0 else train.reset_index(drop=True)
    pool_idx = np.sort(np.random.default_rng([options.seed, 1]).permutation(len(pool_src))[: options.background_pool])
    pool = pool_src.iloc[pool_idx][features].reset_index(drop=True)
    result: dict[str, Any] = {
        "model": model, "family": family, "predictor": type(predictor).__name__, "task": task, "split": split,
        "n_rows": n, "features": features, "methods": methods, "skipped": skipped, "seed": options.seed,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "sample_rows": [int(i) for i in sub], "background_rows": [int(i) for i in pool_idx],
        "background_source": "train" if pool_src is not frame else split,
    }
    from modelyard import explain as ex

    if "permutation" in methods:
        say("permutation importance")
        pi = ex.permutation_importance(predictor, frame.iloc[sub].reset_index(drop=True), metric=options.metric,
                                       n_repeats=options.n_repeats, random_state=options.seed)
        # The metric's name as resolved here: PermutationImportance.metric of a torch model can hold an
        # encoded-array name instead (a variable reused in permutation_importance's loop).
        metric_name = options.metric or ("rmse" if task == "regression" else "accuracy")
        result["permutation"] = {"metric": metric_name, "baseline": pi.baseline, "n_repeats": options.n_repeats,
                                 "confidence": pi.confidence, "rows": len(sub), "features": pi.features,
                                 "importances": pi.importances, "table": pi.to_frame().to_dict(orient="records")}
    shap_expl = None
    if "shap" in methods:
        say("SHAP values")
        explained = np.array(sorted(set(shap_sub.tolist()) | set(chosen)), dtype=np.int64)
        tree = _tree_shap_onnx(predictor, frame, explained, pool, options)
        if tree is not None:
            shap_expl, predictions = tree
        else:
            kwargs = {"rows": explained, "background": pool, "n_background": options.background,
                      "random_state": options.seed}
            if len(features) <= options.exact_max_features:
                shap_expl = ex.exact_shapley(predictor, frame[features], **kwargs)
            else:
                shap_expl = ex.kernel_shap(predictor, frame[features], n_samples=options.kernel_samples, **kwargs)
            predictions = _model_outputs(predictor, frame.iloc[explained])
        result["shap"] = _explanation_json(shap_expl, predictions, chosen)
        result["shap"]["importance"] = _importance_from(np.asarray(shap_expl.values), features)
        result["shap"]["plot_output"] = _pick_output(np.asarray(shap_expl.values))
    if "pdp" in methods:
        say("partial dependence")
        ranking = ([r["feature"] for r in result["permutation"]["table"]] if "permutation" in result
                   else [r["feature"] for r in result["shap"]["importance"]] if "shap" in result else features)
        rows_pdp = frame.iloc[sub][features].reset_index(drop=True)
        curves = []
        for f in ranking[: options.top_k]:
            pd_ = ex.partial_dependence(predictor, rows_pdp, f, kind="both", grid_resolution=options.grid_resolution)
            categorical = not pd.api.types.is_numeric_dtype(rows_pdp[f])
            curves.append({"feature": f, "categorical": categorical, "outputs": pd_.outputs,
                           "grid": [_cell(v) for v in pd_.grid[0]], "average": pd_.average,
                           "ice": pd_.individual[:, : options.ice_rows] if pd_.individual is not None else None})
        result["pdp"] = {"rows": len(sub), "features": curves}
    lime_expl = None
    if "lime" in methods:
        say("LIME")
        lime_expl = ex.lime_tabular(predictor, frame[features], rows=chosen, training=pool,
                                    n_samples=options.lime_samples, random_state=options.seed)
        result["lime"] = _explanation_json(lime_expl, _model_outputs(predictor, frame.iloc[chosen]), chosen)
        result["lime"]["score"] = np.asarray(lime_expl.info["score"])
    ig = None
    if "ig" in methods:
        say("integrated gradients")
        target = 1 if task == "binary" else None
        ig = ex.integrated_gradients(predictor, frame.iloc[chosen][features].reset_index(drop=True),
                                     steps=options.ig_steps, target=target)
        result["ig"] = {"method": "integrated_gradients", "feature_names": ig.features, "rows": chosen,
                        "values": ig.values, "base_values": ig.baseline_output, "predictions": ig.output,
                        "delta": ig.delta, "target": ig.target, "steps": options.ig_steps,
                        "data": {f: [_cell(v) for v in frame.iloc[chosen][f]] for f in features}}
    row_method = options.row_method or next((m for m in ROW_METHODS if m in methods), None)
    if row_method is not None and row_method not in methods:
        raise SpecError(f"row_method {row_method!r} was not computed; methods are {methods}.")
    result["row_method"] = row_method
    result["rows"] = _row_entries(result, frame, chosen, features, predictor)
    return _jsonable(result)


def _row_entries(result: dict[str, Any], frame: pd.DataFrame, chosen: list[int], features: list[str],
                 predictor: Any) -> list[dict[str, Any]]:
    """Per chosen row: its prediction and each per-row method's contributions (largest first)."""
    task = getattr(predictor, "task", "regression")
    rows_frame = frame.iloc[chosen]
    if task == "regression":
        labels: list[Any] = list(np.asarray(predictor.predict(rows_frame), dtype=np.float64))
    else:
        proba = np.asarray(predictor.predict_proba(rows_frame), dtype=np.float64)
        classes = [str(c) for c in predictor.schema.classes] if getattr(predictor, "schema", None) else None
        labels = [classes[int(k)] if classes else int(k) for k in proba.argmax(axis=1)]
    out = []
    for i, r in enumerate(chosen):
        entry: dict[str, Any] = {"row": r, "predicted": labels[i], "explanations": {}}
        data = rows_frame.iloc[i]
        for method in ROW_METHODS:
            part = result.get(method)
            if part is None:
                continue
            pos = part["rows"].index(r) if method == "shap" else i
            values = np.asarray(part["values"])[pos]
            base = np.asarray(part["base_values"])[pos]
            prediction = np.asarray(part["predictions"])[pos]
            output = None
            if values.ndim == 2:  # several outputs: the predicted class
                k = int(np.argmax(prediction)) if method != "ig" else 0
                values, base, prediction = values[:, k], base[k], prediction[k]
                output = part["output_names"][k]
            elif "output_names" in part:
                output = part["output_names"][0]
            elif method == "ig":
                target = part.get("target")
                output = f"p({predictor.schema.classes[int(target[i])]})" if target is not None else "prediction"
            entry["explanations"][method] = {
                "output": output, "base_value": float(base), "prediction": float(prediction),
                "contributions": _contributions(features, data, values)}
            if method == "ig":
                entry["explanations"][method]["delta"] = float(np.asarray(part["delta"])[pos])
        out.append(entry)
    return out


def _explain_images(predictor: Any, data: Any, *, options: ExplainOptions, model: str, family: str | None,
                    split: str) -> dict[str, Any]:
    """Attribution heatmaps of chosen images: integrated gradients, gradient saliency, LIME superpixels.

    Every method explains the class the model predicts for the image. Gradient methods
    need a torch model; on another (an ONNX file) they are skipped with the reason and
    LIME, which only calls ``predict_proba``, still runs.
    """
    from modelyard import explain as ex

    images, labels = data
    images = np.asarray(images)
    chosen = check_rows(options.rows, len(images), split)
    methods = list(options.methods or IMAGE_EXPLAIN_METHODS)
    tabular = [m for m in methods if m not in IMAGE_EXPLAIN_METHODS]
    if tabular:
        raise DataError(f"explain: {tabular} explain table columns, and model {model!r} reads images; the methods for "
                        f"images are {', '.join(IMAGE_EXPLAIN_METHODS)}.")
    x = images[chosen]
    target = np.asarray(predictor.predict_proba(x)).argmax(axis=1)
    classes = [str(c) for c in getattr(predictor, "classes", [])] or None
    differentiable = bool(getattr(predictor, "differentiable", False))
    skipped: list[dict[str, str]] = []
    done: list[str] = []
    out: dict[str, Any] = {}
    for method in methods:
        if method in ("ig", "saliency") and not differentiable:
            skipped.append({"method": method, "reason": f"{type(predictor).__name__} has no gradients (an ONNX "
                            "file); gradient methods need the torch model (.safetensors). lime works on any model."})
            continue
        if method == "ig":
            ig = ex.integrated_gradients(predictor, x, target=target, steps=options.ig_steps)
            out["ig"] = {"method": "integrated_gradients", "rows": chosen, "images": x, "heatmaps": ig.heatmap(),
                         "target": ig.target, "predictions": ig.output, "base_values": ig.baseline_output,
                         "delta": ig.delta, "labels": [int(labels[r]) for r in chosen] if labels is not None else None,
                         "classes": classes, "steps": options.ig_steps}
        elif method == "saliency":
            sal = ex.saliency(predictor, x, target=target, absolute=True)
            out["saliency"] = {"method": "saliency", "rows": chosen, "heatmaps": sal.heatmap(), "target": sal.target}
        else:
            lime = ex.lime_image(predictor, x, target=target, n_samples=options.lime_samples,
                                 random_state=options.seed)
            out["lime_image"] = {"method": "lime", "rows": chosen, "heatmaps": lime.heatmaps, "target": lime.targets,
                                 "scores": lime.scores, "segments": [int(s.max()) + 1 for s in lime.segments],
                                 "n_samples": options.lime_samples}
        done.append(method)
    predicted = [classes[int(t)] if classes else int(t) for t in target]
    return _jsonable({
        "model": model, "family": family, "predictor": type(predictor).__name__, "task": "multiclass",
        "split": split, "n_rows": len(images), "methods": done, "skipped": skipped, "seed": options.seed,
        "image": {"rows": chosen, "images": x, "predicted": predicted, "classes": classes,
                  "labels": [int(labels[r]) for r in chosen] if labels is not None else None},
        **out,
        "rows": [{"row": r, "predicted": p, "explanations": {}} for r, p in zip(chosen, predicted, strict=True)],
        "row_method": done[0] if done else None,
    })


# -- plots ----------------------------------------------------------------------------------


def _rebuild(part: Mapping[str, Any]) -> Any:
    """An :class:`Explanation` from its JSON form (for the library's plots)."""
    from modelyard.explain._explanation import Explanation

    names = list(part["feature_names"])
    data = pd.DataFrame({f: pd.Series(part["data"][f], dtype="object") for f in names})
    for f in names:
        numbers = pd.to_numeric(data[f], errors="coerce")
        if numbers.notna().sum() == data[f].notna().sum():
            data[f] = numbers.astype(np.float64)
    values = np.asarray(part["values"], dtype=np.float64)
    return Explanation(values, np.asarray(part["base_values"], dtype=np.float64), data, names,
                       list(part.get("output_names") or ["output"]), str(part["method"]),
                       np.asarray(part["rows"]), {})


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.add_subplot(1, 1, 1)


def _short(text: Any, width: int = 40) -> str:
    s = str(text)
    return s if len(s) <= width else s[: width - 1] + "…"


def _importance_figure(perm: Mapping[str, Any], top: int = 15) -> Any:
    table = list(perm["table"])[:top][::-1]
    fig, ax = _figure((6.5, 0.35 * len(table) + 1.3))
    y = np.arange(len(table))
    mean = np.array([r["importance"] for r in table], dtype=np.float64)
    low = np.array([r["low"] if r["low"] is not None else np.nan for r in table], dtype=np.float64)
    high = np.array([r["high"] if r["high"] is not None else np.nan for r in table], dtype=np.float64)
    err = np.vstack([np.nan_to_num(mean - low), np.nan_to_num(high - mean)])
    ax.barh(y, mean, xerr=err, color="#0072B2", ecolor="#1f2933", capsize=3)
    ax.set_yticks(y)
    ax.set_yticklabels([_short(r["feature"]) for r in table])
    ax.axvline(0, color="#999999", lw=0.8)
    conf = round(100 * float(perm.get("confidence", 0.95)))
    ax.set_xlabel(f"drop in {perm['metric']} when shuffled ({conf}% interval, {perm['n_repeats']} repeats)")
    ax.set_title("Permutation importance")
    fig.tight_layout()
    return fig


def _pdp_figure(curve: Mapping[str, Any], task: str | None = None) -> Any:
    fig, ax = _figure((6, 4))
    grid = curve["grid"]
    x = np.arange(len(grid)) if curve["categorical"] else np.asarray(grid, dtype=np.float64)
    ice = curve.get("ice")
    if ice is not None and len(ice) and len(ice[0]):
        for line in np.asarray(ice[0], dtype=np.float64):
            ax.plot(x, line, color="#56B4E9", lw=0.6, alpha=0.5)
    avg = np.asarray(curve["average"][0], dtype=np.float64)
    ax.plot(x, avg, color="#D55E00", lw=2.2, label="partial dependence (average)")
    if curve["categorical"]:
        ax.set_xticks(x)
        ax.set_xticklabels([_short(g, 16) for g in grid], rotation=45, ha="right")
    ax.set_xlabel(_short(curve["feature"], 60))
    output = _short(curve["outputs"][0] if curve.get("outputs") else "output", 40)
    ax.set_ylabel(output if task in (None, "regression") else f"probability of {output}")
    ax.set_title(f"PDP and ICE: {_short(curve['feature'])}")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def _row_figure(row: Mapping[str, Any], method: str, top: int = 12) -> Any:
    """A waterfall (Shapley values: base value to prediction) or signed bars (LIME, IG) of one row."""
    part = row["explanations"][method]
    contribs = list(part["contributions"])
    shown, rest = contribs[:top], contribs[top:]
    labels = [f"{_short(c['feature'], 24)} = {_short(c['value'], 14)}" for c in shown]
    values = [float(c["contribution"]) for c in shown]
    if rest:
        labels.append(f"{len(rest)} other features")
        values.append(float(sum(c["contribution"] for c in rest)))
    labels, values = labels[::-1], values[::-1]
    fig, ax = _figure((7, 0.38 * len(values) + 1.5))
    y = np.arange(len(values))
    colours = ["#D55E00" if v >= 0 else "#0072B2" for v in values]
    if method == "lime":
        ax.barh(y, values, color=colours)
        ax.set_xlabel("coefficient of the local linear model")
        ax.axvline(0, color="#999999", lw=0.8)
    else:
        # Waterfall: bars start where the previous ended, from the base value to the prediction.
        end = float(part["base_value"]) + np.cumsum(values)
        start = end - np.asarray(values)
        ax.barh(y, values, left=start, color=colours)
        ax.axvline(float(part["base_value"]), color="#999999", lw=0.8, ls="--")
        ax.axvline(float(part["prediction"]), color="#1f2933", lw=0.8)
        ax.set_xlabel(f"{_short(part.get('output') or 'output')}: base {part['base_value']:.4g} → "
                      f"prediction {part['prediction']:.4g}")
    ax.set_yticks(y)
    ax.set_yticklabels(labels)
    name = {"shap": "SHAP", "lime": "LIME", "ig": "integrated gradients"}[method]
    ax.set_title(f"Row {row['row']} ({name}), predicted {_short(row.get('predicted'), 20)}")
    fig.tight_layout()
    return fig


def _heatmap_figure(ig: Mapping[str, Any], i: int) -> Any:
    from modelyard.explain._plots import plot_image_heatmap

    fig = plot_image_heatmap(np.asarray(ig["images"][i], dtype=np.float64), np.asarray(ig["heatmaps"][i]))
    row = ig["rows"][i]
    classes = ig.get("classes")
    target = int(ig["target"][i]) if ig.get("target") is not None else None
    label = classes[target] if classes and target is not None else target
    fig.axes[0].set_title(f"Row {row}: integrated gradients for {_short(label, 20)}")
    return fig


_IMAGE_TITLES = {"ig": "integrated gradients", "saliency": "gradient saliency", "lime_image": "LIME superpixels"}


def _image_row_figure(image: Mapping[str, Any], parts: list[tuple[str, Mapping[str, Any]]], i: int) -> Any:
    """One chosen image and, beside it, each method's heatmap of the predicted class."""
    from matplotlib.figure import Figure

    from modelyard.explain._plots import plot_image_heatmap

    pixels = np.asarray(image["images"][i], dtype=np.float64)
    fig = Figure(figsize=(3.0 * (1 + len(parts)), 3.3))
    axes = fig.subplots(1, 1 + len(parts), squeeze=False)[0]
    shown = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
    axes[0].imshow(shown / (255.0 if shown.max() > 1.0 else 1.0), cmap="gray" if shown.ndim == 2 else None)
    axes[0].set_axis_off()
    labels, classes = image.get("labels"), image.get("classes")
    truth = ""
    if labels is not None:
        truth = f"\ntrue {_short(classes[labels[i]] if classes else labels[i], 16)}"
    axes[0].set_title(f"Image {image['rows'][i]}: predicted {_short(image['predicted'][i], 16)}{truth}", fontsize=8)
    for ax, (key, part) in zip(axes[1:], parts, strict=True):
        plot_image_heatmap(pixels, np.asarray(part["heatmaps"][i], dtype=np.float64), ax=ax)
        title = _IMAGE_TITLES[key]
        if key == "lime_image" and part.get("scores") is not None:
            title += f" (R² {float(part['scores'][i]):.2f})"
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:32] or "x"


def explanation_figures(result: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """The plots of an :func:`explain_model` result: ``[(file name, caption, matplotlib Figure)]``.

    File names are built from positions, never from feature names (a name cannot
    leave the output folder); captions hold the names. Text is drawn with math
    parsing off, so a ``$`` in a feature name prints as itself.
    """
    import matplotlib

    from modelyard.explain._plots import plot_beeswarm, plot_dependence, plot_importance

    out: list[tuple[str, str, Any]] = []
    with matplotlib.rc_context({"text.parse_math": False, "font.size": 9}):
        if result.get("permutation"):
            out.append(("importance.png", "Permutation importance", _importance_figure(result["permutation"])))
        shap = result.get("shap")
        if shap:
            expl = _rebuild(shap)
            k = shap.get("plot_output")
            out.append(("shap_summary.png", f"SHAP summary ({shap['method']})", plot_beeswarm(expl, output=k)))
            out.append(("shap_importance.png", "Mean |SHAP value|", plot_importance(expl, output=k)))
            for i, f in enumerate([r["feature"] for r in shap["importance"]][: int(result.get("options", {})
                                                                                   .get("top_k", 3))]):
                fig = plot_dependence(expl, f, output=k)
                fig.axes[0].set_title(f"SHAP dependence: {_short(f)}")
                out.append((f"dependence_{i + 1}.png", f"SHAP dependence: {f}", fig))
        for i, curve in enumerate((result.get("pdp") or {}).get("features", [])):
            out.append((f"pdp_{i + 1}.png", f"PDP and ICE: {curve['feature']}", _pdp_figure(curve, result.get("task"))))
        for row in result.get("rows") or []:
            if not isinstance(row, Mapping) or not isinstance(row.get("explanations"), Mapping):
                continue
            for method, part in row["explanations"].items():
                if method not in ROW_METHODS or not isinstance(part, Mapping) or "contributions" not in part:
                    continue
                out.append((f"row_{row['row']}_{method}.png", f"Row {row['row']} ({method})",
                            _row_figure(row, method)))
        image = result.get("image")
        if isinstance(image, Mapping):
            parts = [(k, result[k]) for k in ("ig", "saliency", "lime_image") if isinstance(result.get(k), Mapping)]
            for i, r in enumerate(image["rows"]):
                if parts:
                    names = ", ".join(_IMAGE_TITLES[k] for k, _ in parts)
                    out.append((f"image_row_{r}.png", f"Image {r}: {names}", _image_row_figure(image, parts, i)))
        else:  # a result written before image rows had several methods: integrated gradients only
            ig = result.get("ig")
            if ig and "heatmaps" in ig:
                for i, r in enumerate(ig["rows"]):
                    out.append((f"ig_heatmap_{r}.png", f"Integrated gradients, row {r}", _heatmap_figure(ig, i)))
    return out


def _png(fig: Any, path: Path) -> None:
    import warnings

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with matplotlib.rc_context({"text.parse_math": False}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from font", category=UserWarning)
        fig.savefig(path, format="png", dpi=100, facecolor="white", metadata={"Software": None})


def save_figures(result: Mapping[str, Any], folder: str | Path,
                 output: Callable[[str], Any] | None = None) -> list[dict[str, str]]:
    """Write every plot as PNG, atomically; return ``[{"file", "caption"}]``.

    ``output(name)`` is a context manager yielding a temporary path (a step's
    ``ctx.output``); the files go to ``folder`` through :func:`atomic_path` if None.
    """
    from modelyard._atomic import atomic_path

    folder = Path(folder)
    written = []
    for name, caption, fig in explanation_figures(result):
        if output is not None:
            with output(name) as tmp:
                _png(fig, Path(tmp))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / name) as tmp:
                _png(fig, Path(tmp))
        written.append({"file": name, "caption": caption})
    return written


# -- the pipeline step ----------------------------------------------------------------------


def explained_model(config: Mapping[str, Any], ctx: Any) -> tuple[str, str, str | None]:
    """``(name, input role, family)`` of the model an explain step explains: ``config["model"]`` or the chosen one."""
    evaluation = ctx.read_json("evaluation")
    name = config.get("model") or evaluation["chosen"]["model"]
    role = f"model:{name}"
    if role not in ctx.input_paths:
        known = sorted(r.removeprefix("model:") for r in ctx.input_paths if r.startswith("model:"))
        raise SpecError(f"explain.model: no model {name!r} in this pipeline; models are {known}.")
    return name, role, (evaluation.get("models", {}).get(name) or {}).get("family")


def run_explain_step(config: Mapping[str, Any], ctx: Any) -> None:
    """The body of :class:`modelyard.pipeline._stages.ExplainStep`: explain the chosen (or named) model.

    Reads ``evaluation`` (which model was chosen), ``model:<name>``, the split named by
    ``config["split"]``, ``train`` (the background) and ``schema``; writes
    ``explain.json`` and one PNG per plot.
    """
    from modelyard.data import Schema
    from modelyard.models import load_predictor

    name, role, family = explained_model(config, ctx)
    schema = Schema.from_dict(ctx.read_json("schema")["schema"])
    split = config.get("split", "test")
    frame = pd.read_parquet(ctx.input("split"))
    train = pd.read_parquet(ctx.input("train"))
    predictor = load_predictor(ctx.input(role))
    missing = [f for f in predictor.feature_names if f not in frame.columns or f not in train.columns]
    if missing:
        raise DataError(f"explain: model {name!r} takes columns {missing} that the {split} or train split lacks "
                        f"(the data's features are {schema.feature_names}).")
    options = ExplainOptions.from_config(config)
    methods = options.methods or EXPLAIN_METHODS
    bar = ctx.progress(f"explaining {name}", len(methods))

    def progress(part: str) -> None:
        bar(advance=1, info=part)

    result = explain_model(predictor, frame, train=train, options=options, model=name, family=family, split=split,
                           progress=progress)
    result["plots"] = save_figures(result, ".", output=ctx.output)
    ctx.write_json("explain.json", result)
    figures: dict[str, Any] = {"model": name, "methods": ",".join(result["methods"]), "rows": len(result["rows"])}
    if result.get("shap"):
        figures["shap_method"] = result["shap"]["method"]
    if result.get("permutation"):
        top = result["permutation"]["table"][0]
        figures["top_feature"] = top["feature"]
    ctx.record(**figures)
