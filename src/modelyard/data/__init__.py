"""Data sets: built-in loaders with checksums, CSV/Parquet readers, schemas and splits."""

from modelyard.data._schema import Column, Schema, category_strings, encode_frame, encode_target, infer_schema
from modelyard.data._tabular import TabularData, TabularSplit

__all__ = [
    "Column",
    "Schema",
    "TabularData",
    "TabularSplit",
    "category_strings",
    "encode_frame",
    "encode_target",
    "infer_schema",
]
