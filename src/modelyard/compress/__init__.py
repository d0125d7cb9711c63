"""Compression and export: ONNX export with parity checks, and measurement of model variants where they are served."""

from modelyard.compress._design import CurvePoint
from modelyard.compress._export import ONNX_EXPORTERS, ExportResult, export_onnx
from modelyard.compress._measure import Latency, Measurement, compare, file_sizes, measure, session_latency
from modelyard.compress._onnx_frontend import with_raw_inputs
from modelyard.compress._reduce import FEATURE_EXTRACTION_METHODS, FeatureTransform, reduce_features
from modelyard.compress._select_features import FEATURE_SELECTION_METHODS, SelectionResult, select_features
from modelyard.compress._tree_onnx import hgb_to_onnx, sklearn_to_onnx

__all__ = [
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
