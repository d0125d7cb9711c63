"""Early stopping rules and objectives."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from modelyard.errors import SpecError
from modelyard.models import GBMConfig, MLPConfig
from modelyard.search import (
    PRUNERS,
    make_pruner,
    n_params,
    pruning_callback,
    resolve_objectives,
    run,
)
from modelyard.train import fit_gbm, fit_mlp


def _study_with(early_stopping: str) -> optuna.Study:
    """Trials 'train' 9 epochs; the loss grows with x, so high x is a deliberately bad region."""
    study = optuna.create_study(
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=make_pruner(early_stopping),
    )

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        callback = pruning_callback(trial, "valid_loss")
        loss = 1.0
        for epoch in range(1, 10):
            loss = 2.0 * x + 1.0 / epoch
            callback(epoch, 9, {"valid_loss": loss})
        return loss

    study.optimize(objective, n_trials=30)
    return study


@pytest.mark.parametrize("name", ["median", "asha", "hyperband"])
def test_pruners_stop_trials_of_a_bad_region(name: str) -> None:
    study = _study_with(name)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert len(pruned) > 0
    done = study.get_trials(states=(TrialState.COMPLETE,))
    mean = lambda ts: sum(t.params["x"] for t in ts) / len(ts)
    assert mean(pruned) > mean(done)  # the pruned trials come from the bad region


@pytest.mark.parametrize("name", ["median", "asha", "hyperband"])
def test_a_trial_that_reached_its_last_epoch_is_never_pruned(name: str) -> None:
    """Every trial that reports epoch 9 of 9 completes: its budget is spent and its model is final."""
    study = _study_with(name)
    for t in study.trials:
        if max(t.intermediate_values) == 9:
            assert t.state == TrialState.COMPLETE, (t.number, t.state)
    assert study.get_trials(states=(TrialState.PRUNED,))  # pruning still happens before the last epoch


def test_the_callback_prunes_before_the_last_epoch_only() -> None:
    class Always(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            return True

    study = optuna.create_study(pruner=Always())
    trial = study.ask()
    callback = pruning_callback(trial, "valid_loss")
    callback(3, 3, {"valid_loss": 0.5})  # the last epoch: no pruning
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 2 of 3"):
        callback(2, 3, {"valid_loss": 0.5})


def test_none_never_prunes() -> None:
    assert not _study_with("none").get_trials(states=(TrialState.PRUNED,))
    assert PRUNERS.names() == ["asha", "hyperband", "median", "none"]


def test_pruning_needs_one_objective() -> None:
    with pytest.raises(SpecError) as err:
        make_pruner("asha", n_objectives=2, objectives=("accuracy", "n_params"))
    assert str(err.value) == (
        "Early stopping 'asha' needs a single objective, but the search has 2 (accuracy, n_params); "
        "Optuna cannot prune multi-objective trials. Use early_stopping='none' or one objective."
    )


def test_mlp_search_reports_every_epoch_and_prunes(toy_data) -> None:
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    result = run(
        {"lr": {"type": "float", "low": 1e-6, "high": 3e-2, "log": True}},
        toy_data,
        trials=6,
        early_stopping=pruner,
        strategy="random",
        base_config=MLPConfig(max_epochs=4, hidden_sizes=(16,), patience=4),
    )
    trials = result.study.trials
    assert all(t.intermediate_values for t in trials)
    assert len(trials) == 6


# -- objectives -------------------------------------------------------------------------------
def test_n_params_counts_torch_parameters_and_tree_nodes(toy_data) -> None:
    mlp = fit_mlp(
        toy_data.train, toy_data.valid, MLPConfig(max_epochs=1, hidden_sizes=(8,))
    )
    assert n_params(mlp) == sum(p.numel() for p in mlp.module.parameters())
    gbm = fit_gbm(
        toy_data.train,
        toy_data.valid,
        GBMConfig(max_iter=5, early_stopping=False),
        n_threads=1,
    )
    trees = gbm.estimator._predictors
    assert n_params(gbm) == sum(len(t.nodes) for it in trees for t in it) > 5


def test_objective_directions() -> None:
    got = [
        (o.name, o.direction, o.kind)
        for o in resolve_objectives(["accuracy", "log_loss", "n_params"], "binary")
    ]
    assert got == [
        ("accuracy", "maximize", "metric"),
        ("log_loss", "minimize", "metric"),
        ("n_params", "minimize", "cost"),
    ]
    assert resolve_objectives("rmse", "regression")[0].direction == "minimize"


@pytest.mark.parametrize(
    ("name", "task", "message"),
    [
        (
            "rmse",
            "binary",
            "Objective 'rmse' cannot be computed for a binary task; use one of "
            "['accuracy', 'auc', 'auc_pr', 'brier', 'ece', 'f1', 'fnr', 'fpr', 'log_loss', 'precision', 'recall', 'tnr', 'tpr', 'n_params', 'flops', 'latency_ms'].",
        ),
        (
            "auc",
            "regression",
            "Objective 'auc' cannot be computed for a regression task; use one of "
            "['mae', 'r2', 'rmse', 'n_params', 'flops', 'latency_ms'].",
        ),
        (
            "count",
            "binary",
            "Objective 'count' cannot be computed for a binary task; use one of "
            "['accuracy', 'auc', 'auc_pr', 'brier', 'ece', 'f1', 'fnr', 'fpr', 'log_loss', 'precision', 'recall', 'tnr', 'tpr', 'n_params', 'flops', 'latency_ms'].",
        ),
        (
            "hinge",
            "binary",
            "Unknown objective 'hinge' for a binary task; known: ['accuracy', 'auc', 'auc_pr', 'brier', 'ece', 'f1', 'fnr', 'fpr', 'log_loss', 'precision', 'recall', 'tnr', 'tpr', 'n_params', 'flops', 'latency_ms'].",
        ),
    ],
)
def test_unfit_objectives_error(name: str, task: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        resolve_objectives([name], task)
    assert str(err.value) == message


def test_unfit_objective_fails_before_any_trial(toy_regression) -> None:
    with pytest.raises(
        SpecError, match="Objective 'auc' cannot be computed for a regression task"
    ):
        run("gbm", toy_regression, family="gbm", objectives=("auc",), trials=1)


def test_module_flops_match_a_hand_count() -> None:
    import torch
    from torch import nn

    from modelyard.search import module_flops

    mlp = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    assert module_flops(mlp, torch.zeros(4, 10)) == 10 * 20 + 20 * 3  # per row, batch of 4
    conv = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8x8 out: 8*8*8 positions x 3*9 taps
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: 8*8*8 x 1*9
        nn.MaxPool2d(2),  # not counted
        nn.Conv2d(8, 4, 1),  # 4x4 out: 4*4*4 x 8
    )
    assert module_flops(conv, torch.zeros(2, 3, 8, 8)) == 512 * 27 + 512 * 9 + 64 * 8


def test_flops_of_the_tabular_mlp_and_of_trees(toy_data) -> None:
    from modelyard.search import flops

    plain = fit_mlp(toy_data.train, toy_data.valid, MLPConfig(max_epochs=1, hidden_sizes=(16, 8), numeric_embedding="none"))
    m = plain.module
    width = m.n_num + sum(e.embedding_dim for e in m.embeddings)
    assert flops(plain, toy_data.valid.X) == width * 16 + 16 * 8 + 8 * m.head.out_features
    periodic = fit_mlp(toy_data.train, toy_data.valid, MLPConfig(max_epochs=1, hidden_sizes=(16,)))
    p = periodic.module
    k, d = p.frequencies.shape[1], p.periodic_weight.shape[2]
    width = p.n_num * d + sum(e.embedding_dim for e in p.embeddings)
    expected = p.n_num * (k + 2 * k * d) + width * 16 + 16 * p.head.out_features
    assert flops(periodic, toy_data.valid.X) == expected
    gbm = fit_gbm(toy_data.train, toy_data.valid, GBMConfig(max_iter=5, max_depth=3))
    trees = [t for per in gbm.estimator._predictors for t in per]
    assert flops(gbm, toy_data.valid.X) == sum(t.get_max_depth() for t in trees) <= 3 * len(trees)
