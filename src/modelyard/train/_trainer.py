"""A seeded, deterministic trainer for torch modules on tabular columns or images."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from modelyard.data._schema import encode_frame
from modelyard.data._image import ImageSplit
from modelyard.data._tabular import TabularSplit
from modelyard.errors import SchemaMismatchError

__all__ = ["EpochCallback", "LossHook", "Trainer"]

Split = TabularSplit | ImageSplit

#: ``callback(epoch, max_epochs, logs)``: called after every epoch (``epoch`` counts from 1).
EpochCallback = Callable[[int, int, dict[str, float]], None]

#: ``loss_hook(out, idx) -> scalar tensor``: a penalty added to each training batch's loss.
LossHook = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Trainer:
    """Mini-batch AdamW training with early stopping on the validation loss.

    The loss is cross-entropy for classifiers (the module returns logits
    ``(B, n_classes)``) and mean squared error for regression (values ``(B,)``).
    After each epoch the validation loss is computed in eval mode; when it has not
    fallen below the best one by more than ``min_delta`` for ``patience`` epochs,
    training stops. The weights of the best epoch are restored in every case.

    Parameters
    ----------
    max_epochs : int, default=40
        Upper bound on the number of passes over the training split.
    batch_size : int, default=256
        Rows per optimizer step.
    lr : float, default=1e-3
        AdamW learning rate.
    weight_decay : float, default=1e-4
        AdamW's decoupled weight decay.
    patience : int, default=5
        Epochs without improvement before stopping.
    min_delta : float, default=0.0
        An epoch improves only if its validation loss is below the best minus this.
    seed : int, default=0
        Seeds a local :class:`torch.Generator` (shuffling) and, inside a forked RNG
        state that is restored afterwards, torch's global generator (dropout). The
        same seed on the same module gives bit-identical weights.
    eval_batch_size : int, default=8192
        Rows per forward pass when computing the validation loss.
    num_threads : int or None, default=1
        Torch intra-op threads while fitting, restored afterwards; ``None`` keeps
        torch's setting. Small tabular batches gain nothing from a second thread (an
        Adult epoch took 0.39 s on one thread or two on an idle 2-core machine), while
        two threads stall when other processes share the cores (0.77 s against
        0.45 s per epoch, and one whole fit 143 s against 7 s, measured here).
    callback : callable or None, default=None
        ``callback(epoch, max_epochs, logs)`` after each epoch, with ``logs`` holding
        ``train_loss``, ``valid_loss`` and, for classifiers, ``valid_accuracy``. The
        pipeline drives its progress bar with it; the trainer itself prints nothing.

    Attributes
    ----------
    history_ : dict of str to list of float
        Per-epoch ``train_loss``, ``valid_loss`` and (classifiers) ``valid_accuracy``;
        entry ``i`` is epoch ``i + 1``.
    best_epoch_ : int
        The epoch (from 1) whose weights were restored.
    best_valid_loss_ : float
        Its validation loss.
    n_epochs_ : int
        Epochs run.
    stopped_early_ : bool
        Whether patience ran out before ``max_epochs``.
    fit_time_s_ : float
        Wall-clock seconds spent in :meth:`fit`.
    """

    def __init__(
        self,
        *,
        max_epochs: int = 40,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        patience: int = 5,
        min_delta: float = 0.0,
        seed: int = 0,
        eval_batch_size: int = 8192,
        num_threads: int | None = 1,
        callback: EpochCallback | None = None,
    ) -> None:
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.min_delta = min_delta
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.num_threads = num_threads
        self.callback = callback

    # -- validation ---------------------------------------------------------------------
    def _check_params(self) -> None:
        for name in ("max_epochs", "batch_size", "patience", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Trainer {name} must be a positive integer; got {value!r}.")
        for name in ("lr", "weight_decay", "min_delta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Trainer {name} must be a finite number >= 0; got {value!r}.")
        if self.lr == 0:
            raise ValueError("Trainer lr must be > 0; got 0.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"Trainer seed must be an integer >= 0; got {self.seed!r}.")
        if self.num_threads is not None and (
            not isinstance(self.num_threads, int) or isinstance(self.num_threads, bool) or self.num_threads < 1
        ):
            raise ValueError(f"Trainer num_threads must be a positive integer or None; got {self.num_threads!r}.")
        if self.callback is not None and not callable(self.callback):
            raise TypeError(f"Trainer callback must be callable(epoch, max_epochs, logs); got {self.callback!r}.")

    # -- fitting ------------------------------------------------------------------------
    def fit(
        self,
        module: nn.Module,
        train: Split,
        valid: Split,
        *,
        sample_weight: np.ndarray | None = None,
        loss_hook: LossHook | None = None,
    ) -> Trainer:
        """Train ``module`` in place on ``train``, early-stopping on ``valid``.

        Parameters
        ----------
        module : torch.nn.Module
            For tabular splits, takes ``(x_num, x_cat)`` as encoded by
            :func:`modelyard.data.encode_frame`; for image splits, one float32 batch
            ``(B, C, H, W)`` of pixels scaled to ``[0, 1]``. Returns logits
            ``(B, n_classes)`` or values ``(B,)``.
        train, valid : TabularSplit or ImageSplit
            Training rows and the validation rows that decide early stopping; both
            must share one schema (tabular) or image shape (images).
        sample_weight : array of shape (len(train),) or None, default=None
            Non-negative weight per training row (for example reweighing's
            ``P(g) P(y) / P(g, y)``); each batch's loss is then the weighted mean
            ``sum(w * loss) / sum(w)``. The validation loss stays unweighted.
        loss_hook : callable or None, default=None
            ``loss_hook(out, idx) -> scalar tensor`` added to each training batch's loss,
            where ``out`` is the module's output for the batch and ``idx`` the batch's row
            positions in ``train`` (a penalty such as MinDiff's MMD looks up the rows'
            groups by them). Not applied to the validation loss.

        Returns
        -------
        Trainer
            ``self``, with the fitted attributes set; ``module`` holds the best weights.
        """
        self._check_params()
        _check_pair(train, valid)
        if len(train) == 0 or len(valid) == 0:
            raise ValueError(
                f"Training needs rows in both splits; got {len(train)} train and {len(valid)} valid rows."
            )
        start = time.perf_counter()
        classify = _classify(train)
        x_tr, y_tr = _tensors(train, classify)
        x_va, y_va = _tensors(valid, classify)
        w_tr = _weights(sample_weight, len(y_tr))
        if loss_hook is not None and not callable(loss_hook):
            raise TypeError(f"loss_hook must be callable(out, idx) -> tensor; got {loss_hook!r}.")

        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        history: dict[str, list[float]] = {"train_loss": [], "valid_loss": []}
        if classify:
            history["valid_accuracy"] = []
        best_loss, best_epoch, best_state, wait = math.inf, 0, None, 0
        n = len(y_tr)
        stopped = False
        # Dropout draws from torch's global generator: seed it inside a forked state, so
        # training is reproducible and the caller's global RNG is left as it was.
        with _threads(self.num_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for epoch in range(1, self.max_epochs + 1):
                module.train()
                order = torch.randperm(n, generator=generator)  # (n,)
                total = 0.0
                for lo in range(0, n, self.batch_size):
                    idx = order[lo : lo + self.batch_size]  # (b,)
                    out = module(*(x[idx] for x in x_tr))  # (b, n_classes) or (b,)
                    if w_tr is None:
                        loss = _loss(out, y_tr[idx], classify)
                    else:
                        w = w_tr[idx]  # (b,)
                        loss = (_loss(out, y_tr[idx], classify, reduction="none") * w).sum() / w.sum().clamp_min(1e-12)
                    if loss_hook is not None:
                        loss = loss + loss_hook(out, idx)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(idx)
                train_loss = total / n
                valid_loss, valid_acc = self._evaluate(module, x_va, y_va, classify)
                history["train_loss"].append(train_loss)
                history["valid_loss"].append(valid_loss)
                logs = {"train_loss": train_loss, "valid_loss": valid_loss}
                if classify:
                    history["valid_accuracy"].append(valid_acc)
                    logs["valid_accuracy"] = valid_acc
                if not math.isfinite(train_loss) or not math.isfinite(valid_loss):
                    raise FloatingPointError(
                        f"Training diverged at epoch {epoch} (train loss {train_loss}, valid loss {valid_loss}); "
                        "lower the learning rate."
                    )
                if valid_loss < best_loss - self.min_delta:
                    best_loss, best_epoch, wait = valid_loss, epoch, 0
                    best_state = copy.deepcopy(module.state_dict())
                else:
                    wait += 1
                if self.callback is not None:
                    self.callback(epoch, self.max_epochs, logs)
                if wait >= self.patience:
                    stopped = epoch < self.max_epochs
                    break
        assert best_state is not None  # the first epoch always improves on +inf
        module.load_state_dict(best_state)
        module.eval()
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.best_valid_loss_ = best_loss
        self.n_epochs_ = len(history["valid_loss"])
        self.stopped_early_ = stopped
        self.fit_time_s_ = time.perf_counter() - start
        return self

    @torch.no_grad()
    def _evaluate(
        self, module: nn.Module, xs: tuple[torch.Tensor, ...], y: torch.Tensor, classify: bool
    ) -> tuple[float, float]:
        """Mean loss (summed in float64 over batches) and accuracy, in eval mode."""
        module.eval()
        loss_sum, correct = 0.0, 0
        for lo in range(0, len(y), self.eval_batch_size):
            sl = slice(lo, lo + self.eval_batch_size)
            out = module(*(x[sl] for x in xs))  # (b, n_classes) or (b,)
            loss_sum += float(_loss(out, y[sl], classify, reduction="sum"))
            if classify:
                correct += int((out.argmax(dim=1) == y[sl]).sum())
        return loss_sum / len(y), (correct / len(y) if classify else math.nan)

    def evaluate(self, module: nn.Module, split: Split) -> dict[str, float]:
        """Loss (and accuracy for classifiers) of ``module`` on ``split``, as computed during :meth:`fit`."""
        self._check_params()
        classify = _classify(split)
        xs, y = _tensors(split, classify)
        loss, acc = self._evaluate(module, xs, y, classify)
        return {"loss": loss, "accuracy": acc} if classify else {"loss": loss}

    def __repr__(self) -> str:
        params: dict[str, Any] = {k: v for k, v in vars(self).items() if not k.endswith("_")}
        return f"Trainer({', '.join(f'{k}={v!r}' for k, v in params.items())})"


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, restoring the previous count."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _classify(split: Split) -> bool:
    return isinstance(split, ImageSplit) or split.schema.task != "regression"


def _check_pair(train: Split, valid: Split) -> None:
    if type(train) is not type(valid) or not isinstance(train, (TabularSplit, ImageSplit)):
        raise TypeError(
            f"train and valid must both be TabularSplit or both ImageSplit; got {type(train).__name__} "
            f"and {type(valid).__name__}."
        )
    if isinstance(train, TabularSplit) and train.schema != valid.schema:
        raise SchemaMismatchError(
            "The train and valid splits have different schemas; split one data set so they share its schema."
        )
    if isinstance(train, ImageSplit) and train.image_shape != valid.image_shape:
        raise SchemaMismatchError(
            f"The train images are {train.image_shape} and the valid ones {valid.image_shape}; "
            "use splits of one image data set."
        )


def image_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 pixels ``(N, C, H, W)`` as float32 in ``[0, 1]``: what image modules take."""
    return torch.from_numpy(x).to(torch.float32).div_(255.0)


def _tensors(split: Split, classify: bool) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """The module's inputs and the targets of a split."""
    if isinstance(split, ImageSplit):
        return (image_tensor(split.x),), torch.from_numpy(split.y.copy())
    x_num, x_cat = encode_frame(split.X, split.schema)
    y = torch.from_numpy(np.array(split.y, dtype=np.int64 if classify else np.float32))  # a writable copy
    return (torch.from_numpy(x_num), torch.from_numpy(x_cat)), y


def _weights(sample_weight: np.ndarray | None, n: int) -> torch.Tensor | None:
    """Validated per-row training weights as a float32 tensor, or None."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if len(w) != n:
        raise ValueError(f"sample_weight has {len(w)} values but the train split has {n} rows; pass one per row.")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("sample_weight must be finite, non-negative and not all zero.")
    return torch.from_numpy(w.astype(np.float32))


def _loss(out: torch.Tensor, y: torch.Tensor, classify: bool, reduction: str = "mean") -> torch.Tensor:
    if classify:
        return F.cross_entropy(out, y, reduction=reduction)
    return F.mse_loss(out.reshape(-1), y, reduction=reduction)
