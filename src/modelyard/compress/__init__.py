"""Compression and export: ONNX export with parity checks (pruning and quantization come later)."""

from modelyard.compress._export import ONNX_EXPORTERS, ExportResult, export_onnx
from modelyard.compress._onnx_frontend import with_raw_inputs
from modelyard.compress._tree_onnx import hgb_to_onnx, sklearn_to_onnx

__all__ = ["ONNX_EXPORTERS", "ExportResult", "export_onnx", "hgb_to_onnx", "sklearn_to_onnx", "with_raw_inputs"]
