"""Feature extraction as a data step: PCA, ICA or NMF components replace the raw feature columns.

:func:`reduce_features` fits a :class:`FeatureTransform` on the training split and
returns the data with numeric columns ``pc_1 .. pc_k`` (``ic_`` for ICA, ``nmf_`` for
NMF) in place of the raw feature columns. The transform is plain arrays: it applies to
new rows (valid, test, serving), is stored as JSON (never a pickle), and for PCA and ICA
can be put in front of an exported model as an ONNX stage, so the served model still
takes the raw columns.

The input matrix
----------------
Raw columns become the one-hot design matrix of
:class:`~modelyard.compress._design.OneHotDesign` (numeric columns with missing values
filled by the training mean, one 0/1 indicator per category seen in training), then each
design column is scaled with training statistics:

* ``scale="standard"`` (PCA and ICA by default): ``(z - mean) / std``, so a column's
  units do not decide its weight. Indicators are standardized too, so every category
  counts as much as a numeric column; a rare category becomes a large, sparse value.
* ``scale="minmax"`` (NMF by default, which needs non-negative input):
  ``(z - min) / (max - min)`` onto [0, 1]; new rows are clipped at 0 for NMF.
* ``scale="none"``: the design matrix as it is (NMF then requires non-negative data).

A column constant in training is only centred (divisor 1).

Choosing the number of components
---------------------------------
* ``n_components=int``: that many.
* ``n_components="auto"``: the smallest ``k`` whose cumulative explained-variance ratio
  (PCA of the scaled training matrix, all components) reaches ``variance``. ICA uses the
  same ``k``: it unmixes the whitened span of the first ``k`` principal components, so it
  keeps exactly that variance. NMF uses the same rule on its min-max scaled matrix, a
  linear proxy (``variance_kept`` then reports NMF's own reconstruction).
* ``target_size=bytes``: the largest ``k`` whose served model has at most that many
  bytes of parameters: the float32 weights of the downstream
  :class:`~modelyard.models.TabularMLP` (``size_config``) on ``k`` numeric columns, plus
  the front stage's float64 arrays (the ``k x d`` projection, and the centre, divisor,
  mean and fill values). Both grow linearly with ``k`` (each component adds a periodic
  embedding, first-layer weights and a projection row). With ``"auto"`` the smaller of
  the two ``k``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard.compress._design import (
    FAST_MODELS,
    CurvePoint,
    OneHotDesign,
    check_tabular,
    fast_model_score,
    k_grid,
    min_max,
    mlp_size_bytes,
    standardizer,
    subset_data,
    thread_limit,
)
from modelyard.data._schema import Column, Schema
from modelyard.data._tabular import TabularData
from modelyard.errors import DataError, ModelFormatError

__all__ = ["FEATURE_EXTRACTION_METHODS", "FeatureTransform", "reduce_features"]

#: Extraction methods, with the prefix of their output columns.
FEATURE_EXTRACTION_METHODS = {"pca": "pc", "ica": "ic", "nmf": "nmf"}
SCALES = ("standard", "minmax", "none")
_DEFAULT_SCALE = {"pca": "standard", "ica": "standard", "nmf": "minmax"}
#: NMF settings; :meth:`FeatureTransform.transform` solves for new rows with the same ones.
NMF_PARAMS = {"solver": "cd", "beta_loss": "frobenius", "tol": 1e-4, "max_iter": 500, "alpha_W": 0.0,
              "alpha_H": "same", "l1_ratio": 0.0}
FORMAT = "modelyard.feature_transform/1"


@dataclass
class FeatureTransform:
    """A fitted PCA, ICA or NMF over the scaled design matrix, with the figures that chose it.

    For PCA and ICA the transform is affine:
    ``out = ((design(X) - center) / divisor - mean) @ components.T``. For NMF,
    ``out = W`` solving ``min ||Z - W @ components||`` with ``W >= 0`` (coordinate
    descent, as ``sklearn.decomposition.NMF.transform``), ``Z`` the clipped scaled matrix.

    Attributes
    ----------
    method : {"pca", "ica", "nmf"}
    design : OneHotDesign
        How raw columns become the design matrix (its schema is the raw input schema).
    scale : {"standard", "minmax", "none"}
    center, divisor : ndarray of shape (d,)
        Per-design-column scaling from the training rows.
    mean : ndarray of shape (d,)
        The estimator's own centring (``mean_`` of PCA and ICA; zeros for NMF).
    components : ndarray of shape (k, d)
        PCA's principal axes, ICA's unmixing matrix (``components_``) or NMF's ``H``.
    columns : tuple of str
        Output column names.
    explained_variance_ratio : ndarray
        The PCA spectrum of the scaled training matrix (every component): the basis of
        ``"auto"`` for all three methods, and of the report's explained-variance chart.
    variance_kept : float
        Fraction of the scaled training matrix's variance the ``k`` components
        reconstruct (``1 - SSE / SST``); for PCA the cumulative ratio at ``k``.
    variance : float
        The threshold of ``n_components="auto"``.
    target_size : int or None
        The downstream-size bound, if one was given.
    reason : str
        Why ``k`` components.
    converged : bool
        False if the ICA or NMF iterations stopped at their limit.
    curve : list of CurvePoint
        Validation score of the fast model on the first ``k`` components (PCA) or on a
        ``k``-component fit (ICA, NMF), with the downstream MLP's bytes, per ``k``.
    baseline : CurvePoint or None
        The fast model on every raw feature column (``k`` = number of raw columns).
    metric : str
        ``"accuracy"`` or ``"r2"``.
    seed : int
    """

    method: str
    design: OneHotDesign
    scale: str
    center: np.ndarray
    divisor: np.ndarray
    mean: np.ndarray
    components: np.ndarray
    columns: tuple[str, ...]
    explained_variance_ratio: np.ndarray
    variance_kept: float
    variance: float
    target_size: int | None
    reason: str
    converged: bool = True
    curve: list[CurvePoint] = field(default_factory=list)
    baseline: CurvePoint | None = None
    metric: str = "accuracy"
    seed: int = 0

    # -- shape -----------------------------------------------------------------------
    @property
    def n_components(self) -> int:
        return len(self.columns)

    @property
    def input_schema(self) -> Schema:
        """The raw schema the transform reads."""
        return self.design.schema

    @property
    def part_names(self) -> list[str]:
        """Names of the design columns (the components' columns)."""
        return self.design.part_names

    def output_schema(self) -> Schema:
        """The input schema with the components as its numeric feature columns."""
        return dataclasses.replace(self.design.schema, features=tuple(Column(c, "numeric") for c in self.columns))

    # -- applying it -----------------------------------------------------------------
    def scaled(self, frame: pd.DataFrame) -> np.ndarray:
        """The scaled design matrix of ``frame``'s raw columns, float64 ``(n_rows, d)``."""
        z = (self.design.matrix(frame) - self.center) / self.divisor
        if self.method == "nmf":
            z = np.maximum(z, 0.0)  # NMF needs non-negative input; rows below the training minimum clip to it
        return z

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Components of ``frame``'s rows, float64 ``(n_rows, k)``.

        Raises
        ------
        SchemaMismatchError
            If ``frame`` lacks a raw feature column the transform reads.
        """
        z = self.scaled(frame)
        if self.method == "nmf":
            from sklearn.decomposition import non_negative_factorization

            if len(z) == 0:
                return np.empty((0, self.n_components))
            w, _, _ = non_negative_factorization(
                z, H=self.components, n_components=self.n_components, update_H=False, random_state=self.seed,
                **NMF_PARAMS,
            )
            return w
        return (z - self.mean) @ self.components.T

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with its raw feature columns replaced by the components.

        Columns that are not features (the target, sensitive columns, any others) are
        kept, after the components.
        """
        out = pd.DataFrame(self.transform(frame), columns=list(self.columns), index=frame.index)
        features = set(self.design.schema.feature_names)
        sensitive = set(self.design.schema.sensitive)
        rest = [c for c in frame.columns if c not in features or c in sensitive]
        clash = [c for c in rest if c in self.columns]
        if clash:
            raise DataError(
                f"Columns {clash} already exist in the frame and would be overwritten by the components; rename them."
            )
        return pd.concat([out, frame[rest]], axis=1)

    # -- storage ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-able data; floats survive a JSON round trip exactly."""
        return {
            "format": FORMAT,
            "method": self.method,
            "design": self.design.to_dict(),
            "scale": self.scale,
            "center": self.center.tolist(),
            "divisor": self.divisor.tolist(),
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "columns": list(self.columns),
            "explained_variance_ratio": self.explained_variance_ratio.tolist(),
            "variance_kept": self.variance_kept,
            "variance": self.variance,
            "target_size": self.target_size,
            "reason": self.reason,
            "converged": self.converged,
            "curve": [p.to_dict() for p in self.curve],
            "baseline": None if self.baseline is None else self.baseline.to_dict(),
            "metric": self.metric,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureTransform:
        """Rebuild from :meth:`to_dict`'s data.

        Raises
        ------
        ModelFormatError
            If the data is not a feature transform or its arrays disagree in shape.
        """
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ModelFormatError(
                f"Not a modelyard feature transform (format {d.get('format') if isinstance(d, dict) else None!r}, "
                f"expected {FORMAT!r}); write it with FeatureTransform.save."
            )
        try:
            design = OneHotDesign.from_dict(d["design"])
            arrays = {k: np.asarray(d[k], dtype=np.float64) for k in ("center", "divisor", "mean")}
            components = np.asarray(d["components"], dtype=np.float64).reshape(len(d["columns"]), -1)
            out = cls(
                method=str(d["method"]), design=design, scale=str(d["scale"]), components=components,
                columns=tuple(str(c) for c in d["columns"]),
                explained_variance_ratio=np.asarray(d["explained_variance_ratio"], dtype=np.float64),
                variance_kept=float(d["variance_kept"]), variance=float(d["variance"]),
                target_size=None if d["target_size"] is None else int(d["target_size"]), reason=str(d["reason"]),
                converged=bool(d["converged"]), curve=[CurvePoint.from_dict(p) for p in d["curve"]],
                baseline=None if d["baseline"] is None else CurvePoint.from_dict(d["baseline"]),
                metric=str(d["metric"]), seed=int(d["seed"]), **arrays,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"Feature transform data is incomplete or corrupt ({exc}); save it again.") from exc
        d_width = design.width
        shapes_ok = (out.method in FEATURE_EXTRACTION_METHODS and components.shape[1] == d_width
                     and all(a.shape == (d_width,) for a in arrays.values()))
        if not shapes_ok:
            raise ModelFormatError(
                f"Feature transform arrays disagree: {d_width} design columns, components {components.shape}, "
                f"center/divisor/mean {[a.shape for a in arrays.values()]}; the file is corrupt."
            )
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the transform as JSON, atomically."""
        from modelyard._atomic import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, json.dumps(self.to_dict(), allow_nan=False).encode("utf-8"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureTransform:
        """Read a transform written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"Cannot read a feature transform from {str(path)!r}: {exc}.") from exc
        return cls.from_dict(data)

    # -- ONNX ------------------------------------------------------------------------
    def front_onnx(self, *, opset: int = 17, ml_opset: int = 3, ir_version: int = 8) -> Any:
        """An ONNX model from the raw columns to the components, one ``[N, 1]`` float output each.

        The graph fills missing numbers (``IsNaN``/``Where``), turns each category code
        into its indicators (``Equal``), then computes
        ``((z - center) / divisor - mean) @ components.T`` in float64 (``Sub``, ``Div``,
        ``Sub``, ``MatMul``) and casts to float32. Raw inputs are those of every modelyard
        ONNX model (:func:`modelyard.compress.with_raw_inputs`).

        Raises
        ------
        ValueError
            For NMF, whose transform solves a non-negative least-squares problem per row
            and is not a fixed matrix product; or an opset below 13.
        """
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        from modelyard.compress._onnx_frontend import with_raw_inputs

        if self.method == "nmf":
            raise ValueError(
                "An NMF transform has no ONNX front stage: each row's components solve a non-negative least-squares "
                "problem, not a matrix product. Use method='pca' or 'ica' for a model served from raw columns, or "
                "apply FeatureTransform.transform before the model."
            )
        if opset < 13:
            raise ValueError(f"The front stage needs ONNX opset >= 13 (Split with a split input); got {opset}.")
        schema = self.design.schema
        nodes: list[Any] = []
        inits: list[Any] = []
        inputs: list[Any] = []

        def const(name: str, value: np.ndarray) -> str:
            inits.append(numpy_helper.from_array(np.asarray(value), name))
            return name

        parts: list[str] = []
        if schema.numeric:
            inputs.append(helper.make_tensor_value_info("x_num", TensorProto.FLOAT, ["N", len(schema.numeric)]))
            nodes += [
                helper.make_node("Cast", ["x_num"], ["xn"], to=TensorProto.DOUBLE),
                helper.make_node("IsNaN", ["xn"], ["xn_nan"]),
                helper.make_node("Where", ["xn_nan", const("fill", np.asarray(self.design.fill)[None, :]), "xn"],
                                 ["xn_filled"]),
            ]
        if schema.categorical:
            inputs.append(helper.make_tensor_value_info("x_cat", TensorProto.INT64, ["N", len(schema.categorical)]))
        axis1 = const("axis1", np.array([1], dtype=np.int64))
        num_i = cat_i = 0
        for col in schema.features:
            if col.kind == "numeric":
                src, j, num_i = "xn_filled", num_i, num_i + 1
            else:
                src, j, cat_i = "x_cat", cat_i, cat_i + 1
                if not self.design.codes[j]:
                    continue
            lo = const(f"start{len(inits)}", np.array([j], dtype=np.int64))
            hi = const(f"end{len(inits)}", np.array([j + 1], dtype=np.int64))
            sliced = f"col/{len(parts)}"
            nodes.append(helper.make_node("Slice", [src, lo, hi, axis1], [sliced]))
            if col.kind == "numeric":
                parts.append(sliced)
            else:
                codes = const(f"codes{len(inits)}", np.asarray(self.design.codes[j], dtype=np.int64)[None, :])
                nodes += [helper.make_node("Equal", [sliced, codes], [sliced + "/eq"]),
                          helper.make_node("Cast", [sliced + "/eq"], [sliced + "/ind"], to=TensorProto.DOUBLE)]
                parts.append(sliced + "/ind")
        nodes += [
            helper.make_node("Concat", parts, ["z_raw"], axis=1) if len(parts) > 1
            else helper.make_node("Identity", parts, ["z_raw"]),
            helper.make_node("Sub", ["z_raw", const("center", self.center[None, :])], ["z_c"]),
            helper.make_node("Div", ["z_c", const("divisor", self.divisor[None, :])], ["z"]),
            helper.make_node("Sub", ["z", const("mean", self.mean[None, :])], ["z_m"]),
            helper.make_node("MatMul", ["z_m", const("projection", np.ascontiguousarray(self.components.T))], ["p64"]),
            helper.make_node("Cast", ["p64"], ["p32"], to=TensorProto.FLOAT),
        ]
        k = self.n_components
        if k == 1:
            nodes.append(helper.make_node("Identity", ["p32"], [self.columns[0]]))
        else:
            nodes.append(helper.make_node("Split", ["p32", const("split", np.ones(k, dtype=np.int64))],
                                          list(self.columns), axis=1))
        outputs = [helper.make_tensor_value_info(c, TensorProto.FLOAT, ["N", 1]) for c in self.columns]
        graph = helper.make_graph(nodes, "feature_transform", inputs, outputs, initializer=inits)
        core = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                      helper.make_opsetid("ai.onnx.ml", ml_opset)])
        core.ir_version = ir_version
        onnx.checker.check_model(core)
        return with_raw_inputs(core, schema, doc=f"modelyard {self.method} feature transform ({k} components).")

    def compose_onnx(self, model: Any) -> Any:
        """Put the front stage before ``model``, an ONNX model that takes the component columns.

        Parameters
        ----------
        model : onnx.ModelProto, bytes, str or os.PathLike
            A model exported by :func:`modelyard.compress.export_onnx` from a predictor
            trained on the reduced data (its inputs are ``self.columns``).

        Returns
        -------
        onnx.ModelProto
            Takes the raw feature columns of :attr:`input_schema` (stored as the model's
            schema, so :class:`~modelyard.models.OnnxPredictor` serves it on raw frames)
            and gives the downstream model's outputs.

        Raises
        ------
        ModelFormatError
            If ``model``'s inputs are not the component columns.
        """
        import onnx
        from onnx import compose, helper

        from modelyard.models._base import SCHEMA_KEY

        if isinstance(model, (str, os.PathLike)):
            model = onnx.load(str(model))
        elif isinstance(model, (bytes, bytearray)):
            model = onnx.load_from_string(bytes(model))
        if not isinstance(model, onnx.ModelProto):
            raise TypeError(f"compose_onnx takes an onnx.ModelProto, bytes or a path; got {type(model).__name__}.")
        inits = {t.name for t in model.graph.initializer}
        inputs = [i.name for i in model.graph.input if i.name not in inits]
        if sorted(inputs) != sorted(self.columns):
            raise ModelFormatError(
                f"The model takes inputs {inputs}, not the transform's components {list(self.columns)}; export a "
                "model trained on the data reduce_features returned."
            )
        opsets = {op.domain or "": op.version for op in model.opset_import}
        front = self.front_onnx(opset=opsets.get("", opsets.get("ai.onnx", 17)),
                                ml_opset=max(opsets.get("ai.onnx.ml", 3), 3), ir_version=model.ir_version)
        front = compose.add_prefix(front, "reduce/", rename_inputs=False, rename_outputs=False)
        down = onnx.ModelProto()
        down.CopyFrom(model)
        if "ai.onnx.ml" not in opsets:  # both halves must import the same opsets
            down.opset_import.append(helper.make_opsetid("ai.onnx.ml", max(opsets.get("ai.onnx.ml", 3), 3)))
        props = {p.key: p.value for p in down.metadata_props if p.key != SCHEMA_KEY}
        del front.metadata_props[:]
        del down.metadata_props[:]
        merged = compose.merge_models(front, down, io_map=[(c, c) for c in self.columns],
                                      producer_name="modelyard")
        props[SCHEMA_KEY] = json.dumps(self.design.schema.to_dict(), sort_keys=True)
        props["modelyard.feature_transform"] = json.dumps({"method": self.method, "columns": list(self.columns)})
        helper.set_model_props(merged, props)
        onnx.checker.check_model(merged)
        return merged


# -- fitting -----------------------------------------------------------------------------
def reduce_features(
    data: TabularData,
    method: str = "pca",
    n_components: int | str = "auto",
    *,
    variance: float = 0.95,
    target_size: int | None = None,
    scale: str | None = None,
    size_config: Any = None,
    model: str = "linear",
    curve: bool = True,
    n_threads: int | None = 1,
    seed: int = 0,
) -> tuple[TabularData, FeatureTransform]:
    """Replace the raw feature columns by PCA, ICA or NMF components fitted on the training split.

    Parameters
    ----------
    data : TabularData
    method : {"pca", "ica", "nmf"}, default="pca"
    n_components : int or "auto", default="auto"
        Components to keep, or ``"auto"``: the smallest ``k`` whose cumulative explained
        variance reaches ``variance`` (module docstring).
    variance : float, default=0.95
        Explained-variance threshold of ``"auto"``, in (0, 1].
    target_size : int or None, default=None
        Parameter bytes the served model (downstream MLP of ``size_config`` plus the
        front stage) may have; keeps the largest ``k`` that fits (with ``"auto"``, the
        smaller of the two choices).
    scale : {"standard", "minmax", "none"} or None, default=None
        Scaling of the design matrix; None: ``"standard"`` for PCA and ICA, ``"minmax"`` for NMF.
    size_config : MLPConfig or None, default=None
        The downstream MLP for ``target_size`` and the curve's sizes (``MLPConfig()`` when None).
    model : {"linear", "gbm"}, default="linear"
        Fast model of the accuracy curve.
    curve : bool, default=True
        Score the fast model on the validation split for ``k`` on a grid (PCA: prefixes
        of one fit, up to 12 values over the whole range; ICA and NMF: one fit per ``k``,
        up to 8 values up to twice the chosen ``k``).
    n_threads : int or None, default=1
        BLAS and OpenMP threads (see :func:`~modelyard.compress.select_features`).
    seed : int, default=0
        Seeds ICA, NMF and the fast model.

    Returns
    -------
    (TabularData, FeatureTransform)
        Every split with the components as its numeric feature columns (the target,
        sensitive and other non-feature columns stay), and the fitted transform.

    Raises
    ------
    ValueError
        An unknown method or scale (listing the known ones), ``n_components`` outside
        ``1 .. min(rows, design columns)``, ``variance`` outside (0, 1], ``target_size``
        below the smallest downstream model, both an int ``n_components`` and ``target_size``.
    DataError
        NMF on data it cannot take: standardized (negative) values, or negative values
        with ``scale="none"``; a component name clashing with an existing column.
    """
    check_tabular(data, "reduce_features")
    if method not in FEATURE_EXTRACTION_METHODS:
        raise ValueError(f"Unknown feature-extraction method {method!r}; known: {list(FEATURE_EXTRACTION_METHODS)}.")
    scale = _DEFAULT_SCALE[method] if scale is None else scale
    if scale not in SCALES:
        raise ValueError(f"Unknown scale {scale!r}; known: {list(SCALES)}.")
    if model not in FAST_MODELS:
        raise ValueError(f"Unknown fast model {model!r}; known: {list(FAST_MODELS)}.")
    if not (isinstance(variance, (int, float)) and 0 < variance <= 1):
        raise ValueError(f"variance must be in (0, 1] (a fraction of explained variance); got {variance!r}.")
    if not (n_components == "auto" or (isinstance(n_components, (int, np.integer)) and not isinstance(n_components, bool))):
        raise ValueError(f"n_components must be 'auto' or a positive int; got {n_components!r}.")
    if target_size is not None:
        if n_components != "auto":
            raise ValueError(
                f"Give n_components={n_components!r} or target_size={target_size!r}, not both: target_size chooses "
                "the number of components. Leave n_components='auto'."
            )
        if not (isinstance(target_size, (int, np.integer)) and target_size > 0):
            raise ValueError(f"target_size must be a positive number of bytes; got {target_size!r}.")
    if method == "nmf" and scale == "standard":
        raise DataError(
            "NMF needs non-negative input, and standardized values are negative below the mean; use "
            "scale='minmax' (the NMF default) or method='pca'."
        )
    if n_threads is not None and n_threads < 1:
        raise ValueError(f"n_threads must be None or at least 1; got {n_threads!r}.")
    with thread_limit(n_threads):
        return _reduce(data, method, n_components, variance=float(variance), target_size=target_size, scale=scale,
                       size_config=size_config, model=model, curve=curve, seed=seed)


def _reduce(data: TabularData, method: str, n_components: int | str, *, variance: float, target_size: int | None,
            scale: str, size_config: Any, model: str, curve: bool, seed: int) -> tuple[TabularData, FeatureTransform]:
    from sklearn.decomposition import PCA

    design = OneHotDesign.fit(data.train)
    raw = design.matrix(data.train.X)  # (n, d)
    n_rows, width = raw.shape
    if width == 0:
        raise DataError("Every feature column is constant in the training split; there is nothing to reduce.")
    if method == "nmf" and scale == "none" and (raw < 0).any():
        neg = sorted({design.schema.feature_names[i] for i in design.owner[np.flatnonzero((raw < 0).any(axis=0))]})
        raise DataError(
            f"NMF needs non-negative input, but columns {neg} have negative values; use scale='minmax' "
            "(the NMF default) or method='pca'."
        )
    if scale == "standard":
        center, divisor = standardizer(raw)
    elif scale == "minmax":
        center, divisor = min_max(raw)
    else:
        center, divisor = np.zeros(width), np.ones(width)
    z = (raw - center) / divisor
    k_max = min(n_rows, width)
    if n_components != "auto" and not 1 <= int(n_components) <= k_max:
        raise ValueError(
            f"n_components={n_components} but at most {k_max} components exist (min of {n_rows} training rows and "
            f"{width} design columns: numeric columns plus one indicator per category); pass 1 .. {k_max} or 'auto'."
        )

    spectrum = PCA(svd_solver="full").fit(z).explained_variance_ratio_  # (min(n, d),)
    prefix = FEATURE_EXTRACTION_METHODS[method]
    taken = set(data.train.frame.columns) - set(design.schema.feature_names)
    names = [f"{prefix}_{i + 1}" for i in range(k_max)]
    clash = sorted(taken & set(names))
    if clash:
        raise DataError(f"Non-feature columns {clash} clash with the component names {prefix}_1 ..; rename them.")
    cumulative = np.cumsum(spectrum)
    k_var = int(min(np.searchsorted(cumulative, variance) + 1, len(cumulative)))  # first k with cumsum >= variance
    if n_components == "auto":
        k = k_var
        reason = (f"smallest k whose cumulative explained variance reaches {variance:g}: "
                  f"{cumulative[k - 1]:.4f} at k={k}")
        if method != "pca":
            reason += f" (PCA spectrum of the {scale}-scaled design, used for {method.upper()})"
        if target_size is not None:
            k_size = _largest_fitting(design, target_size, size_config, k_max)
            if k_size < k:
                k = k_size
                reason = (f"largest k whose served model (MLP + front stage) fits target_size={target_size} bytes "
                          f"({_model_bytes(design, k, size_config)} bytes at k={k}); "
                          f"the variance rule wanted k={k_var}")
            else:
                reason += f"; the served model ({_model_bytes(design, k, size_config)} bytes) fits target_size"
    else:
        k = int(n_components)
        reason = f"n_components={k} given; cumulative explained variance {cumulative[min(k, len(cumulative)) - 1]:.4f}"

    mean, comps, kept, converged = _fit(method, z, k, seed)
    transform = FeatureTransform(
        method=method, design=design, scale=scale, center=center, divisor=divisor, mean=mean, components=comps,
        columns=tuple(names[:k]), explained_variance_ratio=spectrum, variance_kept=kept, variance=variance,
        target_size=None if target_size is None else int(target_size), reason=reason, converged=converged,
        metric="r2" if data.schema.task == "regression" else "accuracy", seed=seed,
    )
    if curve:
        transform.curve, transform.baseline = _curve(data, transform, z, k_max, size_config, model, seed)
    schema = transform.output_schema()
    frames = {name: transform.apply(split.frame) for name, split in data.splits.items()}
    return subset_data(data, schema, frames, suffix=f"[{method} {k}]"), transform


def _fit(method: str, z: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """Fit one extractor on the scaled matrix: ``(mean, components, variance_kept, converged)``."""
    from sklearn.decomposition import NMF, PCA, FastICA
    from sklearn.exceptions import ConvergenceWarning

    sst = float(((z - z.mean(axis=0)) ** 2).sum()) or 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if method == "pca":
            est = PCA(n_components=k, svd_solver="full").fit(z)
            mean, comps = est.mean_, est.components_
            kept = float(est.explained_variance_ratio_.sum())
        elif method == "ica":
            est = FastICA(n_components=k, whiten="unit-variance", max_iter=1000, random_state=seed).fit(z)
            mean, comps = est.mean_, est.components_
            recon = est.inverse_transform(est.transform(z))
            kept = 1.0 - float(((z - recon) ** 2).sum()) / sst
        else:
            est = NMF(n_components=k, init="nndsvda", random_state=seed, **NMF_PARAMS)
            w = est.fit_transform(z)
            mean, comps = np.zeros(z.shape[1]), est.components_
            kept = 1.0 - float(((z - w @ comps) ** 2).sum()) / sst
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return np.asarray(mean, dtype=np.float64), np.asarray(comps, dtype=np.float64), kept, converged


def _model_bytes(design: OneHotDesign, k: int, size_config: Any) -> int:
    """Parameter bytes of the served model on k components: the MLP's float32 weights and the front's float64 arrays."""
    sub = dataclasses.replace(design.schema, features=tuple(Column(f"c{i}", "numeric") for i in range(k)))
    front = 8 * (k * design.width + 3 * design.width + len(design.schema.numeric))
    return mlp_size_bytes(sub, size_config) + front


def _largest_fitting(design: OneHotDesign, target_size: int, size_config: Any, k_max: int) -> int:
    """The largest k in 1..k_max whose served model has at most target_size bytes (bisection)."""
    smallest = _model_bytes(design, 1, size_config)
    if smallest > target_size:
        raise ValueError(
            f"target_size={target_size} bytes is below the smallest served model: {smallest} bytes with one "
            "component (MLP weights and front stage). Raise target_size, or give a smaller size_config (narrower "
            "hidden_sizes, numeric_embedding='none')."
        )
    lo, hi = 1, k_max  # size is increasing in k: each column adds its embedding and first-layer weights
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _model_bytes(design, mid, size_config) <= target_size:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _curve(data: TabularData, transform: FeatureTransform, z: np.ndarray, k_max: int, size_config: Any,
           model: str, seed: int) -> tuple[list[CurvePoint], CurvePoint]:
    """Fast-model validation score per number of components, and the all-raw-columns baseline."""
    from sklearn.decomposition import PCA

    task = data.schema.task
    y_train, y_valid = data.train.y, data.valid.y
    design = transform.design
    z_valid = (design.matrix(data.valid.X) - transform.center) / transform.divisor
    if transform.method == "nmf":
        z_valid = np.maximum(z_valid, 0.0)
    k = transform.n_components
    if transform.method == "pca":  # prefixes of one fit: cheap, so the whole range
        grid = sorted(set(k_grid(k_max, max_points=12)) | {k})
    else:  # one fit per k: up to twice the chosen k
        grid = sorted(set(k_grid(min(k_max, max(2 * k, 10)), max_points=8)) | {k})
    points = []
    if transform.method == "pca":
        est = PCA(n_components=max(grid), svd_solver="full").fit(z)
        p_train, p_valid = est.transform(z), est.transform(z_valid)
    for kk in grid:
        if transform.method == "pca":
            x_tr, x_va = p_train[:, :kk], p_valid[:, :kk]
        elif kk == k:
            x_tr, x_va = transform.transform(data.train.X), transform.transform(data.valid.X)
        else:
            mean, comps, _, _ = _fit(transform.method, z, kk, seed)
            sub = dataclasses.replace(transform, mean=mean, components=comps,
                                      columns=tuple(f"c{i}" for i in range(kk)))
            x_tr, x_va = sub.transform(data.train.X), sub.transform(data.valid.X)
        score, n_params = fast_model_score(x_tr, y_train, x_va, y_valid, task, model=model, seed=seed)
        points.append(CurvePoint(kk, score, n_params, _model_bytes(design, kk, size_config),
                                 tuple(f"{FEATURE_EXTRACTION_METHODS[transform.method]}_{i + 1}" for i in range(kk))))
    # Baseline: the fast model on every raw column (one-hot design for "linear", codes for "gbm").
    if model == "linear":
        b_train, b_valid, categorical = design.matrix(data.train.X), design.matrix(data.valid.X), None
    else:
        schema = design.schema
        b_train, b_valid = design.code_matrix(data.train.X), design.code_matrix(data.valid.X)
        categorical = [False] * len(schema.numeric) + [len(c.categories) < 254 for c in schema.categorical]
    score, n_params = fast_model_score(b_train, y_train, b_valid, y_valid, task, model=model,
                                       categorical=categorical, seed=seed)
    names = tuple(design.schema.feature_names)
    baseline = CurvePoint(len(names), score, n_params, mlp_size_bytes(design.schema, size_config), names)
    return points, baseline
