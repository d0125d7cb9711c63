"""Compression and export: ONNX export with parity checks, and measurement of model variants where they are served."""

from modelyard.compress._design import CurvePoint
from modelyard.compress._export import ONNX_EXPORTERS, ExportResult, export_onnx
from modelyard.compress._measure import Latency, Measurement, compare, file_sizes, measure, session_latency
from modelyard.compress._lottery import LotteryResult, LotteryRound, find_ticket, reinitialized_control
from modelyard.compress._obd import HESSIAN_METHODS, hessian_diagonal, obd_saliency
from modelyard.compress._onnx_frontend import with_raw_inputs
from modelyard.compress._prune import (
    PRUNABLE_TYPES,
    PRUNING_CRITERIA,
    GradualPruner,
    PolynomialDecay,
    SparseSizes,
    apply_masks,
    fine_tuner,
    fold_masks,
    load_sparse,
    magnitude_masks,
    prunable_layers,
    prune,
    prune_unstructured,
    save_sparse,
    sparse_sizes,
    weight_sparsity,
)
from modelyard.compress._structured import StructuredResult, UnitGroup, prune_structured, unit_groups, unit_importance
from modelyard.compress._reduce import FEATURE_EXTRACTION_METHODS, FeatureTransform, reduce_features
from modelyard.compress._select_features import FEATURE_SELECTION_METHODS, SelectionResult, select_features
from modelyard.compress._tree_onnx import hgb_to_onnx, sklearn_to_onnx

__all__ = [
    "HESSIAN_METHODS",
    "PRUNABLE_TYPES",
    "PRUNING_CRITERIA",
    "GradualPruner",
    "LotteryResult",
    "LotteryRound",
    "PolynomialDecay",
    "SparseSizes",
    "StructuredResult",
    "UnitGroup",
    "apply_masks",
    "find_ticket",
    "fine_tuner",
    "fold_masks",
    "hessian_diagonal",
    "load_sparse",
    "magnitude_masks",
    "obd_saliency",
    "prunable_layers",
    "prune",
    "prune_structured",
    "prune_unstructured",
    "reinitialized_control",
    "save_sparse",
    "sparse_sizes",
    "unit_groups",
    "unit_importance",
    "weight_sparsity",
    "FEATURE_EXTRACTION_METHODS",
    "FEATURE_SELECTION_METHODS",
    "CurvePoint",
    "FeatureTransform",
    "SelectionResult",
    "reduce_features",
    "select_features",
    "ONNX_EXPORTERS",
    "ExportResult",
    "Latency",
    "Measurement",
    "compare",
    "export_onnx",
    "file_sizes",
    "hgb_to_onnx",
    "measure",
    "session_latency",
    "sklearn_to_onnx",
    "with_raw_inputs",
]
