"""Running a study's trials: the exact-count trial loop, storages, and local worker processes.

**Exact trial count.** The process that starts a search enqueues exactly the missing
number of trials as WAITING trials with no fixed parameters (the sampler fills them
in); every worker only runs trials it pops from that queue, and stops when the queue
is empty. Popping is atomic in every Optuna storage (a compare-and-set on the state),
so N workers run each queued trial once and the study ends with exactly the trials
asked for. A worker killed mid-trial leaves a RUNNING trial; with an RDB storage its
heartbeat stops, another worker fails it after the grace period, and
``RetryHeartbeatStaleTrialCallback`` (Optuna 4.9+ name of RetryFailedTrialCallback) queues a copy with the same parameters, so the count
still comes out exact. Optuna never fails a RUNNING trial that has no heartbeat at all
(a worker killed between popping the trial and its first heartbeat), so
:func:`fail_dead_trials` also fails those once they are ``NO_HEARTBEAT_FACTOR``
heartbeat intervals old; the worker records the first heartbeat itself, before the
trial counts as started. (Optuna's ``MaxTrialsCallback`` stops only after a trial ends,
so N workers overshoot by up to N - 1.)

The loop uses two private Optuna helpers (``Study._pop_waiting_trial_id`` and the
heartbeat thread), pinned by the tests of this package.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from modelyard.errors import SpecError

__all__ = [
    "StorageSpec",
    "WorkerJob",
    "fail_dead_trials",
    "open_storage",
    "read_splits",
    "run_trials",
    "worker_main",
    "write_splits",
]

WORKER_KEY = "modelyard:worker"
# A RUNNING trial with no heartbeat this many heartbeat intervals after it started belongs to a
# worker that died before its first beat (a live worker records one right after popping).
NO_HEARTBEAT_FACTOR = 4
# Seconds a journal lock may sit unchanged before it counts as left by a dead worker. A
# live writer holds it for one append (milliseconds); Optuna's default is 30.
JOURNAL_LOCK_GRACE_S = 10


@dataclass(frozen=True)
class StorageSpec:
    """How to open a study's storage in any process.

    Attributes
    ----------
    kind : {"rdb", "journal"}
    location : str
        An SQLAlchemy URL (rdb) or the path of a journal file.
    heartbeat_interval : int
        Seconds between heartbeats of a running trial (rdb only); a trial silent for
        ``2 * heartbeat_interval`` is failed and retried.
    """

    kind: str
    location: str
    heartbeat_interval: int = 10


def open_storage(spec: StorageSpec) -> BaseStorage:
    """Open the storage ``spec`` names (RDB with heartbeat and retry of failed trials, or a journal file)."""
    if spec.kind == "journal":
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

        # Optuna's lock is a symbolic link to the journal. Given a relative path, the link
        # resolves against its own folder and dangles, and a dangling lock left by a killed
        # worker is never released (Optuna waits for its target's mtime to stop changing
        # and cannot stat it). An absolute path makes the grace period work.
        path = os.path.abspath(spec.location)
        lock = JournalFileSymlinkLock(path, grace_period=JOURNAL_LOCK_GRACE_S)
        return JournalStorage(JournalFileBackend(path, lock_obj=lock))
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    from sqlalchemy.exc import IntegrityError, ProgrammingError

    # Processes that open a fresh database at the same moment race to create Optuna's
    # tables: on PostgreSQL the loser gets a unique violation on pg_type (or "already
    # exists"). The winner's schema is complete once it commits, so opening again works.
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    spec.location,
                    engine_kwargs={"pool_pre_ping": True},
                    heartbeat_interval=spec.heartbeat_interval,
                    grace_period=2 * spec.heartbeat_interval,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                        max_retry=3
                    ),
                )
        except (IntegrityError, ProgrammingError):
            if attempt == 5:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def fail_dead_trials(study: optuna.Study) -> None:
    """Fail the RUNNING trials of dead workers and queue their retries (heartbeat storages only).

    Optuna's ``fail_stale_trials`` handles trials whose heartbeat went silent; this adds
    the trials that never had one and started ``NO_HEARTBEAT_FACTOR`` heartbeat
    intervals ago, with the same retry callback.
    """
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    interval = storage.get_heartbeat_interval()
    cutoff = datetime.now() - timedelta(seconds=NO_HEARTBEAT_FACTOR * interval)
    failed = []
    for trial_id in _running_without_heartbeat(storage, study._study_id):
        started = storage.get_trial(trial_id).datetime_start  # local time, as datetime.now()
        if started is None or started > cutoff:
            continue
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed it first
    callback = storage.get_heartbeat_stale_trial_callback()
    if callback is not None:
        for trial_id in failed:
            callback(study, storage.get_trial(trial_id))


def _running_without_heartbeat(storage: BaseStorage, study_id: int) -> list[int]:
    """Ids of the study's RUNNING trials with no heartbeat row (RDB storages)."""
    from optuna.storages import RDBStorage

    try:  # Optuna's private table models (pinned by the tests of this package)
        from optuna.storages._rdb import models
    except ImportError:  # pragma: no cover - a future Optuna without them: rely on its own stale check
        return []
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    if not isinstance(backend, RDBStorage):
        return []
    session = backend.scoped_session()
    try:
        rows = (
            session.query(models.TrialModel.trial_id)
            .outerjoin(models.TrialHeartbeatModel, models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
            .filter(models.TrialModel.study_id == study_id)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .filter(models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
            .all()
        )
        session.commit()
    finally:
        session.close()
    return [int(t) for (t,) in rows]


def _pop_waiting(study: optuna.Study) -> int | None:
    study._thread_local.cached_all_trials = (
        None  # as Study.ask does: read the storage afresh
    )
    return study._pop_waiting_trial_id()


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    *,
    deadline: float | None = None,
    poll: float = 0.2,
) -> int:
    """Run queued trials of ``study`` until the queue is empty (or ``deadline``, a ``time.monotonic()`` value).

    With a heartbeat storage, a worker whose queue is empty waits while other trials
    are RUNNING: one of them may belong to a dead worker and come back as a retry.

    Returns
    -------
    int
        Trials this call ran.

    Raises
    ------
    Exception
        Whatever the objective raised (the trial is marked FAIL first), except
        ``optuna.TrialPruned``, which marks it PRUNED.
    """
    from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled

    heartbeat = is_heartbeat_enabled(study._storage)
    ran = 0
    while deadline is None or time.monotonic() < deadline:
        if heartbeat:
            fail_dead_trials(study)
        trial_id = _pop_waiting(study)
        if trial_id is None:
            if heartbeat and study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING,)
            ):
                time.sleep(poll)
                continue
            break
        if heartbeat:  # the first beat now: a trial with none is only failed after NO_HEARTBEAT_FACTOR intervals
            study._storage.record_heartbeat(trial_id)
        study._storage.set_trial_system_attr(
            trial_id, WORKER_KEY, {"host": socket.gethostname(), "pid": os.getpid()}
        )
        trial = optuna.Trial(study, trial_id)
        with get_heartbeat_thread(trial_id, study._storage):
            try:
                values = objective(trial)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
                ran += 1
                continue
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
        study.tell(trial, values)
        ran += 1
    return ran


# -- data handed to workers by path -------------------------------------------------------
def write_splits(train: Any, valid: Any, folder: Path) -> Path:
    """Write the train and valid splits as Parquet plus the schema as JSON under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    train.frame.to_parquet(folder / "train.parquet")
    valid.frame.to_parquet(folder / "valid.parquet")
    (folder / "schema.json").write_text(json.dumps(train.schema.to_dict()))
    return folder


def read_splits(folder: Path) -> tuple[Any, Any]:
    """The ``(train, valid)`` splits :func:`write_splits` wrote."""
    import pandas as pd

    from modelyard.data import Schema, TabularSplit

    schema = Schema.from_dict(json.loads((folder / "schema.json").read_text()))
    return tuple(
        TabularSplit(pd.read_parquet(folder / f"{name}.parquet"), schema)
        for name in ("train", "valid")
    )  # type: ignore[return-value]


def _instance_state(obj: Any, what: str) -> dict[str, Any]:
    """``{"class": "module:QualName", "state": {...}}`` for a strategy instance, checked to be JSON."""
    klass = type(obj)
    if klass.__module__ == "__main__" or "<locals>" in klass.__qualname__:
        raise SpecError(
            f"{what} {klass.__qualname__} is defined in a script or a function, so worker processes "
            "cannot import it; move it to an importable module or run with workers=1."
        )
    state = dict(vars(obj))
    try:
        json.dumps(state)
    except TypeError as exc:
        raise SpecError(
            f"{what} {klass.__qualname__} holds attributes that are not JSON ({exc}); workers receive "
            "their strategy as JSON, so keep its settings to numbers, strings, lists and dicts, or run with workers=1."
        ) from None
    return {"class": f"{klass.__module__}:{klass.__qualname__}", "state": state}


def _from_instance_state(spec: dict[str, Any]) -> Any:
    import importlib

    module, _, qualname = spec["class"].partition(":")
    klass: Any = importlib.import_module(module)
    for part in qualname.split("."):
        klass = getattr(klass, part)
    obj = klass.__new__(klass)
    obj.__dict__.update(spec["state"])
    return obj


@dataclass
class WorkerJob:
    """Everything a worker process needs, written as JSON to the search's private temporary folder.

    JSON, not pickle: a job file is data, so reading one cannot run code.
    """

    storage: StorageSpec
    study_name: str
    data_dir: str
    objective: Any  # a TrialObjective without its data (the worker loads it)
    strategy: Any  # a BaseSearchStrategy
    early_stopping: str  # a PRUNERS name
    seed: int
    n_objectives: int
    deadline_s: float | None = None  # seconds from the worker's start

    def to_json(self) -> str:
        """The job as JSON (:meth:`from_json` reads it back).

        Raises
        ------
        SpecError
            The strategy cannot travel as JSON (defined in a script, or non-JSON settings).
        """
        o = self.objective
        return json.dumps(
            {
                "storage": asdict(self.storage),
                "study_name": self.study_name,
                "data_dir": self.data_dir,
                "objective": {
                    "space": o.space.to_dict(),
                    "family": o.family,
                    "objectives": [obj.name for obj in o.objectives],
                    "base_config": o.base_config.model_dump(mode="json"),
                    "prune": o.prune,
                    "n_threads": o.n_threads,
                },
                "strategy": _instance_state(self.strategy, "Search strategy"),
                "early_stopping": self.early_stopping,
                "seed": self.seed,
                "n_objectives": self.n_objectives,
                "deadline_s": self.deadline_s,
            }
        )

    @classmethod
    def from_json(cls, text: str, task: str) -> WorkerJob:
        """Read a job :meth:`to_json` wrote; ``task`` resolves the objective names."""
        from modelyard.search._objectives import resolve_objectives
        from modelyard.search._space import SearchSpace, _config_class
        from modelyard.search._study import TrialObjective

        d = json.loads(text)
        o = d["objective"]
        objective = TrialObjective(
            SearchSpace.from_dict(o["space"]),
            o["family"],
            resolve_objectives(o["objectives"], task),
            _config_class(o["family"]).model_validate(o["base_config"]),
            prune=o["prune"],
            n_threads=o["n_threads"],
        )
        return cls(
            storage=StorageSpec(**d["storage"]),
            study_name=d["study_name"],
            data_dir=d["data_dir"],
            objective=objective,
            strategy=_from_instance_state(d["strategy"]),
            early_stopping=d["early_stopping"],
            seed=d["seed"],
            n_objectives=d["n_objectives"],
            deadline_s=d["deadline_s"],
        )


def worker_main(job_file: Path, index: int) -> None:
    """Entry point of worker ``index``: load the study and the data, run queued trials until none are left."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.monotonic()
    data_dir = Path(json.loads(job_file.read_text())["data_dir"])
    train, valid = read_splits(data_dir)
    job = WorkerJob.from_json(job_file.read_text(), train.schema.task)
    objective = job.objective.with_data(train, valid)
    from modelyard.search._pruners import make_pruner

    sampler = job.strategy.make_sampler(
        objective.space, job.seed + 1000 * (index + 1), job.n_objectives
    )
    study = optuna.load_study(
        study_name=job.study_name,
        storage=open_storage(job.storage),
        sampler=sampler,
        pruner=make_pruner(job.early_stopping, n_objectives=job.n_objectives),
    )
    deadline = None if job.deadline_s is None else start + job.deadline_s
    run_trials(study, objective, deadline=deadline)


def main(argv: list[str] | None = None) -> int:
    """``python -m modelyard.search._worker JOB_FILE INDEX``: run one worker of a search."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(
            "usage: python -m modelyard.search._worker JOB_FILE INDEX", file=sys.stderr
        )
        return 2
    worker_main(Path(args[0]), int(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
