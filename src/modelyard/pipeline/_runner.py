"""The runner: executes a pipeline's steps in order, with caching, lineage and recovery.

For each step it computes a cache key from the step's name, code version, config and
the digests of its inputs. A finished execution with the same key whose files are
intact is reused: its outputs are linked into the new run's folder and the reuse is
recorded. Otherwise the step runs, writes its outputs atomically, and its execution,
artifacts and events are committed in one transaction. A run killed at any point
leaves the store consistent; the next run reconciles the dead run (marks it aborted)
and resumes from the last finished step through the cache.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modelyard.errors import ModelyardError, StoreError
from modelyard.pipeline._artifacts import ArtifactStore, sha256_file
from modelyard.pipeline._spec import PipelineSpec
from modelyard.pipeline._step import Step, StepContext
from modelyard.pipeline._store import (
    ABORTED, CACHED, COMPLETE, FAILED, SUCCEEDED, ArtifactRecord, ExecutionRecord, MetadataStore, spec_digest,
)

__all__ = ["Runner", "RunResult", "StepResult", "new_run_id"]


def new_run_id() -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


@dataclass
class StepResult:
    name: str
    status: str  # "ran" or "cached"
    seconds: float
    execution_id: int
    cached_from_run: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    run_id: str
    root: Path
    status: str
    steps: list[StepResult]
    seconds: float
    aborted_runs: list[str] = field(default_factory=list)

    @property
    def all_cached(self) -> bool:
        return all(s.status == "cached" for s in self.steps)


class _Reporter:
    """Progress bars and one line per step, on stderr through rich (silent when quiet)."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, quiet=quiet, highlight=False)
        self._progress = None

    def start(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("  [progress.description]{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                  console=self.console, transient=True)
        self._progress.start()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def bar(self, description: str, total: int | None) -> Callable[..., None]:
        progress = self._progress
        if progress is None:
            return lambda **_: None
        task = progress.add_task(description, total=total, info="")

        def update(advance: float | None = None, completed: float | None = None, info: str | None = None,
                   total: int | None = None) -> None:
            kwargs: dict[str, Any] = {}
            if advance is not None:
                kwargs["advance"] = advance
            if completed is not None:
                kwargs["completed"] = completed
            if info is not None:
                kwargs["info"] = info
            if total is not None:
                kwargs["total"] = total
            progress.update(task, **kwargs)

        return update

    def line(self, text: str) -> None:
        self.console.print(text)


class Runner:
    """Runs a :class:`PipelineSpec`.

    Parameters
    ----------
    spec : PipelineSpec
    steps : list of Step
        The spec's steps in execution order (see :func:`modelyard.pipeline.build_steps`).
    runs_dir : path, default="runs"
        Run folders go to ``runs_dir/<run-id>``.
    store : MetadataStore or None
        Default: :class:`MetadataStore` at ``$MODELYARD_STORE`` or ``.modelyard/metadata.db``.
    use_cache : bool, default=True
    quiet : bool, default=False
    """

    def __init__(self, spec: PipelineSpec, steps: Sequence[Step], *, runs_dir: str | os.PathLike[str] = "runs",
                 store: MetadataStore | None = None, use_cache: bool = True, quiet: bool = False,
                 resolved_spec: dict[str, Any] | None = None) -> None:
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"Step names must be unique; got {names}.")
        self.spec = spec
        self.steps = list(steps)
        self.runs_dir = Path(runs_dir)
        self.store = store or MetadataStore()
        self.use_cache = use_cache
        self.reporter = _Reporter(quiet)
        self.resolved_spec = resolved_spec if resolved_spec is not None else spec.resolved()

    # -- the run ------------------------------------------------------------------------
    def run(self) -> RunResult:
        t0 = time.perf_counter()
        aborted = self.store.reconcile()
        run_id = new_run_id()
        root = self.runs_dir / run_id
        root.mkdir(parents=True, exist_ok=False)
        root = root.resolve()
        artifacts = ArtifactStore(root)
        artifacts.write_text("spec.yaml", yaml.safe_dump(self.resolved_spec, sort_keys=False))
        self.store.start_run(run_id, pipeline=self.spec.name, spec=self.resolved_spec,
                             spec_digest=spec_digest(self.resolved_spec), root=str(root))
        r = self.reporter
        r.line(f"[bold]modelyard[/bold] run [cyan]{run_id}[/cyan] · pipeline [bold]{self.spec.name}[/bold] "
               f"· {len(self.steps)} steps → {root}")
        if aborted:
            r.line(f"  [yellow]marked {len(aborted)} interrupted run(s) as aborted: {', '.join(aborted)}[/yellow]")
        produced: dict[str, ArtifactRecord] = {}
        results: list[StepResult] = []
        r.start()
        try:
            for step in self.steps:
                results.append(self._run_step(step, run_id, artifacts, produced))
            self._publish(artifacts, produced)
        except BaseException as exc:
            r.stop()
            status = ABORTED if isinstance(exc, KeyboardInterrupt) else FAILED
            self.store.finish_run(run_id, status, error=_one_line(exc))
            raise
        finally:
            r.stop()
        self.store.finish_run(run_id, SUCCEEDED)
        seconds = time.perf_counter() - t0
        n_cached = sum(s.status == "cached" for s in results)
        cached = f", {n_cached} of {len(results)} steps reused from cache" if n_cached else ""
        r.line(f"[green]✓[/green] run {run_id} finished in {seconds:.1f}s{cached} → {root}")
        return RunResult(run_id, root, SUCCEEDED, results, seconds, aborted)

    def _run_step(self, step: Step, run_id: str, artifacts: ArtifactStore,
                  produced: dict[str, ArtifactRecord]) -> StepResult:
        r = self.reporter
        t0 = time.perf_counter()
        missing = [ref for ref in step.inputs.values() if ref not in produced]
        if missing:
            raise StoreError(f"Step {step.name!r} needs {missing}, which no earlier step produced.")
        inputs = {role: produced[ref] for role, ref in step.inputs.items()}
        external = step.external_inputs()
        key = step.cache_key({role: a.digest for role, a in inputs.items()}, external)
        config = step.config
        ext_records = [self.store.add_artifact(name=e.name, uri=e.uri, type="source", digest=e.digest, size=e.size)
                       for e in external]
        input_events = [(role, a.id) for role, a in inputs.items()] + [(f"source:{e.name}", e.id) for e in ext_records]

        hit = self._find_cached(step, key) if self.use_cache else None
        if hit is not None:
            exe_id = self.store.start_execution(run_id, step.name, cache_key=key,
                                                code_version=step.code_version(), config=config)
            outputs = []
            for art in hit.outputs:
                rel = art.name
                dest = artifacts.link(art.uri, rel)
                outputs.append((rel.removeprefix(step.folder + "/"),
                                dict(name=rel, uri=str(dest), type=art.type, digest=art.digest, size=art.size)))
            origin = hit.cached_from or hit.id
            records = self.store.finish_execution(exe_id, status=CACHED, inputs=input_events, outputs=outputs,
                                                  figures=hit.figures, cached_from=origin,
                                                  seconds=time.perf_counter() - t0)
            for rec in records:
                produced[f"{step.name}:{rec.name.removeprefix(step.folder + '/')}"] = rec
            origin_run = self.store.execution(origin).run_id
            r.line(f"  [blue]↺[/blue] {step.name:<14} cached (from run {origin_run}) · {step.summary(hit.figures)}")
            return StepResult(step.name, "cached", time.perf_counter() - t0, exe_id, origin_run, hit.figures)

        exe_id = self.store.start_execution(run_id, step.name, cache_key=key, code_version=step.code_version(),
                                            config=config)
        # Keyed by the cache key: a re-run of the same step on the same inputs finds what the
        # interrupted one left (a search's study) and resumes it.
        state_dir = self.runs_dir / ".state" / f"{step.folder.replace('/', '-')}-{key[:16]}"
        ctx = StepContext(step=step, store=artifacts, run_id=run_id,
                          input_paths={role: Path(a.uri) for role, a in inputs.items()},
                          make_progress=r.bar, state_dir=state_dir)
        try:
            step.run(ctx)
            if not ctx.outputs:
                raise StoreError(f"Step {step.name!r} wrote no output.")
            outputs = []
            for name, path in sorted(ctx.outputs.items()):
                rel = f"{step.folder}/{name}"
                outputs.append((name, dict(name=rel, uri=str(path), type=_artifact_type(name),
                                           digest=sha256_file(path), size=path.stat().st_size)))
        except BaseException as exc:
            self.store.fail_execution(exe_id, _one_line(exc) if not isinstance(exc, KeyboardInterrupt)
                                      else "interrupted")
            r.stop()
            r.line(f"  [red]✗[/red] {step.name:<14} failed after {time.perf_counter() - t0:.1f}s")
            raise
        seconds = time.perf_counter() - t0
        figures = {"seconds": round(seconds, 3), **ctx.figures}
        records = self.store.finish_execution(exe_id, status=COMPLETE, inputs=input_events, outputs=outputs,
                                              figures=figures, seconds=seconds)
        for rec in records:
            produced[f"{step.name}:{rec.name.removeprefix(step.folder + '/')}"] = rec
        shutil.rmtree(state_dir, ignore_errors=True)  # finished: its outputs are recorded and cached
        r.line(f"  [green]✓[/green] {step.name:<14} {seconds:6.1f}s · {step.summary(ctx.figures)}")
        return StepResult(step.name, "ran", seconds, exe_id, None, figures)

    def _find_cached(self, step: Step, key: str) -> ExecutionRecord | None:
        """The newest finished execution with this key whose output files are intact."""
        for cand in self.store.cache_candidates(step.name, key):
            if cand.outputs and all(_intact(a) for a in cand.outputs):
                return cand
        return None

    def _publish(self, artifacts: ArtifactStore, produced: dict[str, ArtifactRecord]) -> None:
        """Place the headline files at the top of the run folder (hard links)."""
        for step in self.steps:
            for name, top in step.publish.items():
                rec = produced.get(f"{step.name}:{name}")
                if rec is not None:
                    artifacts.link(rec.uri, top)


def _intact(a: ArtifactRecord) -> bool:
    p = Path(a.uri)
    try:
        if p.stat().st_size != a.size:
            return False
    except OSError:
        return False
    # A size match is not enough: a file edited in place must not be reused.
    return sha256_file(p) == a.digest


def _artifact_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return {".parquet": "dataset", ".npz": "dataset", ".safetensors": "model", ".onnx": "model", ".json": "metrics",
            ".html": "report", ".md": "model_card"}.get(suffix, "file")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, ModelyardError) else text
