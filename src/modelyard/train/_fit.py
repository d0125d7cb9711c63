"""One-call fitting of the model families: build the model, train it, return a Predictor."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelyard.data._image import ImageSplit
from modelyard.data._schema import encode_frame
from modelyard.data._tabular import TabularSplit
from modelyard.models._config import ImageNetConfig, LatticeConfig, MLPConfig
from modelyard.models._mlp import TabularMLP
from modelyard.models._torch import TorchPredictor
from modelyard.train._trainer import EpochCallback, LossHook, Trainer

__all__ = ["fit_image", "fit_lattice", "fit_mlp"]


def fit_mlp(
    train: TabularSplit,
    valid: TabularSplit,
    config: MLPConfig = MLPConfig(),  # noqa: B008 - frozen pydantic model, safe as a default
    *,
    callback: EpochCallback | None = None,
    sample_weight: np.ndarray | None = None,
    loss_hook: LossHook | None = None,
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
    sample_weight, loss_hook : optional
        Per-row training weights and a batch penalty, passed to :meth:`Trainer.fit`.

    Returns
    -------
    TorchPredictor
        With the best epoch's weights; ``history_`` holds the per-epoch losses and
        ``best_epoch_`` the epoch restored.
    """
    if not isinstance(config, MLPConfig):
        raise TypeError(f"config must be an MLPConfig; got {type(config).__name__}.")
    return _fit_tabular(TabularMLP, train, valid, config, callback, sample_weight=sample_weight, loss_hook=loss_hook)


def fit_lattice(
    train: TabularSplit,
    valid: TabularSplit,
    config: LatticeConfig = LatticeConfig(),  # noqa: B008 - frozen pydantic model, safe as a default
    *,
    callback: EpochCallback | None = None,
) -> TorchPredictor:
    """Fit a calibrated lattice model (:class:`~modelyard.models.CalibratedLattice`), early-stopping on ``valid``.

    Keypoints (training quantiles) and missing-value fills come from ``train`` only.
    Monotonic features named in ``config.monotonic`` are monotone in the result exactly.

    Returns
    -------
    TorchPredictor
        ``family == "lattice"``; saved, loaded and exported like the MLP.
    """
    from modelyard.models._lattice import CalibratedLattice

    if not isinstance(config, LatticeConfig):
        raise TypeError(f"config must be a LatticeConfig; got {type(config).__name__}.")
    return _fit_tabular(CalibratedLattice, train, valid, config, callback)


def _fit_tabular(cls: Any, train: TabularSplit, valid: TabularSplit, config: Any,
                 callback: EpochCallback | None, *, sample_weight: np.ndarray | None = None,
                 loss_hook: LossHook | None = None) -> TorchPredictor:
    """Build a :class:`TabularModule` family from ``train`` and train it with the :class:`Trainer`."""
    x_num, _ = encode_frame(train.X, train.schema)
    module = cls.build(train.schema, config, x_num=x_num, y=train.y)
    trainer = Trainer(
        max_epochs=config.max_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        patience=config.patience,
        seed=config.seed,
        callback=callback,
    )
    trainer.fit(module, train, valid, sample_weight=sample_weight, loss_hook=loss_hook)
    predictor = TorchPredictor(module, train.schema, config=config)
    predictor.history_ = trainer.history_
    predictor.best_epoch_ = trainer.best_epoch_
    return predictor


def fit_image(
    train: ImageSplit,
    valid: ImageSplit,
    config: ImageNetConfig = ImageNetConfig(),  # noqa: B008 - frozen pydantic model, safe as a default
    *,
    classes: Any = None,
    callback: EpochCallback | None = None,
) -> Any:
    """Fit an image classifier (:class:`~modelyard.models.ImageNet`) on ``train``, early-stopping on ``valid``.

    The per-channel pixel mean and standard deviation come from ``train`` only and
    live in the model.

    Parameters
    ----------
    train, valid : ImageSplit
    config : ImageNetConfig, default=ImageNetConfig()
    classes : sequence of str or None, default=None
        Class names (``ImageData.classes``); ``"0" .. "k-1"`` if None, k from the labels.
    callback : callable or None, default=None
        ``callback(epoch, max_epochs, logs)`` after each epoch.

    Returns
    -------
    ImagePredictor
        With the best epoch's weights; ``history_`` and ``best_epoch_`` as for :func:`fit_mlp`.
    """
    import torch

    from modelyard.models._image import ImageNet, ImagePredictor

    if not isinstance(config, ImageNetConfig):
        raise TypeError(f"config must be an ImageNetConfig; got {type(config).__name__}.")
    if not isinstance(train, ImageSplit) or not isinstance(valid, ImageSplit):
        raise TypeError("fit_image needs ImageSplit train and valid splits (modelyard.data.load('fashion_mnist')).")
    n_classes = len(classes) if classes is not None else int(max(train.y.max(), valid.y.max())) + 1
    classes = tuple(str(c) for c in classes) if classes is not None else tuple(str(i) for i in range(n_classes))
    pixels = train.x.astype(np.float64) / 255.0  # (N, C, H, W)
    mean, std = pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3))
    std = np.where(std > 0, std, 1.0)  # a constant channel is only centred
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # initialization, restored afterwards like the trainer's dropout
        module = ImageNet(train.image_shape, n_classes, config, mean=mean, std=std)
    trainer = Trainer(
        max_epochs=config.max_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        patience=config.patience,
        seed=config.seed,
        eval_batch_size=1024,
        callback=callback,
    )
    trainer.fit(module, train, valid)
    predictor = ImagePredictor(module, classes, config)
    predictor.history_ = trainer.history_
    predictor.best_epoch_ = trainer.best_epoch_
    return predictor
