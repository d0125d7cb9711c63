"""Early stopping of poor trials on the epoch budget: median rule, successive halving (ASHA), Hyperband.

MLP trials report a validation figure after every epoch (through the trainer's epoch
callback) and stop with ``optuna.TrialPruned`` when the pruner says so. Pruning needs
one objective (Optuna compares one intermediate value per step). Gradient-boosting
trials train in one call and are never pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from modelyard._registry import Registry
from modelyard.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["PRUNERS", "make_pruner", "pruning_callback"]

MULTI_OBJECTIVE_PRUNING = (
    "Early stopping {name!r} needs a single objective, but the search has {n} ({objectives}); "
    "Optuna cannot prune multi-objective trials. Use early_stopping='none' or one objective."
)

#: Name -> function returning a fresh ``optuna.pruners.BasePruner``.
PRUNERS: Registry[Callable[[], Any]] = Registry("early-stopping rule")


@PRUNERS.register("none")
def _none() -> Any:
    """Never prune."""
    from optuna.pruners import NopPruner

    return NopPruner()


@PRUNERS.register("median")
def _median() -> Any:
    """Stop a trial whose value at an epoch is worse than the median of earlier trials at that epoch.

    After 5 trials and from epoch 2 (the first epoch is noisy).
    """
    from optuna.pruners import MedianPruner

    return MedianPruner(n_startup_trials=5, n_warmup_steps=1)


@PRUNERS.register("asha")
def _asha() -> Any:
    """Asynchronous successive halving (Li et al., 2018): keep the top 1/3 at rungs 1, 3, 9... epochs."""
    from optuna.pruners import SuccessiveHalvingPruner

    return SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)


@PRUNERS.register("hyperband")
def _hyperband() -> Any:
    """Hyperband (Li et al., 2017): several successive-halving brackets with different minimum budgets."""
    from optuna.pruners import HyperbandPruner

    return HyperbandPruner(min_resource=1, reduction_factor=3)


def make_pruner(
    early_stopping: str | Any,
    *,
    n_objectives: int = 1,
    objectives: tuple[str, ...] = (),
) -> Any:
    """An Optuna pruner from a registered name or a ``BasePruner`` instance.

    Raises
    ------
    ValueError
        Unknown name (lists the known ones).
    SpecError
        A pruning rule with several objectives.
    """
    from optuna.pruners import BasePruner, NopPruner

    if isinstance(early_stopping, str):
        pruner = PRUNERS.get(early_stopping)()
        name = early_stopping
    elif isinstance(early_stopping, BasePruner):
        pruner, name = early_stopping, type(early_stopping).__name__
    else:
        raise TypeError(
            f"early_stopping must be a name or an optuna pruner; got {type(early_stopping).__name__}."
        )
    if n_objectives > 1 and not isinstance(pruner, NopPruner):
        raise SpecError(
            MULTI_OBJECTIVE_PRUNING.format(
                name=name, n=n_objectives, objectives=", ".join(objectives)
            )
        )
    return pruner


def pruning_callback(
    trial: optuna.Trial, key: str, sign: float = 1.0
) -> Callable[[int, int, Mapping[str, float]], None]:
    """A trainer epoch callback that reports ``sign * logs[key]`` and prunes when told to.

    Parameters
    ----------
    trial : optuna.Trial
    key : str
        The log to report: ``valid_loss`` or ``valid_accuracy``.
    sign : float, default=1.0
        -1 to report a loss to a maximizing study (the pruner compares in the study's direction).
    """
    import optuna

    def callback(epoch: int, max_epochs: int, logs: Mapping[str, float]) -> None:
        trial.report(sign * float(logs[key]), step=epoch)
        # A trial at its last epoch has spent its whole budget: its result is final, and
        # pruning it would throw the fully trained model away. (Successive halving has
        # no upper rung: with rungs 1, 3, 9, 27 and 27 epochs, it would prune two thirds
        # of the trials that reach the end.)
        if epoch < max_epochs and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} of {max_epochs}")

    return callback
