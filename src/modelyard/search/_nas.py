"""Neural architecture search over image CNN cells on a budget of trained models.

:func:`nas` trains up to ``models`` networks on a subset of an image data set and
returns every one of them (accuracy, parameters, FLOPs, seconds) in a
:class:`NASResult`. Strategies:

* ``"pnas"``: progressive NAS (:func:`~modelyard.search._pnas.pnas_search`);
* ``"morphism"``: network morphism with weight inheritance
  (``modelyard.search._conv_morphism.morphism_search``), which grows its own
  convolutional networks rather than cells;
* any strategy of :data:`~modelyard.search.SEARCH_STRATEGIES` (``"rl"``, ``"evolution"``,
  ``"random"``, ``"tpe"``, ...): its Optuna sampler searches :func:`cell_space` through an
  ask-and-tell study, one trained :class:`CellNetwork` per trial.

Every cell strategy trains its networks with :func:`train_and_score` under the same
settings and seed, so one cell always gets the same accuracy; a ``cache`` dict shared
between calls lets several strategies reuse the networks already trained (a benchmark
comparing strategies on one data subset trains each distinct cell once).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelyard.data._image import ImageData, ImageSplit
from modelyard.errors import SpecError
from modelyard.search._cells import (
    CellNetwork,
    Genotype,
    cell_space,
    count_flops,
    count_params,
)

__all__ = [
    "NAS_STRATEGIES",
    "NASNetwork",
    "NASRecord",
    "NASResult",
    "cell_architecture",
    "nas",
    "subset",
    "train_and_score",
]

#: Strategies of :func:`nas` besides the registered Optuna ones.
NAS_STRATEGIES = ("pnas", "morphism")

UNKNOWN_NAS_STRATEGY = "Unknown NAS strategy {name!r}; use one of {known}."
NO_MORPHISM = (
    "strategy='morphism' needs modelyard.search._conv_morphism.morphism_search, which could not "
    "be imported ({error}); use another strategy ({known}) or install a modelyard that has it."
)


def _to_tensors(
    split: ImageSplit, mean: float, std: float
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(split.x).float().div_(255.0)  # (N, C, H, W) in [0, 1]
    if (mean, std) != (0.0, 1.0):
        x = x.sub_(mean).div_(std)
    return x, torch.from_numpy(split.y)  # (N,)


def train_and_score(
    model: nn.Module,
    train: ImageSplit,
    valid: ImageSplit,
    *,
    epochs: int = 1,
    lr: float = 3e-3,
    batch_size: int = 128,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    seed: int = 0,
    threads: int | None = 1,
    recalibrate_bn: int = 1024,
    standardize: bool = True,
) -> float:
    """Train ``model`` in place on ``train`` and return its accuracy on ``valid``.

    Pixels are scaled to ``[0, 1]`` and (unless ``standardize=False``, for a model that
    standardizes its input itself) standardized with the mean and standard deviation of
    ``train``. Each epoch shuffles the training images with a generator seeded by
    ``seed``; cross-entropy loss; Adam (or SGD with momentum 0.9 and a cosine schedule).

    After a short training the running statistics of batch norm lag far behind the
    weights (their exponential average has seen a few dozen batches of a moving
    network), so evaluation mode scores a network much below what it computes in
    training mode: on 3,000 Fashion-MNIST images, one epoch at batch 128, one cell scored
    0.27 in evaluation mode against 0.63 in training mode. So, unless
    ``recalibrate_bn=0``, the statistics are recomputed afterwards as plain averages over
    the first ``recalibrate_bn`` training images with the final weights (forward passes
    only; the "BN recalibration" of one-shot NAS).

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(N, C, H, W)`` float images to ``(N, n_classes)`` logits; its
        initialization is the caller's (seed ``torch`` before building it).
    train, valid : ImageSplit
    epochs : int, default=1
        Passes over ``train``; 0 scores the model untrained.
    lr : float, default=3e-3
    batch_size : int, default=128
    optimizer : {"adam", "sgd"}, default="adam"
    weight_decay : float, default=0.0
    seed : int, default=0
    threads : int or None, default=1
        Torch CPU threads while training (restored afterwards); None leaves the setting.
    recalibrate_bn : int, default=1024
        Training images to recompute batch-norm statistics with after training; 0 keeps
        the running averages.
    standardize : bool, default=True
        Standardize the ``[0, 1]`` pixels; False passes them as they are.

    Returns
    -------
    float
        Validation accuracy in ``[0, 1]``.

    Raises
    ------
    SpecError
        On an unknown optimizer, a non-positive batch size, or negative epochs.
    """
    if optimizer not in ("adam", "sgd"):
        raise SpecError(f"Unknown optimizer {optimizer!r}; use 'adam' or 'sgd'.")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise SpecError(f"epochs must be an integer >= 0; got {epochs!r}.")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise SpecError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
    if len(train) == 0 or len(valid) == 0:
        raise SpecError(
            f"train and valid need images; got {len(train)} and {len(valid)}."
        )
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        mean, std = 0.0, 1.0
        if standardize:
            pixels = train.x.astype(np.float32) / 255.0
            mean, std = float(pixels.mean()), float(pixels.std()) or 1.0
        x_train, y_train = _to_tensors(train, mean, std)
        x_valid, y_valid = _to_tensors(valid, mean, std)
        params = [p for p in model.parameters() if p.requires_grad]
        steps_per_epoch = math.ceil(len(train) / batch_size)
        if optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(
                params, lr=lr, weight_decay=weight_decay
            )
            schedule = None
        else:
            opt = torch.optim.SGD(
                params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True
            )
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=max(1, epochs * steps_per_epoch)
            )
        generator = torch.Generator().manual_seed(seed)
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(train), generator=generator)
            for start in range(0, len(train), batch_size):
                rows = order[start : start + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x_train[rows]), y_train[rows])
                loss.backward()
                opt.step()
                if schedule is not None:
                    schedule.step()
        if recalibrate_bn > 0 and epochs > 0:
            _recalibrate(model, x_train[:recalibrate_bn], batch_size)
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(valid), 512):
                logits = model(x_valid[start : start + 512])  # (b, n_classes)
                correct += int((logits.argmax(1) == y_valid[start : start + 512]).sum())
        return correct / len(valid)
    finally:
        torch.set_num_threads(previous)


def _recalibrate(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Recompute every batch norm's running mean and variance as plain averages over ``x``."""
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    try:
        with torch.no_grad():
            for start in range(0, len(x), max(batch_size, 256)):
                model(x[start : start + max(batch_size, 256)])
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def subset(split: ImageSplit, size: int | None, seed: int) -> ImageSplit:
    """A seeded random ``size`` images of ``split`` (all of them, shuffled, when ``size`` is None or larger)."""
    rng = np.random.default_rng(seed)
    n = len(split) if size is None else min(size, len(split))
    rows = np.sort(rng.permutation(len(split))[:n])
    return ImageSplit(
        np.ascontiguousarray(split.x[rows]), np.ascontiguousarray(split.y[rows])
    )


@dataclass
class NASRecord:
    """One trained model of a NAS run.

    Attributes
    ----------
    index : int
        1-based: the number of models trained up to and including this one.
    description : str
        The cell (:meth:`Genotype.describe`) or the morphism search's description.
    accuracy : float
        Validation accuracy.
    params : int
        Parameters of the network.
    flops : int
        Multiply-adds of one image through its convolution and linear layers.
    seconds : float
        Wall time to build, train and score it (for a cached cell: when it was trained).
    genotype : Genotype or None
        The cell (None for network morphism).
    n_blocks : int or None
    cached : bool
        Taken from ``cache`` instead of trained in this run.
    inherited : bool or None
        Network morphism: whether the model started from its parent's weights.
    extra : dict
        What else the strategy reports (e.g. PNAS's round and predicted accuracy).
    """

    index: int
    description: str
    accuracy: float
    params: int
    flops: int
    seconds: float
    genotype: Genotype | None = None
    n_blocks: int | None = None
    cached: bool = False
    inherited: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready): the genotype as a list of blocks."""
        d = asdict(self)
        d["genotype"] = (
            None if self.genotype is None else [list(b) for b in self.genotype.blocks]
        )
        return d


@dataclass
class NASResult:
    """Every model a :func:`nas` run trained, in order.

    Attributes
    ----------
    strategy : str
    records : list of NASRecord
    settings : dict
        The run's arguments (budget, epochs, subset sizes, network shape, seed).
    seconds : float
        Wall time of the run.
    """

    strategy: str
    records: list[NASRecord]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def best(self) -> NASRecord:
        """The most accurate model (the earliest among ties)."""
        if not self.records:
            raise ValueError("The NAS run trained no model.")
        return max(self.records, key=lambda r: (r.accuracy, -r.index))

    @property
    def best_accuracy(self) -> float:
        return self.best.accuracy

    def best_so_far(self) -> list[float]:
        """Best accuracy after each trained model."""
        return (
            list(np.maximum.accumulate([r.accuracy for r in self.records]))
            if self.records
            else []
        )

    def models_to_reach(self, accuracy: float) -> int | None:
        """Models trained until one reached ``accuracy`` (its ``index``); None if none did."""
        for r in self.records:
            if r.accuracy >= accuracy:
                return r.index
        return None

    def seconds_to_reach(self, accuracy: float) -> float | None:
        """Training seconds summed until a model reached ``accuracy``; None if none did."""
        total = 0.0
        for r in self.records:
            total += r.seconds
            if r.accuracy >= accuracy:
                return total
        return None

    def to_dataframe(self) -> Any:
        """One row per model: index, description, accuracy, params, flops, seconds, n_blocks, cached, inherited."""
        import pandas as pd

        rows = [
            {k: v for k, v in r.to_dict().items() if k not in ("genotype", "extra")}
            for r in self.records
        ]
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready)."""
        return {
            "strategy": self.strategy,
            "settings": dict(self.settings),
            "seconds": self.seconds,
            "records": [r.to_dict() for r in self.records],
        }

    def save(self, folder: str | os.PathLike[str]) -> dict[str, Path]:
        """Write ``nas.json`` (settings, best model, every record), ``leaderboard.csv`` and ``history.png``.

        Each file is written atomically (a temporary file, then a rename), so a reader
        never sees a part of one.

        Returns
        -------
        dict of str to Path
            The files written, by name.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from modelyard._atomic import atomic_path, atomic_write_bytes

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        payload = self.to_dict()
        payload["best"] = self.best.to_dict()
        files = {"nas.json": folder / "nas.json", "leaderboard.csv": folder / "leaderboard.csv",
                 "history.png": folder / "history.png"}
        atomic_write_bytes(files["nas.json"], json.dumps(payload, indent=1, default=str).encode())
        board = self.to_dataframe().sort_values(["accuracy", "index"], ascending=[False, True])
        atomic_write_bytes(files["leaderboard.csv"], board.to_csv(index=False).encode())
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        index = [r.index for r in self.records]
        ax.scatter(index, [r.accuracy for r in self.records], s=14, alpha=0.6, label="model")
        ax.step(index, self.best_so_far(), where="post", color="C3", label="best so far")
        ax.set_xlabel("models trained")
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"NAS ({self.strategy}): accuracy by models trained")
        ax.legend(loc="lower right")
        fig.tight_layout()
        with atomic_path(files["history.png"]) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return files


def _known_strategies() -> list[str]:
    from modelyard.search._strategies import SEARCH_STRATEGIES

    return sorted({*NAS_STRATEGIES, *SEARCH_STRATEGIES.names()})


def nas(
    data: ImageData,
    strategy: str = "pnas",
    *,
    models: int = 30,
    epochs: int = 1,
    n_blocks: int = 3,
    n_cells: int = 1,
    n_stacks: int = 2,
    channels: int = 8,
    stem_stride: int = 2,
    train_size: int | None = 3000,
    valid_size: int | None = 1000,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
    beam: int = 8,
    initial: int | None = None,
    strategy_options: Mapping[str, Any] | None = None,
    cache: dict[Any, Any] | None = None,
    callback: Callable[[NASRecord], Any] | None = None,
) -> NASResult:
    """Search CNN architectures for ``data`` with a fixed budget of trained models.

    Parameters
    ----------
    data : ImageData
        Uses ``data.train`` and ``data.valid`` (the test split is untouched).
    strategy : str, default="pnas"
        ``"pnas"``, ``"morphism"`` or a registered search strategy (``"rl"``,
        ``"evolution"``, ``"random"``, ``"tpe"``, ...).
    models : int, default=30
        Budget: networks trained.
    epochs : int, default=1
        Training epochs per network.
    n_blocks : int, default=3
        Blocks per cell (the most, for PNAS). Not used by morphism.
    n_cells, n_stacks, channels, stem_stride : int, default=1, 2, 8, 2
        Shape of each :class:`CellNetwork`; the stride-2 stem makes the cells work at
        half resolution (14x14 then 7x7 for 28x28 images), a quarter of the compute.
    train_size, valid_size : int or None, default=3000, 1000
        Seeded random subsets of ``data.train`` and ``data.valid`` (None: all).
    lr, batch_size : float, int, default=3e-3, 64
        Adam settings of :func:`train_and_score`. Batch 64 rather than 128: one epoch of
        3,000 images at 128 is 24 steps, too few to tell cells apart (six cells scored
        0.30-0.71 at 128 and 0.31-0.72, mostly higher, at 64, in the same time).
    seed : int, default=0
        Seeds the subsets, every network's initialization and data order, and the strategy.
    beam, initial : int, default=8, None
        PNAS's ``K`` and first-round size (see :func:`pnas_search`).
    strategy_options : mapping or None, default=None
        Keyword arguments of the registered strategy's class (e.g.
        ``{"population_size": 10}`` for evolution) or of ``morphism_search``.
    cache : dict or None, default=None
        Trained cells by (settings, cell); pass one dict to several calls with the same
        data and settings to train each cell once.
    callback : callable or None, default=None
        Called with each :class:`NASRecord` as it is recorded.

    Returns
    -------
    NASResult

    Raises
    ------
    SpecError
        For an unknown strategy (the message lists the known ones) or a bad budget.
    ImportError
        For ``"morphism"`` when its module is missing.
    """
    known = _known_strategies()
    if not isinstance(strategy, str) or strategy not in known:
        raise SpecError(UNKNOWN_NAS_STRATEGY.format(name=strategy, known=known))
    if isinstance(models, bool) or not isinstance(models, int) or models < 1:
        raise SpecError(
            f"models must be an integer >= 1 (the number of networks to train); got {models!r}."
        )
    if not isinstance(data, ImageData):
        raise SpecError(
            f"nas needs an ImageData (e.g. modelyard.data.load('fashion_mnist')); got {type(data).__name__}."
        )
    train = subset(data.train, train_size, seed)
    valid = subset(data.valid, valid_size, seed + 1)
    in_channels, height, width = data.image_shape
    n_classes = data.n_classes
    settings = {
        "strategy": strategy,
        "models": models,
        "epochs": epochs,
        "n_blocks": n_blocks,
        "n_cells": n_cells,
        "n_stacks": n_stacks,
        "channels": channels,
        "stem_stride": stem_stride,
        "train_size": len(train),
        "valid_size": len(valid),
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "beam": beam,
        "initial": initial,
        "strategy_options": dict(strategy_options or {}),
        "data": data.name,
    }
    key_settings = (
        data.name,
        len(train),
        len(valid),
        epochs,
        n_cells,
        n_stacks,
        channels,
        stem_stride,
        lr,
        batch_size,
        seed,
    )
    records: list[NASRecord] = []
    started = time.perf_counter()

    def record(rec: NASRecord, notify: bool = True) -> None:
        records.append(rec)
        if notify and callback is not None:
            callback(rec)

    def train_fn(
        model: nn.Module,
        train_split: ImageSplit,
        valid_split: ImageSplit,
        epochs: int,
        seed: int,
    ) -> float:
        return train_and_score(
            model,
            train_split,
            valid_split,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
        )

    def evaluate(
        genotype: Genotype, extra: dict[str, Any] | None = None, notify: bool = True
    ) -> float:
        genotype = genotype.canonical()
        key = (key_settings, genotype)
        hit = cache.get(key) if cache is not None else None
        if hit is None:
            t0 = time.perf_counter()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = CellNetwork(
                    genotype,
                    n_cells,
                    n_stacks,
                    channels,
                    n_classes,
                    in_channels,
                    stem_stride,
                )
            accuracy = train_fn(net, train, valid, epochs, seed)
            hit = {
                "accuracy": accuracy,
                "params": count_params(net),
                "flops": count_flops(net, (in_channels, height, width)),
                "seconds": time.perf_counter() - t0,
            }
            if cache is not None:
                cache[key] = hit
            cached = False
        else:
            cached = True
        record(
            NASRecord(
                index=len(records) + 1,
                description=genotype.describe(),
                accuracy=hit["accuracy"],
                params=hit["params"],
                flops=hit["flops"],
                seconds=hit["seconds"],
                genotype=genotype,
                n_blocks=genotype.n_blocks,
                cached=cached,
                extra=dict(extra or {}),
            ),
            notify,
        )
        return hit["accuracy"]

    if strategy == "pnas":
        from modelyard.search._pnas import pnas_search

        def evaluate_pnas(genotype: Genotype) -> float:
            return evaluate(genotype, notify=False)  # annotate notifies

        def annotate(rec: Any) -> None:  # PNAS's record of the model just trained
            records[-1].extra.update(round=rec.round, predicted=rec.predicted)
            if callback is not None:
                callback(records[-1])

        pnas_search(
            evaluate_pnas,
            n_blocks,
            beam=beam,
            budget=models,
            initial=initial,
            seed=seed,
            callback=annotate,
            **dict(strategy_options or {}),
        )
    elif strategy == "morphism":
        try:
            from modelyard.search._conv_morphism import morphism_search
        except ImportError as error:
            raise ImportError(
                NO_MORPHISM.format(
                    error=error, known=[k for k in known if k != "morphism"]
                )
            ) from error

        def train_raw(
            model: nn.Module,
            train_split: ImageSplit,
            valid_split: ImageSplit,
            epochs: int,
            seed: int,
        ) -> float:
            # morphism's ConvNet standardizes its [0, 1] input itself
            return train_and_score(
                model,
                train_split,
                valid_split,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                standardize=False,
            )

        results = morphism_search(
            train,
            valid,
            models=models,
            epochs=epochs,
            seed=seed,
            n_classes=n_classes,
            train_fn=train_raw,
            **dict(strategy_options or {}),
        )
        elapsed = 0.0
        for i, r in enumerate(results):
            wall = float(
                r["seconds"]
            )  # morphism_search reports seconds since its start
            record(
                NASRecord(
                    index=i + 1,
                    description=str(r.get("description", "")),
                    accuracy=float(r["accuracy"]),
                    params=int(r["params"]),
                    flops=int(r["flops"]),
                    seconds=wall - elapsed,
                    inherited=bool(r.get("inherited", False)),
                    extra={
                        "wall_seconds": wall,
                        **{
                            k: v
                            for k, v in r.items()
                            if k
                            not in (
                                "accuracy",
                                "seconds",
                                "params",
                                "flops",
                                "description",
                                "inherited",
                            )
                        },
                    },
                )
            )
            elapsed = wall
    else:
        _run_optuna(strategy, strategy_options, n_blocks, models, seed, evaluate)
    return NASResult(strategy, records, settings, time.perf_counter() - started)


def _run_optuna(
    strategy: str,
    options: Mapping[str, Any] | None,
    n_blocks: int,
    models: int,
    seed: int,
    evaluate: Callable[..., float],
) -> None:
    """Drive a registered strategy's sampler over ``cell_space(n_blocks)`` with ask and tell."""
    import optuna

    from modelyard.search._strategies import resolve_strategy

    space = cell_space(n_blocks)
    sampler = resolve_strategy(strategy, **dict(options or {})).make_sampler(
        space, seed, 1
    )
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for _ in range(models):
            trial = study.ask()
            genotype = Genotype.from_params(space.suggest(trial), n_blocks)
            study.tell(trial, evaluate(genotype, {"trial": trial.number}))
    finally:
        optuna.logging.set_verbosity(verbosity)


# -- the best network as JSON --------------------------------------------------------------------


def cell_architecture(
    record: NASRecord,
    settings: Mapping[str, Any],
    *,
    image_shape: tuple[int, int, int],
    n_classes: int,
    input_mean: float = 0.0,
    input_std: float = 1.0,
) -> dict[str, Any]:
    """The architecture of a cell record of a :func:`nas` run as plain JSON data.

    ``{"kind": "cell", "genotype": [[input1, op1, input2, op2], ...], "n_cells", "n_stacks",
    "channels", "stem_stride", "n_classes", "image_shape": [C, H, W], "input_mean",
    "input_std"}``: :class:`NASNetwork` rebuilds the (untrained) network from it. The
    network shape comes from the run's ``settings`` (:attr:`NASResult.settings`);
    ``input_mean`` and ``input_std`` standardize the ``[0, 1]`` pixels, as
    :func:`train_and_score` does with the training images' statistics.

    Raises
    ------
    ValueError
        For a record without a genotype (network morphism: use the trained
        ``ConvNet``'s ``config`` with ``kind: "convnet"`` instead).
    """
    if record.genotype is None:
        raise ValueError(
            f"NAS record {record.index} has no cell genotype (a network-morphism model); describe it "
            "as {'kind': 'convnet', 'network': ConvNet.config, ...} instead."
        )
    return {
        "kind": "cell",
        "genotype": [list(b) for b in record.genotype.blocks],
        "n_cells": int(settings["n_cells"]),
        "n_stacks": int(settings["n_stacks"]),
        "channels": int(settings["channels"]),
        "stem_stride": int(settings["stem_stride"]),
        "n_classes": int(n_classes),
        "image_shape": [int(v) for v in image_shape],
        "input_mean": float(input_mean),
        "input_std": float(input_std),
    }


class NASNetwork(nn.Module):
    """A searched network that takes pixels ``(N, C, H, W)`` in ``[0, 1]`` and returns logits.

    It standardizes the pixels with ``input_mean`` and ``input_std`` (buffers), then runs
    the network its ``architecture`` describes, so a saved model needs only its weights
    and that JSON:

    * ``kind: "cell"``: a :class:`CellNetwork` (see :func:`cell_architecture`);
    * ``kind: "convnet"``: network morphism's ``ConvNet`` of ``architecture["network"]``
      (its ``config``; it standardizes its input itself, so ``input_mean`` 0 and
      ``input_std`` 1), with ``image_shape`` and ``n_classes``.

    The cell network is built first thing after the buffers, so under
    ``torch.manual_seed(seed)`` it gets the initialization :func:`nas` gave it.

    Raises
    ------
    SpecError
        On an unknown ``kind`` or a missing or invalid field.
    """

    def __init__(self, architecture: Mapping[str, Any]) -> None:
        super().__init__()
        try:
            arch = json.loads(json.dumps(dict(architecture)))  # a plain copy; also checks it is JSON
            kind = arch.get("kind")
            shape = tuple(int(v) for v in arch["image_shape"])
            mean, std = float(arch.get("input_mean", 0.0)), float(arch.get("input_std", 1.0))
        except (TypeError, ValueError, KeyError) as exc:
            raise SpecError(f"Invalid NAS architecture ({exc!r}); it needs kind, image_shape and the network.") from None
        if len(shape) != 3 or not std > 0:
            raise SpecError(f"Invalid NAS architecture: image_shape must be [C, H, W] and input_std > 0; "
                            f"got {arch.get('image_shape')} and {std}.")
        self.architecture = arch
        self.image_shape = shape
        self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32))
        try:
            if kind == "cell":
                self.net: nn.Module = CellNetwork(
                    Genotype(arch["genotype"]), int(arch["n_cells"]), int(arch["n_stacks"]),
                    int(arch["channels"]), int(arch["n_classes"]), shape[0], int(arch["stem_stride"]),
                )
            elif kind == "convnet":
                from modelyard.search._conv_morphism import ConvNet

                config = dict(arch["network"])
                config["skips"] = [tuple(s) for s in config.get("skips", [])]
                self.net = ConvNet(**config)
                _pin_skips(self.net)
            else:
                raise SpecError(f"Invalid NAS architecture: unknown kind {kind!r}; use 'cell' or 'convnet'.")
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"Invalid NAS architecture of kind {kind!r}: {exc!r}.") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes)`` of pixels ``(N, C, H, W)`` in ``[0, 1]``."""
        return self.net((x - self.input_mean) / self.input_std)


@functools.cache
def _pinned_skip() -> type[nn.Module]:
    from modelyard.search._conv_morphism import ConvSkip

    class PinnedSkip(ConvSkip):
        """A morphism skip that pools to a constant size: the network's input size is fixed, so ONNX export
        sees no shape computed from a tensor (which ``adaptive_avg_pool2d`` cannot export)."""

        target: tuple[int, int]
        resize: bool

        def forward(self, h: torch.Tensor, size: Any) -> torch.Tensor:
            if self.resize:
                h = nn.functional.adaptive_avg_pool2d(h, self.target)  # (B, C_from, H_to, W_to)
            return self.proj(h)  # (B, C_to_in, H_to, W_to)

    return PinnedSkip


def _pin_skips(net: nn.Module) -> None:
    """Give each skip of a morphism ``ConvNet`` its source and target sizes (same parameters, same outputs)."""
    pools = [bool(b.pooled) for b in net.blocks]
    height, width = net.image_size
    for skip in net.skips:
        to, source = sum(pools[: skip.to_layer]), sum(pools[: skip.from_layer + 1])
        skip.__class__ = _pinned_skip()
        skip.target = (height >> to, width >> to)
        skip.resize = (height >> source, width >> source) != skip.target
