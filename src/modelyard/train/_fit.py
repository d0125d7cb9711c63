"""One-call fitting of the model families: build the model, train it, return a Predictor."""

from __future__ import annotations

from modelyard.data._schema import encode_frame
from modelyard.data._tabular import TabularSplit
from modelyard.models._config import MLPConfig
from modelyard.models._mlp import TabularMLP
from modelyard.models._torch import TorchPredictor
from modelyard.train._trainer import EpochCallback, Trainer

__all__ = ["fit_mlp"]


def fit_mlp(
    train: TabularSplit,
    valid: TabularSplit,
    config: MLPConfig = MLPConfig(),  # noqa: B008 - frozen pydantic model, safe as a default
    *,
    callback: EpochCallback | None = None,
) -> TorchPredictor:
    """Fit a :class:`TabularMLP` on ``train``, early-stopping on ``valid``.

    Preprocessing statistics (means, standard deviations, which columns get a log
    transform) come from ``train`` only.

    Parameters
    ----------
    train, valid : TabularSplit
        Training and validation rows sharing one schema.
    config : MLPConfig, default=MLPConfig()
        Architecture and training hyperparameters.
    callback : callable or None, default=None
        ``callback(epoch, max_epochs, logs)`` after each epoch (see :class:`modelyard.train.Trainer`).

    Returns
    -------
    TorchPredictor
        With the best epoch's weights; ``history_`` holds the per-epoch losses and
        ``best_epoch_`` the epoch restored.
    """
    if not isinstance(config, MLPConfig):
        raise TypeError(f"config must be an MLPConfig; got {type(config).__name__}.")
    x_num, _ = encode_frame(train.X, train.schema)
    module = TabularMLP.build(train.schema, config, x_num=x_num, y=train.y)
    trainer = Trainer(
        max_epochs=config.max_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        patience=config.patience,
        seed=config.seed,
        callback=callback,
    )
    trainer.fit(module, train, valid)
    predictor = TorchPredictor(module, train.schema, config=config)
    predictor.history_ = trainer.history_
    predictor.best_epoch_ = trainer.best_epoch_
    return predictor
