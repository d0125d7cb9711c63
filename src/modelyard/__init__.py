"""modelyard: take a model from first fit to production-ready in one pipeline.

Subpackages load on first use so that ``import modelyard`` stays fast::

    import modelyard as my
    data = my.data.load("adult")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBPACKAGES = (
    "data", "models", "train", "compress", "evaluate", "explain", "search", "pipeline", "report", "errors",
)
__all__ = ["__version__", *_SUBPACKAGES]

if TYPE_CHECKING:  # pragma: no cover
    from modelyard import compress, data, errors, evaluate, models, pipeline, report, train  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"modelyard.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'modelyard' has no attribute {name!r}")
