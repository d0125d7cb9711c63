"""Steps: named stages with a typed config that read and write artifacts.

A step never reaches into another step's folder: it names its inputs as
``"<step>:<artifact>"`` references, and the runner hands it their paths. It writes
its outputs through :class:`StepContext`, atomically, under its own folder.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import inspect
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from modelyard.pipeline._artifacts import ArtifactStore, atomic_path

__all__ = ["Step", "StepContext", "ExternalInput"]


@dataclass(frozen=True)
class ExternalInput:
    """A file read from outside the run (a data set's source file), named by its digest."""

    name: str  # e.g. "adult/adult.data"
    uri: str  # where it was read from
    digest: str  # SHA-256 of its bytes
    size: int


class Step(abc.ABC):
    """One stage of a pipeline.

    Subclasses set :attr:`kind` and :attr:`VERSION` (bump it when the step's
    behaviour changes, so old cache entries are not reused) and implement :meth:`run`.

    Parameters
    ----------
    name : str
        Unique in the pipeline (``"train.mlp"``); the folder is the name with dots as slashes.
    config : dict
        The step's resolved config (plain JSON data); it is part of the cache key.
    inputs : dict of str to str
        Role -> ``"<step>:<artifact name>"`` of an upstream output.
    """

    kind: ClassVar[str] = "step"
    VERSION: ClassVar[str] = "1"
    #: Outputs copied to the top of the run folder under another name, e.g. {"model.onnx": "model.onnx"}.
    publish: ClassVar[dict[str, str]] = {}

    def __init__(self, name: str, config: dict[str, Any], inputs: dict[str, str] | None = None) -> None:
        self.name = name
        self.config = config
        self.inputs = dict(inputs or {})

    @property
    def folder(self) -> str:
        return self.name.replace(".", "/")

    def code_version(self) -> str:
        """Package version, the step's VERSION and a digest of the module that defines it."""
        from modelyard import __version__

        try:
            src = inspect.getsource(inspect.getmodule(type(self)))  # type: ignore[arg-type]
        except (OSError, TypeError):
            src = ""
        digest = hashlib.sha256(src.encode()).hexdigest()[:12]
        return f"{__version__}/{type(self).__name__}:{self.VERSION}/{digest}"

    def external_inputs(self) -> list[ExternalInput]:
        """Files from outside the run that this step reads; their digests enter the cache key."""
        return []

    def cache_key(self, input_digests: dict[str, str], external: list[ExternalInput]) -> str:
        payload = {
            "step": self.name,
            "code": self.code_version(),
            "config": self.config,
            "inputs": dict(sorted(input_digests.items())),
            "external": sorted((e.name, e.digest) for e in external),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    @abc.abstractmethod
    def run(self, ctx: StepContext) -> None:
        """Read ``ctx.input(role)``, write outputs with ``ctx.output(name)`` / ``ctx.write_json``."""

    def summary(self, figures: dict[str, Any]) -> str:
        """One line of key figures shown after the step finishes."""
        return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
                         if not isinstance(v, (dict, list)))


ProgressFactory = Callable[[str, "int | None"], Callable[..., None]]


@dataclass
class StepContext:
    """What a running step sees: its inputs, its output folder, progress and figures."""

    step: Step
    store: ArtifactStore
    run_id: str
    input_paths: dict[str, Path]
    make_progress: ProgressFactory
    state_dir: Path | None = None  # survives an interrupted run: a resumable step keeps its progress here
    outputs: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def input(self, role: str) -> Path:
        try:
            return self.input_paths[role]
        except KeyError:
            raise KeyError(f"Step {self.step.name!r} has no input {role!r}; it has {sorted(self.input_paths)}") from None

    def read_json(self, role: str) -> Any:
        return json.loads(self.input(role).read_text(encoding="utf-8"))

    def _name(self, name: str) -> str:
        return f"{self.step.folder}/{name}"

    @contextlib.contextmanager
    def output(self, name: str) -> Iterator[Path]:
        """A temporary path to write output ``name`` to; it appears atomically on success."""
        final = self.store.path(self._name(name))
        with atomic_path(final) as tmp:
            yield tmp
        self.outputs[name] = final

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.store.write_json(self._name(name), obj)
        self.outputs[name] = path
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.store.write_text(self._name(name), text)
        self.outputs[name] = path
        return path

    def progress(self, description: str, total: int | None = None) -> Callable[..., None]:
        """Start a progress bar; call the returned function with ``advance=`` or ``completed=``."""
        return self.make_progress(description, total)

    def record(self, **figures: Any) -> None:
        """Key figures of this execution (stored in the metadata store, shown in the CLI)."""
        self.figures.update(figures)
