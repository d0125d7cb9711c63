"""Pipelines: the YAML spec, steps, the runner, the artifact store, the metadata store and the cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modelyard.errors import SpecError

from modelyard.pipeline._artifacts import ArtifactStore, atomic_path, safe_relpath, sha256_file
from modelyard.pipeline._runner import Runner, RunResult, StepResult
from modelyard.pipeline._spec import PipelineSpec, load_spec, parse_spec
from modelyard.pipeline._stages import build_steps, resolve_source
from modelyard.pipeline._step import ExternalInput, Step, StepContext
from modelyard.pipeline._store import LineageNode, MetadataStore, default_store_url

__all__ = [
    "ArtifactStore", "ExternalInput", "LineageNode", "MetadataStore", "PipelineSpec", "RunResult", "Runner",
    "Step", "StepContext", "StepResult", "atomic_path", "build_steps", "default_store_url", "load_spec",
    "parse_spec", "run", "safe_relpath", "sha256_file",
]


def run(
    spec: str | os.PathLike[str] | PipelineSpec,
    *,
    runs_dir: str | os.PathLike[str] = "runs",
    store: MetadataStore | str | None = None,
    use_cache: bool = True,
    quiet: bool = False,
    until: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunResult:
    """Validate a spec, then run its pipeline.

    Parameters
    ----------
    spec : path or PipelineSpec
        A YAML file (validated before anything runs) or an already parsed spec.
    runs_dir : path, default="runs"
    store : MetadataStore, URL or None
        Default: ``$MODELYARD_STORE`` or SQLite at ``.modelyard/metadata.db``.
    use_cache : bool, default=True
        Reuse finished steps whose key (name, code, config, input digests) is unchanged.
    quiet : bool, default=False
        No progress bars or step lines.
    until : str or None, default=None
        Run the steps up to and including this one (``modelyard search`` runs until ``"search"``).
    overrides : dict or None
        Spec values to replace before validation, by dotted path (``{"search.workers": 4}``).

    Examples
    --------
    >>> import modelyard as my
    >>> result = my.pipeline.run("examples/adult.yaml")  # doctest: +SKIP
    >>> result.root / "report.html"  # doctest: +SKIP
    """
    spec_dir = None
    if not isinstance(spec, PipelineSpec):
        spec_dir = Path(spec).resolve().parent
        spec = load_spec(spec)
    if overrides:
        data = spec.model_dump(mode="json", exclude_unset=True)
        for path, value in overrides.items():
            node = data
            *parents, leaf = path.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        spec = parse_spec(data)
    resolved = spec.resolved()
    resolved["data"]["source"] = resolve_source(spec.data.source, spec_dir)
    gate = (resolved.get("evaluate") or {}).get("gate") or {}
    if gate.get("baseline") and spec_dir is not None:
        # a relative baseline is found beside the spec first, as the data source is
        rel = Path(gate["baseline"]).expanduser()
        if not rel.is_absolute() and (spec_dir / rel).exists():
            gate["baseline"] = str((spec_dir / rel).resolve())
    steps = build_steps(spec, resolved)
    if until is not None:
        names = [s.name for s in steps]
        if until not in names:
            raise SpecError(f"The spec has no {until!r} step (steps: {names}); add a `{until}:` section.")
        steps = steps[: names.index(until) + 1]
    own_store = not isinstance(store, MetadataStore)
    meta = store if isinstance(store, MetadataStore) else MetadataStore(store)
    try:
        return Runner(spec, steps, runs_dir=runs_dir, store=meta, use_cache=use_cache, quiet=quiet,
                      resolved_spec=resolved).run()
    finally:
        if own_store:
            meta.close()
