"""Data sets: built-in loaders with checksums, CSV/Parquet readers, schemas and splits."""

from modelyard.data._builtin import DATASET_FILES, DATASETS, FILES, DataFile, builtin_files, load
from modelyard.data._download import default_cache_dir, fetch, resolve, sha256_file
from modelyard.data._image import ImageData, ImageSplit, load_image_split, save_image_split
from modelyard.data._readers import from_csv, from_frame, from_parquet, read_idx, read_table
from modelyard.data._schema import Column, Schema, category_strings, encode_frame, encode_target, infer_schema
from modelyard.data._split import check_fractions, split_frame, split_indices, subsample_indices
from modelyard.data._tabular import TabularData, TabularSplit

__all__ = [
    "Column",
    "DATASET_FILES",
    "DATASETS",
    "DataFile",
    "FILES",
    "ImageData",
    "ImageSplit",
    "Schema",
    "TabularData",
    "TabularSplit",
    "builtin_files",
    "category_strings",
    "check_fractions",
    "default_cache_dir",
    "encode_frame",
    "encode_target",
    "fetch",
    "from_csv",
    "from_frame",
    "from_parquet",
    "infer_schema",
    "load",
    "load_image_split",
    "read_idx",
    "read_table",
    "resolve",
    "save_image_split",
    "sha256_file",
    "split_frame",
    "split_indices",
    "subsample_indices",
]
