"""run(): searches on data, Pareto fronts, errors before any trial, workers on journal and PostgreSQL storages."""

from __future__ import annotations

import os
import signal
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from modelyard.errors import SpecError, StoreError
from modelyard.models import GBMConfig, MLPConfig
from modelyard.search import run, spaces, to_config
from modelyard.search._worker import (
    NO_HEARTBEAT_FACTOR,
    WORKER_KEY,
    StorageSpec,
    fail_dead_trials,
    open_storage,
)

TINY = MLPConfig(max_epochs=2, patience=2)


def test_mlp_search_best_params_map_to_a_config(toy_data) -> None:
    result = run(spaces.mlp(), toy_data, trials=4, base_config=TINY)
    config = to_config(result.best_params_, "mlp", TINY)
    assert (
        isinstance(config, MLPConfig)
        and len(config.hidden_sizes) == result.best_params_["n_layers"]
    )
    frame = result.trials_
    assert list(frame["number"]) == [0, 1, 2, 3] and set(frame["state"]) == {"COMPLETE"}
    assert {"accuracy", "duration_s", "params_lr"} <= set(frame.columns)
    board = result.leaderboard()
    assert (
        board["accuracy"].is_monotonic_decreasing
        and board.loc[0, "accuracy"] == result.best_value_
    )
    model = (
        result.best_model()
    )  # refit with the same seed reproduces the best trial's score
    from modelyard.evaluate import accuracy

    assert accuracy(
        toy_data.valid.y, model.predict_proba(toy_data.valid.X)
    ) == pytest.approx(result.best_value_)


def test_gbm_search(toy_data) -> None:
    result = run(
        "gbm",
        toy_data,
        family="gbm",
        trials=3,
        strategy="evolution",
        base_config=GBMConfig(max_iter=30),
    )
    assert isinstance(to_config(result.best_params_, "gbm"), GBMConfig)
    assert 0.5 < result.best_value_ <= 1.0


def test_two_objectives_give_a_pareto_front(toy_data) -> None:
    result = run(
        spaces.mlp(),
        toy_data,
        trials=4,
        strategy="nsga2",
        objectives=("accuracy", "n_params"),
        base_config=TINY,
    )
    front = result.pareto_front_
    assert front and all(set(p["values"]) == {"accuracy", "n_params"} for p in front)
    vals = [(p["values"]["accuracy"], p["values"]["n_params"]) for p in front]
    for a in vals:  # no front member is better in both
        assert not any(b[0] >= a[0] and b[1] <= a[1] and b != a for b in vals)
    with pytest.raises(ValueError, match="Pareto front"):
        _ = result.best_params_
    assert result.best_model(number=front[0]["number"]) is not None


def test_latency_objective(toy_data) -> None:
    result = run(
        "gbm",
        toy_data,
        family="gbm",
        trials=1,
        objectives=("accuracy", "latency_ms"),
        strategy="random",
        base_config=GBMConfig(max_iter=10),
    )
    assert 0.0 < result.trials_.loc[0, "latency_ms"] < 1000.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"space": {}}, SpecError, "Search space is empty"),
        (
            {"strategy": "bayes"},
            ValueError,
            r"Unknown search strategy 'bayes'. Known: \[",
        ),
        (
            {"objectives": ("rmse",)},
            SpecError,
            "Objective 'rmse' cannot be computed for a binary task",
        ),
        ({"family": "svm"}, SpecError, "Unknown model family 'svm' for a search"),
        (
            {"early_stopping": "asha", "objectives": ("accuracy", "n_params")},
            SpecError,
            "needs a single objective",
        ),
        (
            {"strategy": "cmaes", "objectives": ("accuracy", "n_params")},
            SpecError,
            "optimizes at most 1",
        ),
        (
            {"storage": "postgresql://nobody@127.0.0.1:1/none"},
            StoreError,
            r"^Cannot open search storage postgresql\+psycopg://nobody@127.0.0.1:1/none: ",
        ),
        ({"storage": "study.db"}, SpecError, "is not a database URL"),
        ({"trials": 0}, SpecError, "trials must be a positive integer; got 0."),
    ],
)
def test_bad_input_fails_before_any_trial(toy_data, kwargs, error, match) -> None:
    calls = []
    kwargs = {"space": "mlp", **kwargs}
    with pytest.raises(error, match=match):
        run(kwargs.pop("space"), toy_data, base_config=None, **kwargs)
    assert not calls


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))


def test_two_workers_on_a_local_journal(toy_data) -> None:
    result = run(spaces.mlp(), toy_data, trials=5, workers=2, base_config=TINY)
    states = [t.state for t in result.study.trials]
    assert len(states) == 5 and _finished(result.study) == 5
    pids = {t.system_attrs[WORKER_KEY]["pid"] for t in result.study.trials}
    assert os.getpid() not in pids and len(pids) >= 1


def test_two_workers_on_postgresql_end_with_exactly_the_trials_asked(
    toy_data, postgres_url
) -> None:
    run(
        spaces.mlp(),
        toy_data,
        trials=6,
        workers=2,
        storage=postgres_url,
        study_name="pg",
        base_config=TINY,
    )
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert _finished(study) == 6 and len(study.trials) == 6
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    # resuming with the same count runs nothing more
    again = run(
        spaces.mlp(),
        toy_data,
        trials=6,
        storage=postgres_url,
        study_name="pg",
        base_config=TINY,
    )
    assert len(again.study.trials) == 6


def test_killed_worker_loses_nothing_and_its_trial_fails(
    toy_data, postgres_url
) -> None:
    """SIGKILL a worker mid-trial: its trial ends FAIL via the heartbeat, is retried, and the count stays exact."""
    slow = MLPConfig(max_epochs=30, patience=30, hidden_sizes=(256, 256), batch_size=16)
    out: dict = {}

    def search() -> None:
        out["result"] = run(
            {"lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
            toy_data,
            trials=4,
            workers=2,
            storage=postgres_url,
            study_name="kill",
            base_config=slow,
            heartbeat_interval=1,
            strategy="random",
        )

    thread = threading.Thread(target=search)
    thread.start()
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            study = optuna.load_study(study_name="kill", storage=postgres_url)
        except (KeyError, SQLAlchemyError):
            # not created yet, or this poll lost the race to create Optuna's tables
            continue
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            worker = t.system_attrs.get(WORKER_KEY)
            # Mid-trial: once its parameters are drawn (the worker is published just before
            # the sampler runs; a trial killed then is retried with freshly drawn ones).
            if worker and t.params:
                os.kill(worker["pid"], signal.SIGKILL)
                killed = t.number
                break
    thread.join(timeout=120)
    assert killed is not None and not thread.is_alive()
    study = optuna.load_study(study_name="kill", storage=postgres_url)
    assert study.trials[killed].state == TrialState.FAIL
    assert _finished(study) == 4
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retried) == 1 and retried[0].params == study.trials[killed].params


def test_trial_of_a_worker_killed_before_its_first_heartbeat_is_failed_and_retried(
    toy_data, postgres_url
) -> None:
    """Optuna never fails a RUNNING trial without a heartbeat; ours does once it is old enough, and retries it."""
    space = {"lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}
    opts = dict(storage=postgres_url, study_name="nobeat", base_config=TINY, heartbeat_interval=1, strategy="random")
    run(space, toy_data, trials=1, **opts)
    study = optuna.load_study(study_name="nobeat", storage=postgres_url)
    study.enqueue_trial({})
    dead = study._pop_waiting_trial_id()  # RUNNING with no heartbeat: a worker killed right after popping it
    assert dead is not None
    # younger than NO_HEARTBEAT_FACTOR intervals: it may still be starting, so it is left alone
    fail_dead_trials(optuna.load_study(study_name="nobeat", storage=open_storage(
        StorageSpec("rdb", postgres_url, heartbeat_interval=1))))
    assert optuna.load_study(study_name="nobeat", storage=postgres_url).trials[1].state == TrialState.RUNNING
    time.sleep(NO_HEARTBEAT_FACTOR * 1 + 0.5)
    run(space, toy_data, trials=2, **opts)  # resuming fails it, retries it, and ends with exactly 2
    study = optuna.load_study(study_name="nobeat", storage=postgres_url)
    assert study.trials[1].state == TrialState.FAIL
    assert _finished(study) == 2 and len(study.trials) == 3
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert [t.system_attrs.get("failed_trial") for t in study.trials[2:]] == [1]


def test_killed_worker_on_a_journal_file_loses_nothing(toy_data, tmp_path) -> None:
    """A journal has no heartbeat: when the workers end, a killed one's RUNNING trial is failed and rerun."""
    slow = MLPConfig(max_epochs=30, patience=30, hidden_sizes=(256, 256), batch_size=16)
    path = tmp_path / "study.journal"
    out: dict = {}

    def search() -> None:
        out["result"] = run(
            {"lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
            toy_data,
            trials=4,
            workers=2,
            storage=str(path),
            study_name="kill",
            base_config=slow,
            strategy="random",
        )

    thread = threading.Thread(target=search)
    thread.start()
    storage = None
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if not path.exists():
            continue
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(path)))
        try:
            study = optuna.load_study(study_name="kill", storage=storage)
        except KeyError:
            continue
        for t in study.get_trials(states=(TrialState.RUNNING,)):
            worker = t.system_attrs.get(WORKER_KEY)
            # Mid-trial: once its parameters are drawn (the worker is published just before
            # the sampler runs; a trial killed then is retried with freshly drawn ones).
            if worker and t.params:
                os.kill(worker["pid"], signal.SIGKILL)
                killed = t.number
                break
    thread.join(timeout=120)
    assert killed is not None and not thread.is_alive() and "result" in out
    study = out["result"].study
    assert study.trials[killed].state == TrialState.FAIL
    assert _finished(study) == 4
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    rerun = [t for t in study.trials if t.number > killed and t.params == study.trials[killed].params]
    assert len(rerun) == 1 and rerun[0].state == TrialState.COMPLETE


def test_worker_job_travels_as_json(toy_data, tmp_path) -> None:
    """The job file is JSON (never a pickle) and reads back to the same objective, strategy and pruner."""
    import json

    from modelyard.search import EvolutionSearch, resolve_objectives
    from modelyard.search._study import TrialObjective
    from modelyard.search._worker import StorageSpec, WorkerJob

    objective = TrialObjective(
        spaces.mlp(), "mlp", resolve_objectives(("accuracy", "n_params"), "binary"), TINY, prune=False
    )
    job = WorkerJob(
        storage=StorageSpec("journal", str(tmp_path / "j.log"), 3),
        study_name="s",
        data_dir=str(tmp_path),
        objective=objective,
        strategy=EvolutionSearch(population_size=7, sample_size=3),
        early_stopping="asha",
        seed=5,
        n_objectives=2,
        deadline_s=12.5,
    )
    text = job.to_json()
    json.loads(text)  # plain JSON
    back = WorkerJob.from_json(text, "binary")
    assert back.storage == job.storage and back.seed == 5 and back.deadline_s == 12.5
    assert back.objective.space == objective.space and back.objective.base_config == TINY
    assert [o.name for o in back.objective.objectives] == ["accuracy", "n_params"]
    assert isinstance(back.strategy, EvolutionSearch)
    assert (back.strategy.population_size, back.strategy.sample_size) == (7, 3)
    assert back.early_stopping == "asha"


def test_settings_that_cannot_reach_workers_fail_before_any_trial(toy_data) -> None:
    from modelyard.search import RandomSearch

    class Local(RandomSearch):
        pass

    with pytest.raises(SpecError, match="cannot import it"):
        run(spaces.mlp(), toy_data, trials=2, workers=2, strategy=Local(), base_config=TINY)
    odd = RandomSearch()
    odd.extra = object()
    with pytest.raises(SpecError, match="not JSON"):
        run(spaces.mlp(), toy_data, trials=2, workers=2, strategy=odd, base_config=TINY)
    with pytest.raises(SpecError, match="early_stopping as a name"):
        run(
            spaces.mlp(), toy_data, trials=2, workers=2, base_config=TINY,
            early_stopping=optuna.pruners.MedianPruner(),
        )


def test_lock_left_by_a_killed_journal_writer_is_released(tmp_path, monkeypatch) -> None:
    """A worker killed inside an append leaves Optuna's symlink lock behind; the next writer
    takes it over after the grace period, also when the journal was named by a relative path
    (the pipeline's ``runs/.state/...``; the link then dangled and Optuna waited forever)."""
    from modelyard.search import _worker

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_worker, "JOURNAL_LOCK_GRACE_S", 1)
    (tmp_path / "state").mkdir()
    journal = os.path.join("state", "study.journal")
    dead = _worker.open_storage(_worker.StorageSpec("journal", journal))
    optuna.create_study(study_name="before-kill", storage=dead)
    dead._backend._lock.acquire()  # the lock as a writer killed before its release leaves it
    assert os.path.lexists(journal + ".lock")
    result: list[str] = []

    def create() -> None:
        storage = _worker.open_storage(_worker.StorageSpec("journal", journal))
        result.append(optuna.create_study(study_name="after-kill", storage=storage).study_name)

    thread = threading.Thread(target=create, daemon=True)
    thread.start()
    thread.join(timeout=60)  # the grace period is 1 s; 60 s only bounds a regression
    assert result == ["after-kill"]
    assert not os.path.lexists(journal + ".lock")
