"""The metadata store: runs, step executions, artifacts and the events that link them.

It follows the ML Metadata model: an *artifact* is a file with a content digest, an
*execution* is one run of one step, and an *event* says that an execution read
(``input``) or wrote (``output``) an artifact. A *run* is the context that groups a
pipeline's executions. Lineage is a walk over events: from an artifact to the
execution that wrote it, to that execution's inputs, and so on.

SQLAlchemy over SQLite by default (``sqlite:///.modelyard/metadata.db``); any
PostgreSQL URL works for a shared store (``postgresql://user@host/db``, through the
``psycopg`` driver: ``pip install 'modelyard[postgres]'``).

Consistency: an execution and its output artifacts and events are committed in one
transaction, after the artifact files are in place. A process killed at any point
therefore leaves either a finished execution whose files exist, or an unfinished one
with no outputs; :meth:`MetadataStore.reconcile` marks the unfinished ones of dead
processes as aborted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    JSON, DateTime, Float, ForeignKey, Integer, String, Text, create_engine, event, func, select, update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from modelyard.errors import StoreError

__all__ = ["MetadataStore", "ArtifactRecord", "ExecutionRecord", "RunRecord", "default_store_url", "LineageNode"]

DEFAULT_STORE = "sqlite:///.modelyard/metadata.db"

# Statuses
RUNNING, SUCCEEDED, FAILED, ABORTED = "running", "succeeded", "failed", "aborted"
COMPLETE, CACHED = "complete", "cached"
DONE = (COMPLETE, CACHED)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def default_store_url() -> str:
    """``$MODELYARD_STORE`` if set, else SQLite at ``.modelyard/metadata.db``."""
    return os.environ.get("MODELYARD_STORE") or DEFAULT_STORE


class _Base(DeclarativeBase):
    pass


class _Run(_Base):
    __tablename__ = "my_runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec_digest: Mapped[str] = mapped_column(String(64))
    spec: Mapped[Any] = mapped_column(JSON)
    root: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class _Execution(_Base):
    __tablename__ = "my_executions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("my_runs.id"), index=True)
    step: Mapped[str] = mapped_column(String(200), index=True)
    cache_key: Mapped[str] = mapped_column(String(64), index=True)
    code_version: Mapped[str] = mapped_column(String(200))
    config: Mapped[Any] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    cached_from: Mapped[int | None] = mapped_column(ForeignKey("my_executions.id"), nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    figures: Mapped[Any] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class _Artifact(_Base):
    __tablename__ = "my_artifacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text)  # relative to the run folder, e.g. "train/mlp/model.safetensors"
    uri: Mapped[str] = mapped_column(Text, index=True)  # absolute path (or the source's location)
    type: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)


class _Event(_Base):
    __tablename__ = "my_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[int] = mapped_column(ForeignKey("my_executions.id"), index=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("my_artifacts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # "input" | "output"
    role: Mapped[str] = mapped_column(Text)  # the name the step used for it


# -- plain records handed to callers (detached from sessions) ----------------------------
@dataclass(frozen=True)
class ArtifactRecord:
    id: int
    name: str
    uri: str
    type: str
    digest: str
    size: int


@dataclass(frozen=True)
class ExecutionRecord:
    id: int
    run_id: str
    step: str
    status: str
    cache_key: str
    code_version: str
    config: Any
    cached_from: int | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    seconds: float | None
    figures: dict[str, Any]
    error: str | None
    outputs: tuple[ArtifactRecord, ...] = ()
    inputs: tuple[ArtifactRecord, ...] = ()


@dataclass(frozen=True)
class RunRecord:
    id: str
    pipeline: str
    status: str
    spec_digest: str
    spec: Any
    root: str
    host: str
    pid: int
    started_at: dt.datetime
    finished_at: dt.datetime | None
    error: str | None


@dataclass
class LineageNode:
    """One artifact in a lineage tree, with the execution that produced it (if any)."""

    artifact: ArtifactRecord
    execution: ExecutionRecord | None = None
    run: RunRecord | None = None
    parents: list[LineageNode] = field(default_factory=list)


def _art(a: _Artifact) -> ArtifactRecord:
    return ArtifactRecord(a.id, a.name, a.uri, a.type, a.digest, a.size)


def _run(r: _Run) -> RunRecord:
    return RunRecord(r.id, r.pipeline, r.status, r.spec_digest, r.spec, r.root, r.host, r.pid,
                     r.started_at, r.finished_at, r.error)


def _normalize_url(url: str) -> str:
    try:
        u = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"Invalid metadata store URL {url!r}: use sqlite:///path.db or postgresql://user@host/db.") from exc
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


class MetadataStore:
    """Runs, executions, artifacts and events in a SQL database.

    Parameters
    ----------
    url : str or None, default=None
        An SQLAlchemy URL; ``None`` means :func:`default_store_url`. A SQLite file's
        folder is created when missing.
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = _normalize_url(url or default_store_url())
        u = make_url(self.url)
        kwargs: dict[str, Any] = {}
        if u.get_backend_name() == "sqlite":
            if u.database and u.database != ":memory:":
                Path(u.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except ModuleNotFoundError as exc:
            raise StoreError(
                f"The driver for {u.get_backend_name()} is not installed ({exc.name}); "
                "install it with `pip install 'modelyard[postgres]'`."
            ) from exc
        if u.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            _Base.metadata.create_all(self.engine)
        except OperationalError as exc:
            raise StoreError(
                f"Cannot open the metadata store at {u.render_as_string(hide_password=True)}: "
                f"{str(exc.orig).strip().splitlines()[0]}. Check the URL and that the server is running."
            ) from exc
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------------------
    def start_run(self, run_id: str, *, pipeline: str, spec: Any, spec_digest: str, root: str) -> RunRecord:
        with self._session.begin() as s:
            r = _Run(id=run_id, pipeline=pipeline, status=RUNNING, spec=spec, spec_digest=spec_digest,
                     root=str(root), host=socket.gethostname(), pid=os.getpid(), started_at=_now())
            s.add(r)
            s.flush()
            return _run(r)

    def finish_run(self, run_id: str, status: str, *, error: str | None = None) -> None:
        with self._session.begin() as s:
            s.execute(update(_Run).where(_Run.id == run_id).values(status=status, finished_at=_now(), error=error))

    def get_run(self, ref: str) -> RunRecord:
        """A run by id or unique id prefix."""
        with self._session() as s:
            rows = s.scalars(select(_Run).where(_Run.id.startswith(ref, autoescape=True)).limit(2)).all()
            exact = s.get(_Run, ref)
            if exact is not None:
                return _run(exact)
            if not rows:
                raise StoreError(f"No run {ref!r} in {self.describe()}; `modelyard runs list` shows the runs.")
            if len(rows) > 1:
                raise StoreError(f"Run id prefix {ref!r} is ambiguous; give more characters.")
            return _run(rows[0])

    def list_runs(self, *, limit: int = 20, pipeline: str | None = None) -> list[RunRecord]:
        with self._session() as s:
            q = select(_Run).order_by(_Run.started_at.desc(), _Run.id.desc()).limit(limit)
            if pipeline:
                q = q.where(_Run.pipeline == pipeline)
            return [_run(r) for r in s.scalars(q)]

    # -- executions ---------------------------------------------------------------------
    def start_execution(self, run_id: str, step: str, *, cache_key: str, code_version: str, config: Any) -> int:
        with self._session.begin() as s:
            e = _Execution(run_id=run_id, step=step, cache_key=cache_key, code_version=code_version,
                           config=config, status=RUNNING, started_at=_now(), figures={})
            s.add(e)
            s.flush()
            return e.id

    def finish_execution(
        self,
        execution_id: int,
        *,
        status: str = COMPLETE,
        inputs: Iterable[tuple[str, int]] = (),
        outputs: Iterable[tuple[str, dict[str, Any]]] = (),
        figures: dict[str, Any] | None = None,
        cached_from: int | None = None,
        seconds: float | None = None,
    ) -> list[ArtifactRecord]:
        """Record a finished execution, its output artifacts and all events, in ONE transaction.

        ``inputs`` are ``(role, artifact_id)``; ``outputs`` are ``(role, fields)`` with the
        artifact's ``name``, ``uri``, ``type``, ``digest`` and ``size``. The files must
        already be in place.
        """
        with self._session.begin() as s:
            e = s.get(_Execution, execution_id)
            if e is None:
                raise StoreError(f"No execution {execution_id} in the metadata store.")
            for role, artifact_id in inputs:
                s.add(_Event(execution_id=execution_id, artifact_id=artifact_id, kind="input", role=role))
            records = []
            for role, fields in outputs:
                a = _Artifact(created_at=_now(), **fields)
                s.add(a)
                s.flush()
                s.add(_Event(execution_id=execution_id, artifact_id=a.id, kind="output", role=role))
                records.append(_art(a))
            e.status = status
            e.finished_at = _now()
            e.seconds = seconds
            e.figures = figures or {}
            e.cached_from = cached_from
            return records

    def fail_execution(self, execution_id: int, error: str) -> None:
        with self._session.begin() as s:
            s.execute(update(_Execution).where(_Execution.id == execution_id)
                      .values(status=FAILED, finished_at=_now(), error=error))

    def add_artifact(self, *, name: str, uri: str, type: str, digest: str, size: int) -> ArtifactRecord:
        """Register an artifact no execution produced (a source file read from outside)."""
        with self._session.begin() as s:
            existing = s.scalars(select(_Artifact).where(_Artifact.uri == uri, _Artifact.digest == digest,
                                                         _Artifact.type == type).limit(1)).first()
            if existing is not None:
                return _art(existing)
            a = _Artifact(name=name, uri=uri, type=type, digest=digest, size=size, created_at=_now())
            s.add(a)
            s.flush()
            return _art(a)

    def _exec_record(self, s: Session, e: _Execution) -> ExecutionRecord:
        rows = s.execute(select(_Event, _Artifact).join(_Artifact, _Event.artifact_id == _Artifact.id)
                         .where(_Event.execution_id == e.id).order_by(_Event.id)).all()
        ins = tuple(_art(a) for ev, a in rows if ev.kind == "input")
        outs = tuple(_art(a) for ev, a in rows if ev.kind == "output")
        return ExecutionRecord(e.id, e.run_id, e.step, e.status, e.cache_key, e.code_version, e.config,
                               e.cached_from, e.started_at, e.finished_at, e.seconds, e.figures or {}, e.error,
                               outs, ins)

    def executions(self, run_id: str) -> list[ExecutionRecord]:
        with self._session() as s:
            rows = s.scalars(select(_Execution).where(_Execution.run_id == run_id).order_by(_Execution.id)).all()
            return [self._exec_record(s, e) for e in rows]

    def execution(self, execution_id: int) -> ExecutionRecord:
        with self._session() as s:
            e = s.get(_Execution, execution_id)
            if e is None:
                raise StoreError(f"No execution {execution_id} in the metadata store.")
            return self._exec_record(s, e)

    def cache_candidates(self, step: str, cache_key: str, *, limit: int = 5) -> list[ExecutionRecord]:
        """Finished executions of ``step`` with ``cache_key``, newest first."""
        with self._session() as s:
            rows = s.scalars(select(_Execution).where(_Execution.step == step, _Execution.cache_key == cache_key,
                                                      _Execution.status.in_(DONE))
                             .order_by(_Execution.id.desc()).limit(limit)).all()
            return [self._exec_record(s, e) for e in rows]

    # -- artifacts and lineage ----------------------------------------------------------
    def find_artifacts(self, *, uri: str | None = None, digest: str | None = None,
                       artifact_id: int | None = None) -> list[ArtifactRecord]:
        with self._session() as s:
            q = select(_Artifact).order_by(_Artifact.id.desc())
            if artifact_id is not None:
                q = q.where(_Artifact.id == artifact_id)
            if uri is not None:
                q = q.where(_Artifact.uri == uri)
            if digest is not None:
                q = q.where(_Artifact.digest.startswith(digest, autoescape=True) if len(digest) < 64
                            else _Artifact.digest == digest)
            return [_art(a) for a in s.scalars(q.limit(50))]

    def lineage(self, artifact_id: int, *, max_depth: int = 32) -> LineageNode:
        """The tree of artifacts and executions that led to ``artifact_id``."""
        with self._session() as s:
            def node(aid: int, depth: int, seen: frozenset[int]) -> LineageNode:
                a = s.get(_Artifact, aid)
                if a is None:
                    raise StoreError(f"No artifact {aid} in the metadata store.")
                n = LineageNode(_art(a))
                ev = s.scalars(select(_Event).where(_Event.artifact_id == aid, _Event.kind == "output")
                               .order_by(_Event.id.desc()).limit(1)).first()
                if ev is None or depth >= max_depth or aid in seen:
                    return n
                e = s.get(_Execution, ev.execution_id)
                n.execution = self._exec_record(s, e)
                r = s.get(_Run, e.run_id)
                n.run = _run(r) if r is not None else None
                n.parents = [node(i.id, depth + 1, seen | {aid}) for i in n.execution.inputs]
                return n

            return node(artifact_id, 0, frozenset())

    # -- recovery -----------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Mark runs (and their executions) left ``running`` by a dead process as aborted.

        Only runs started on this host are judged (a PID means nothing elsewhere).
        Returns the ids of the runs marked.
        """
        host = socket.gethostname()
        marked = []
        with self._session.begin() as s:
            for r in s.scalars(select(_Run).where(_Run.status == RUNNING, _Run.host == host)):
                if _pid_alive(r.pid):
                    continue
                r.status, r.finished_at = ABORTED, _now()
                r.error = "the process running it ended without finishing (killed?)"
                s.execute(update(_Execution).where(_Execution.run_id == r.id, _Execution.status == RUNNING)
                          .values(status=ABORTED, finished_at=_now(), error="process ended"))
                marked.append(r.id)
        return marked

    def check(self) -> list[str]:
        """Consistency problems, as lines (empty when the store is consistent).

        A finished execution must have its outputs, every output file must exist with
        its digest's size, and no execution may be ``running`` under a finished run.
        """
        problems = []
        with self._session() as s:
            for e in s.scalars(select(_Execution).where(_Execution.status.in_(DONE))):
                n_out = s.scalar(select(func.count()).select_from(_Event)
                                 .where(_Event.execution_id == e.id, _Event.kind == "output"))
                if not n_out:
                    problems.append(f"execution {e.id} ({e.step}) is {e.status} but recorded no output")
            for a in s.scalars(select(_Artifact).where(_Artifact.type != "source")):
                p = Path(a.uri)
                if not p.exists():
                    problems.append(f"artifact {a.id} ({a.name}) is recorded but {a.uri} is missing")
                elif p.stat().st_size != a.size:
                    problems.append(f"artifact {a.id} ({a.name}) has {p.stat().st_size} bytes, recorded {a.size}")
            rows = s.execute(select(_Execution, _Run).join(_Run, _Execution.run_id == _Run.id)
                             .where(_Execution.status == RUNNING, _Run.status != RUNNING)).all()
            for e, r in rows:
                problems.append(f"execution {e.id} ({e.step}) is running under {r.status} run {r.id}")
        return problems

    def describe(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) is not running.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (runs list) don't block a running pipeline
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def spec_digest(spec: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
