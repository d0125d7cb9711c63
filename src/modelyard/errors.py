"""Exceptions raised by modelyard.

Every error a user can cause derives from :class:`ModelyardError`. Its message is one
line that names the problem and says how to fix it; the CLI prints exactly that line
(with a traceback only under ``--debug``). Each subclass also derives from the builtin
type that fits what went wrong (``ValueError`` for a bad value, ``TypeError`` for a
wrong kind of value), so callers can catch either.
"""

from __future__ import annotations

__all__ = [
    "ModelyardError",
    "SpecError",
    "DataError",
    "SchemaMismatchError",
    "ModelFormatError",
    "StoreError",
    "DownloadError",
    "ChecksumError",
]


class ModelyardError(Exception):
    """Base class of every error modelyard raises on bad input."""


class SpecError(ModelyardError, ValueError):
    """A pipeline spec is invalid: names the field's path, the bad value and what is allowed."""


class DataError(ModelyardError, ValueError):
    """A data set cannot be used: missing target, one class, empty or unparsable file."""


class SchemaMismatchError(DataError):
    """The columns given at prediction time differ from those the model was trained on."""


class ModelFormatError(ModelyardError, ValueError):
    """A stored model (safetensors weights, ONNX file) is corrupted or not what was expected."""


class StoreError(ModelyardError, RuntimeError):
    """The metadata or artifact store cannot do what was asked (unknown run, unsafe path)."""


class DownloadError(ModelyardError, OSError):
    """A data file could not be downloaded."""


class ChecksumError(DataError):
    """A data file's SHA-256 differs from the published one."""
