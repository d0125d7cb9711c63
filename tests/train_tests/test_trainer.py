"""The trainer: determinism, early stopping with best-weight restore, progress callback, checks."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from modelyard.data import TabularSplit, encode_frame, infer_schema
from modelyard.errors import SchemaMismatchError
from modelyard.models import MLPConfig, TabularMLP
from modelyard.train import Trainer


def splits(
    task: str = "binary", *, n: int = 800, noise: float = 0.5, seed: int = 0
) -> tuple[TabularSplit, TabularSplit]:
    """A noisy synthetic problem: two numbers and a category; the valid split is the last 25%."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.choice(list("pqrs"), size=n)})
    signal = frame["a"] - 0.5 * frame["b"] + frame["c"].map({"p": -1.0, "q": 0.0, "r": 0.5, "s": 1.0})
    signal = signal + rng.normal(scale=noise, size=n)
    frame["y"] = signal if task == "regression" else np.where(signal > 0, "pos", "neg")
    schema = infer_schema(frame, "y")
    cut = int(0.75 * n)
    return TabularSplit(frame.iloc[:cut], schema), TabularSplit(frame.iloc[cut:], schema)


def module_for(train: TabularSplit, **config) -> TabularMLP:
    x_num, _ = encode_frame(train.X, train.schema)
    return TabularMLP.build(train.schema, MLPConfig(**config), x_num=x_num, y=train.y)


def fit(train: TabularSplit, valid: TabularSplit, *, seed: int, **trainer) -> tuple[TabularMLP, Trainer]:
    module = module_for(train, seed=seed)
    return module, Trainer(seed=seed, **trainer).fit(module, train, valid)


# -- determinism ------------------------------------------------------------------------------
def test_same_seed_gives_bit_identical_weights() -> None:
    train, valid = splits()
    rng_before = torch.random.get_rng_state()
    threads_before = torch.get_num_threads()
    a, ta = fit(train, valid, seed=3, max_epochs=4, batch_size=32)
    b, tb = fit(train, valid, seed=3, max_epochs=4, batch_size=32)
    c, _ = fit(train, valid, seed=4, max_epochs=4, batch_size=32)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name  # bit-identical, not merely close
    assert ta.history_ == tb.history_
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    # Training neither moved torch's global RNG nor left its thread count changed.
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before


def test_dropout_is_seeded_by_the_trainer_not_the_global_rng() -> None:
    train, valid = splits()
    torch.manual_seed(123)
    a, _ = fit(train, valid, seed=0, max_epochs=2)
    torch.manual_seed(456)  # a different global state must not change the result
    b, _ = fit(train, valid, seed=0, max_epochs=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# -- early stopping ---------------------------------------------------------------------------
def test_early_stopping_restores_the_best_epoch() -> None:
    # Few, noisy rows and a large learning rate: the validation loss soon turns up.
    train, valid = splits(n=300, noise=1.5)
    module, trainer = fit(train, valid, seed=0, max_epochs=60, patience=4, lr=1e-2, batch_size=16)
    losses = trainer.history_["valid_loss"]
    assert trainer.stopped_early_ and trainer.n_epochs_ < 60
    assert trainer.best_epoch_ == int(np.argmin(losses)) + 1
    assert trainer.n_epochs_ == trainer.best_epoch_ + 4  # stopped exactly `patience` epochs later
    assert trainer.best_valid_loss_ == min(losses)
    assert losses[-1] > min(losses)  # the last epoch is worse: restoring matters
    # The returned module is the best epoch's: its validation loss equals the minimum. Both
    # come from the same eval-mode forward in float32, summed in float64, so 1e-6 is only
    # headroom for the batch-order of that sum.
    assert not module.training
    assert abs(trainer.evaluate(module, valid)["loss"] - min(losses)) <= 1e-6
    assert set(trainer.history_) == {"train_loss", "valid_loss", "valid_accuracy"}
    assert all(len(v) == trainer.n_epochs_ for v in trainer.history_.values())


def test_runs_to_max_epochs_without_stopping_early() -> None:
    train, valid = splits()
    _, trainer = fit(train, valid, seed=0, max_epochs=3, patience=10)
    assert trainer.n_epochs_ == 3 and not trainer.stopped_early_
    assert 1 <= trainer.best_epoch_ <= 3 and trainer.fit_time_s_ > 0


def test_regression_uses_mse() -> None:
    train, valid = splits("regression", noise=0.1)
    module, trainer = fit(train, valid, seed=0, max_epochs=40, patience=5, lr=3e-3, batch_size=32)
    assert set(trainer.history_) == {"train_loss", "valid_loss"}
    x_num, x_cat = (torch.from_numpy(a) for a in encode_frame(valid.X, valid.schema))
    with torch.no_grad():
        mse = float(torch.mean((module(x_num, x_cat).double() - torch.tensor(valid.y)) ** 2))
    assert math.isclose(mse, trainer.best_valid_loss_, rel_tol=1e-5)  # the loss is the plain MSE (float32 sums)
    assert mse < 0.1 * float(np.var(valid.y))  # and the model learned the signal


# -- progress callback and argument checks ----------------------------------------------------------
def test_callback_receives_every_epoch() -> None:
    train, valid = splits()
    calls: list[tuple[int, int, dict[str, float]]] = []
    _, trainer = fit(train, valid, seed=0, max_epochs=3, patience=5, callback=lambda *a: calls.append(a))
    assert [(e, m) for e, m, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    for i, (_, _, logs) in enumerate(calls):
        assert logs == {k: trainer.history_[k][i] for k in ("train_loss", "valid_loss", "valid_accuracy")}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"batch_size": 0}, "Trainer batch_size must be a positive integer; got 0."),
        ({"max_epochs": 2.5}, "Trainer max_epochs must be a positive integer; got 2.5."),
        ({"lr": float("nan")}, "Trainer lr must be a finite number >= 0; got nan."),
        ({"lr": 0}, "Trainer lr must be > 0; got 0."),
        ({"seed": -1}, "Trainer seed must be an integer >= 0; got -1."),
        ({"num_threads": 0}, "Trainer num_threads must be a positive integer or None; got 0."),
    ],
)
def test_parameters_are_checked_in_fit_not_init(params: dict, message: str) -> None:
    trainer = Trainer(**params)  # sklearn style: __init__ only stores
    assert {k: getattr(trainer, k) for k in params} == params
    train, valid = splits()
    with pytest.raises(ValueError) as err:
        trainer.fit(module_for(train), train, valid)
    assert str(err.value) == message


def test_splits_must_share_a_schema() -> None:
    train, _ = splits()
    other, _ = splits("regression")
    with pytest.raises(SchemaMismatchError, match="different schemas"):
        Trainer().fit(module_for(train), train, other)
    with pytest.raises(ValueError, match="Training needs rows in both splits; got 600 train and 0 valid rows."):
        Trainer().fit(module_for(train), train, TabularSplit(train.frame.iloc[:0], train.schema))
    assert "seed=0" in repr(Trainer())
