"""Compression and export: ONNX export with parity checks (pruning and quantization come later)."""

from modelyard.compress._onnx_frontend import with_raw_inputs

__all__ = ["with_raw_inputs"]
