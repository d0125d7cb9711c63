"""``run``: a search over a space on tabular data, in one process or N local workers, on any Optuna storage."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from modelyard.errors import SpecError, StoreError
from modelyard.search._objectives import Objective, resolve_objectives
from modelyard.search._pruners import PRUNERS, make_pruner, pruning_callback
from modelyard.search._space import SPACES, SearchSpace, check_config_fields, to_config
from modelyard.search._strategies import BaseSearchStrategy, resolve_strategy
from modelyard.search._worker import (
    StorageSpec,
    WORKER_KEY,
    WorkerJob,
    fail_dead_trials,
    _instance_state,
    open_storage,
    run_trials,
    write_splits,
)

__all__ = ["SearchResult", "TrialObjective", "run"]

UNREACHABLE_STORAGE = "Cannot open search storage {url}: {reason}; check the URL and that the server is running."
BAD_STORAGE = (
    "Search storage {storage!r} is not a database URL (postgresql://..., sqlite:///...) or a journal file path "
    "(ending in .log or .journal)."
)
IN_MEMORY_WORKERS = "workers={workers} needs a storage the processes share; give storage=URL or leave storage=None."
_WORKER_CMD = "import sys; from modelyard.search._worker import main; sys.exit(main(sys.argv[1:]))"
WORKER_FAILED = "Search worker {index} exited with code {code}; its error is printed above. Fix it and run again."


class TrialObjective:
    """The function each trial runs: suggest a point, fit the family, compute the objectives.

    Workers receive it as JSON without its data (:meth:`with_data` attaches the splits).
    """

    def __init__(
        self,
        space: SearchSpace,
        family: str,
        objectives: Sequence[Objective],
        base_config: Any,
        *,
        prune: bool,
        n_threads: int | None = 1,
    ) -> None:
        self.space = space
        self.family = family
        self.objectives = list(objectives)
        self.base_config = base_config
        self.prune = prune
        self.n_threads = n_threads
        self.train: Any = None
        self.valid: Any = None

    def with_data(self, train: Any, valid: Any) -> TrialObjective:
        other = TrialObjective(
            self.space,
            self.family,
            self.objectives,
            self.base_config,
            prune=self.prune,
            n_threads=self.n_threads,
        )
        other.train, other.valid = train, valid
        return other

    def fit(self, params: Mapping[str, Any], trial: optuna.Trial | None = None) -> Any:
        """Fit the family with ``params`` (and the base config); report epochs to ``trial`` if given."""
        config = to_config(params, self.family, self.base_config)
        if self.family == "gbm":
            from modelyard.train import fit_gbm

            return fit_gbm(self.train, self.valid, config, n_threads=self.n_threads)
        from modelyard.train import fit_mlp

        callback = None
        if trial is not None and len(self.objectives) == 1:
            first = self.objectives[0]
            classify = self.train.schema.task != "regression"
            if first.name == "accuracy" and classify:
                callback = pruning_callback(trial, "valid_accuracy")
            else:  # the loss, signed so that better is in the study's direction
                callback = pruning_callback(
                    trial, "valid_loss", -1.0 if first.direction == "maximize" else 1.0
                )
        return fit_mlp(self.train, self.valid, config, callback=callback)

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        params = self.space.suggest(trial)
        predictor = self.fit(params, trial)
        values = [o.compute(predictor, self.valid) for o in self.objectives]
        for o, v in zip(self.objectives, values, strict=True):
            trial.set_user_attr(o.name, v)
        return values[0] if len(values) == 1 else values


@dataclass
class SearchResult:
    """The outcome of :func:`run`.

    Attributes
    ----------
    study : optuna.Study
        The study (in memory for a local journal; on its storage otherwise).
    objectives : list of Objective
    space : SearchSpace
    family : str
    """

    study: optuna.Study
    objectives: list[Objective]
    space: SearchSpace
    family: str
    _objective: TrialObjective

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def best_trial_(self) -> FrozenTrial:
        """The best completed trial (single objective)."""
        if self.multi_objective:
            raise ValueError(
                "A multi-objective search has a Pareto front, not one best trial; use pareto_front_."
            )
        return self.study.best_trial

    @property
    def best_params_(self) -> dict[str, Any]:
        """Parameters of the best trial (single objective)."""
        return dict(self.best_trial_.params)

    @property
    def best_value_(self) -> float:
        return float(self.best_trial_.value)  # type: ignore[arg-type]

    @property
    def pareto_front_(self) -> list[dict[str, Any]]:
        """Non-dominated completed trials: ``{"number", "params", "values"}`` with values by objective name."""
        return [
            {
                "number": t.number,
                "params": dict(t.params),
                "values": dict(
                    zip((o.name for o in self.objectives), t.values, strict=True)
                ),
            }
            for t in sorted(self.study.best_trials, key=lambda t: t.number)
        ]

    @property
    def trials_(self) -> pd.DataFrame:
        """Every trial: number, state, one column per objective, duration_s, then ``params_<name>`` columns."""
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            row: dict[str, Any] = {"number": t.number, "state": t.state.name}
            for i, o in enumerate(self.objectives):
                row[o.name] = t.values[i] if t.values is not None else math.nan
            row["duration_s"] = (
                t.duration.total_seconds() if t.duration is not None else math.nan
            )
            row.update({f"params_{k}": v for k, v in t.params.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def leaderboard(self) -> pd.DataFrame:
        """Completed trials, best first by the first objective (then the others), with a ``rank`` column."""
        frame = self.trials_
        frame = frame[frame["state"] == "COMPLETE"]
        names = [o.name for o in self.objectives]
        ascending = [o.direction == "minimize" for o in self.objectives]
        frame = frame.sort_values(
            names, ascending=ascending, kind="mergesort"
        ).reset_index(drop=True)
        frame.insert(0, "rank", range(1, len(frame) + 1))
        return frame

    def best_model(self, number: int | None = None) -> Any:
        """Refit the best trial's model (or trial ``number``'s) with its parameters and the search's seed.

        Trials do not store their models; training is seeded, so the refit reproduces the
        trial's model (bit-identical for the MLP on the same machine and threads).

        Parameters
        ----------
        number : int or None, default=None
            A trial number; required for a multi-objective search (pick one from ``pareto_front_``).

        Returns
        -------
        Predictor
        """
        if number is None:
            if self.multi_objective:
                raise ValueError(
                    "Pick a trial of pareto_front_ for a multi-objective search: best_model(number=...)."
                )
            params = self.best_params_
        else:
            trial = self.study.trials[number]
            if trial.state != TrialState.COMPLETE:
                raise ValueError(
                    f"Trial {number} is {trial.state.name}, not COMPLETE; pick a completed trial."
                )
            params = trial.params
        return self._objective.fit(params)


def _resolve_space(space: SearchSpace | str | Mapping[str, Any]) -> SearchSpace:
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, str):
        return SPACES.get(space)()
    if isinstance(space, Mapping):
        return SearchSpace.from_dict(space)
    raise TypeError(
        f"space must be a SearchSpace, a built-in space name or a dict; got {type(space).__name__}."
    )


def _rdb_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):  # psycopg 3 is the driver we support
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _storage_spec(
    storage: str | None, workers: int, heartbeat_interval: int, tmp: Path
) -> StorageSpec | None:
    if storage is None:
        if workers == 1:
            return None
        return StorageSpec("journal", str(tmp / "study.journal"))
    if "://" in storage:
        return StorageSpec("rdb", _rdb_url(storage), heartbeat_interval)
    if storage.endswith((".log", ".journal")):
        return StorageSpec("journal", storage)
    raise SpecError(BAD_STORAGE.format(storage=storage))


def _open(spec: StorageSpec) -> Any:
    try:
        return open_storage(spec)
    except Exception as e:  # sqlalchemy OperationalError, ArgumentError, a missing driver
        from sqlalchemy.engine import make_url

        try:
            shown = make_url(spec.location).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - not a URL: show it as given
            shown = spec.location
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StoreError(UNREACHABLE_STORAGE.format(url=shown, reason=reason)) from e


def run(
    space: SearchSpace | str | Mapping[str, Any],
    data: Any,
    *,
    family: str = "mlp",
    strategy: str | BaseSearchStrategy = "auto",
    trials: int = 30,
    objectives: str | Sequence[str] = ("accuracy",),
    early_stopping: str | Any = "none",
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
    workers: int = 1,
    timeout: float | None = None,
    base_config: Any = None,
    heartbeat_interval: int = 10,
) -> SearchResult:
    """Search ``space`` for the best ``family`` model on ``data``.

    Every check (space, family, objectives for the task, strategy, early stopping,
    storage) runs before the first trial. Each trial fits on ``data.train``, stops
    early on ``data.valid`` and is scored on ``data.valid``; ``data.test`` is not used.

    Parameters
    ----------
    space : SearchSpace, str or dict
        A space, a built-in space name (``"mlp"``, ``"gbm"``) or its YAML dict form.
    data : TabularData
    family : {"mlp", "gbm"}, default="mlp"
    strategy : str or BaseSearchStrategy, default="auto"
        A name of :data:`SEARCH_STRATEGIES` or an instance.
    trials : int, default=30
        Finished trials the study should hold at the end; a study resumed from a
        storage runs only the missing ones.
    objectives : str or sequence of str, default=("accuracy",)
        Metric names (validation split) and costs (``n_params``, ``latency_ms``); two
        or more give a Pareto front.
    early_stopping : str or optuna pruner, default="none"
        ``none``, ``median``, ``asha``, ``hyperband`` (single objective only); MLP trials report each epoch.
    storage : str or None, default=None
        None: in memory (one worker) or a journal file in a temporary folder (several
        workers). A ``postgresql://`` or ``sqlite:///`` URL: shared by workers on many
        machines, with heartbeats so a killed worker's trial is failed and retried. A path
        ending in ``.log``/``.journal``: a journal file.
    study_name : str or None, default=None
        Load the study of that name if it exists (resume); a fresh name by default.
    seed : int, default=0
        Seeds the sampler (worker ``i`` gets ``seed + 1000 * (i + 1)``) and every model.
    workers : int, default=1
        Local processes, each running queued trials.
    timeout : float or None, default=None
        Seconds after which no new trial starts.
    base_config : MLPConfig, GBMConfig or None, default=None
        Fixed settings outside the space (epochs, patience); the family's defaults if None.
    heartbeat_interval : int, default=10
        Seconds between heartbeats with a database storage; a trial silent for twice
        that is failed and retried.

    Returns
    -------
    SearchResult

    Raises
    ------
    SpecError
        A bad space, family, objective, strategy/objective or pruner/objective combination, storage or count.
    StoreError
        The storage cannot be reached.
    RuntimeError
        A worker process failed (not killed: killed workers' trials are retried).
    """
    from modelyard.data import TabularData
    from modelyard.search._space import _config_class

    if not isinstance(data, TabularData):
        raise TypeError(
            f"data must be a TabularData (modelyard.data.load or from_csv); got {type(data).__name__}."
        )
    space = _resolve_space(space)
    klass = _config_class(family)
    check_config_fields(space, family)
    base_config = klass(seed=seed) if base_config is None else base_config
    if not isinstance(base_config, klass):
        raise SpecError(
            f"base_config must be a {klass.__name__} for family {family!r}; got {type(base_config).__name__}."
        )
    objs = resolve_objectives(objectives, data.schema.task)
    names = tuple(o.name for o in objs)
    strat = resolve_strategy(strategy)
    strat.check(len(objs), names)
    pruner = make_pruner(early_stopping, n_objectives=len(objs), objectives=names)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise SpecError(f"trials must be a positive integer; got {trials!r}.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SpecError(f"workers must be a positive integer; got {workers!r}.")
    if timeout is not None and timeout <= 0:
        raise SpecError(f"timeout must be positive seconds or None; got {timeout!r}.")
    if storage is not None and not isinstance(storage, str):
        raise SpecError(BAD_STORAGE.format(storage=storage))
    if workers > 1:
        if not isinstance(early_stopping, str):
            raise SpecError(
                "With workers > 1, give early_stopping as a name (one of "
                f"{PRUNERS.names()}): worker processes receive their settings as JSON."
            )
        _instance_state(strat, "Search strategy")  # raises now if it cannot reach the workers

    from optuna.pruners import NopPruner

    objective = TrialObjective(
        space, family, objs, base_config, prune=not isinstance(pruner, NopPruner)
    ).with_data(data.train, data.valid)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [o.direction for o in objs]
    study_name = study_name or f"modelyard-{uuid.uuid4().hex[:12]}"
    deadline = None if timeout is None else time.monotonic() + timeout

    with tempfile.TemporaryDirectory(prefix="modelyard-search-") as tmp_name:
        tmp = Path(tmp_name)
        spec = _storage_spec(storage, workers, heartbeat_interval, tmp)
        opened = None if spec is None else _open(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(
                storage=opened,
                study_name=study_name,
                directions=directions,
                sampler=strat.make_sampler(space, seed, len(objs)),
                pruner=pruner,
                load_if_exists=True,
            )
        if list(study.directions) != [
            optuna.study.StudyDirection[d.upper()] for d in directions
        ]:
            raise SpecError(
                f"Study {study_name!r} exists with other objective directions; give another study_name."
            )
        _enqueue_missing(study, trials)
        if workers == 1:
            run_trials(study, objective, deadline=deadline)
        else:
            assert spec is not None
            _run_workers(
                study,
                objective,
                spec,
                strat,
                early_stopping,
                workers,
                seed,
                len(objs),
                timeout,
                tmp,
            )
        if spec is not None and spec.kind == "journal" and storage is None:
            # the journal lives in the temporary folder: keep the study in memory
            memory = optuna.storages.InMemoryStorage()
            optuna.copy_study(
                from_study_name=study_name, from_storage=opened, to_storage=memory
            )
            study = optuna.load_study(
                study_name=study_name,
                storage=memory,
                sampler=study.sampler,
                pruner=pruner,
            )
    return SearchResult(
        study=study, objectives=objs, space=space, family=family, _objective=objective
    )


def retry_dead_local_trials(study: optuna.Study) -> list[int]:
    """Fail and re-queue RUNNING trials whose process on this host has died (storages without heartbeat).

    A journal file has no heartbeat, so a trial of a killed process would stay RUNNING
    forever. Each trial records the host and pid running it; a resumed search fails
    those of dead local processes and queues a copy with the same parameters.

    Returns
    -------
    list of int
        Numbers of the trials failed.
    """
    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.system_attrs.get(WORKER_KEY)
        if not worker or worker.get("host") != host or _alive(int(worker["pid"])):
            continue
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(dict(t.params))
        failed.append(t.number)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _enqueue_missing(study: optuna.Study, trials: int) -> None:
    """Queue WAITING trials until finished + queued + running = ``trials`` (exact count, resumable)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if is_heartbeat_enabled(study._storage):
        fail_dead_trials(study)  # a previous run's dead trials come back as retries
    else:
        retry_dead_local_trials(study)
    counted = (
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.WAITING,
        TrialState.RUNNING,
    )
    have = len(study.get_trials(deepcopy=False, states=counted))
    for _ in range(max(0, trials - have)):
        study.enqueue_trial({})


def _run_workers(
    study: optuna.Study,
    objective: TrialObjective,
    spec: StorageSpec,
    strategy: BaseSearchStrategy,
    early_stopping: str,
    workers: int,
    seed: int,
    n_objectives: int,
    timeout: float | None,
    tmp: Path,
) -> None:
    data_dir = write_splits(objective.train, objective.valid, tmp / "data")
    job = WorkerJob(
        storage=spec,
        study_name=study.study_name,
        data_dir=str(data_dir),
        objective=objective,
        strategy=strategy,
        early_stopping=early_stopping,
        seed=seed,
        n_objectives=n_objectives,
        deadline_s=timeout,
    )
    job_path = tmp / "job.json"
    job_path.write_text(job.to_json())
    # Subprocesses, not multiprocessing: spawn would re-import the caller's __main__ (a script
    # without an ``if __name__ == "__main__"`` guard would start the search again).
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER_CMD, str(job_path), str(i)])
        for i in range(workers)
    ]
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            p.kill()
        raise
    failed = [(i, c) for i, c in enumerate(codes) if c > 0]
    if failed:
        raise RuntimeError(WORKER_FAILED.format(index=failed[0][0], code=failed[0][1]))
    killed = [c for c in codes if c < 0]
    if killed and spec.kind == "journal":
        # No heartbeat in a journal: every worker has ended, so trials still RUNNING belong to dead ones.
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(dict(t.params))
    if killed:
        # Finish what the killed workers left in the queue here, so the count comes out exact.
        run_trials(study, objective)
