"""Running a study's trials: the exact-count trial loop, storages, and local worker processes.

**Exact trial count.** The process that starts a search enqueues exactly the missing
number of trials as WAITING trials with no fixed parameters (the sampler fills them
in); every worker only runs trials it pops from that queue, and stops when the queue
is empty. Popping is atomic in every Optuna storage (a compare-and-set on the state),
so N workers run each queued trial once and the study ends with exactly the trials
asked for. A worker killed mid-trial leaves a RUNNING trial; with an RDB storage its
heartbeat stops, another worker fails it after the grace period, and
``RetryHeartbeatStaleTrialCallback`` (Optuna 4.9+ name of RetryFailedTrialCallback) queues a copy with the same parameters, so the count
still comes out exact. (Optuna's ``MaxTrialsCallback`` stops only after a trial ends,
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

__all__ = [
    "StorageSpec",
    "WorkerJob",
    "open_storage",
    "read_splits",
    "run_trials",
    "worker_main",
    "write_splits",
]

WORKER_KEY = "modelyard:worker"


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
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(spec.location))
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        trial_id = _pop_waiting(study)
        if trial_id is None:
            if heartbeat and study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING,)
            ):
                time.sleep(poll)
                continue
            break
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


@dataclass
class WorkerJob:
    """Everything a worker process needs; pickled to a file in the search's private temporary folder."""

    storage: StorageSpec
    study_name: str
    data_dir: str
    objective: Any  # a TrialObjective without its data (the worker loads it)
    strategy: Any
    pruner: Any
    seed: int
    n_objectives: int
    deadline_s: float | None = None  # seconds from the worker's start
    extra: dict[str, Any] = field(default_factory=dict)


def worker_main(job: WorkerJob, index: int) -> None:
    """Entry point of worker ``index``: load the study and the data, run queued trials until none are left."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.monotonic()
    train, valid = read_splits(Path(job.data_dir))
    objective = job.objective.with_data(train, valid)
    sampler = job.strategy.make_sampler(
        objective.space, job.seed + 1000 * (index + 1), job.n_objectives
    )
    study = optuna.load_study(
        study_name=job.study_name,
        storage=open_storage(job.storage),
        sampler=sampler,
        pruner=job.pruner,
    )
    deadline = None if job.deadline_s is None else start + job.deadline_s
    run_trials(study, objective, deadline=deadline)


def main(argv: list[str] | None = None) -> int:
    """``python -m modelyard.search._worker JOB_FILE INDEX``: run one worker of a search."""
    import pickle
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(
            "usage: python -m modelyard.search._worker JOB_FILE INDEX", file=sys.stderr
        )
        return 2
    job = pickle.loads(
        Path(args[0]).read_bytes()
    )  # written by modelyard.search.run for this worker
    worker_main(job, int(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
