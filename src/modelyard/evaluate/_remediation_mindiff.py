"""MinDiff: a maximum-mean-discrepancy penalty between groups' score distributions.

TensorFlow Model Remediation's MinDiff (Prost, Qian, Chen, Chi, Chen & Beutel, 2019)
adds to the task loss ``weight * MMD^2`` between the model's scores on two groups of
examples, usually restricted to the negative label so that the groups' false-positive
behaviour is aligned. It exists there for Keras only; this is the same penalty as a
loss hook of :class:`modelyard.train.Trainer` (``fit(..., loss_hook=MinDiffPenalty(...))``).

The MMD uses a Gaussian kernel ``k(a, b) = exp(-(a - b)^2 / (2 bandwidth^2))`` on the
positive-class probability and the biased (V-statistic) estimator

    MMD^2 = mean k(A, A) + mean k(B, B) - 2 mean k(A, B),

which is exactly 0 when the two samples are equal as multisets and positive otherwise
(the Gaussian kernel is characteristic). With more than two groups the penalty is the
sum over groups of the MMD between that group and all the other rows.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MinDiffPenalty", "mmd_penalty"]


def mmd_penalty(a: torch.Tensor, b: torch.Tensor, *, bandwidth: float = 0.1) -> torch.Tensor:
    """Biased squared MMD between two 1-D samples ``a`` (n,) and ``b`` (m,) under a Gaussian kernel.

    Differentiable in both inputs; 0 for identical samples; returns a zero tensor when
    either sample is empty.
    """
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0; got {bandwidth!r}.")
    a, b = a.reshape(-1), b.reshape(-1)
    if a.numel() == 0 or b.numel() == 0:
        return (a.sum() + b.sum()) * 0.0  # keeps the graph and the dtype
    scale = -0.5 / bandwidth**2

    def mean_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.exp(scale * (x[:, None] - y[None, :]) ** 2).mean()  # (n, m) -> scalar

    return (mean_kernel(a, a) + mean_kernel(b, b) - 2.0 * mean_kernel(a, b)).clamp_min(0.0)


class MinDiffPenalty:
    """A :class:`~modelyard.train.Trainer` loss hook: ``weight * MMD^2`` between groups' scores in each batch.

    Parameters
    ----------
    groups : array of shape (n_train,)
        The sensitive value of every training row, in the train split's order.
    y : array of shape (n_train,)
        The training labels (class indices); needed when ``label`` is not None.
    weight : float, default=1.5
        Multiplies the MMD (TF Model Remediation's ``min_diff_weight``, default 1.5 in its
        tutorial).
    bandwidth : float, default=0.1
        The Gaussian kernel's bandwidth on probabilities in [0, 1].
    label : int or None, default=0
        Compare only rows with this label (0: negatives, as TF Model Remediation
        recommends, which targets the false-positive rate gap); None compares all rows.

    The hook is called as ``hook(out, idx)`` with the batch's logits ``(b, 2)`` (or one
    logit per row) and row positions; a batch with fewer than two rows in a compared set
    contributes 0.
    """

    def __init__(
        self,
        groups: np.ndarray,
        y: np.ndarray | None = None,
        *,
        weight: float = 1.5,
        bandwidth: float = 0.1,
        label: int | None = 0,
    ) -> None:
        groups = np.asarray(groups)
        if groups.ndim != 1:
            raise ValueError(f"groups must be 1-D (one value per training row); got shape {groups.shape}.")
        _, codes = np.unique(groups, return_inverse=True)
        self.n_groups = int(codes.max()) + 1 if len(codes) else 0
        if self.n_groups < 2:
            raise ValueError("MinDiff needs at least two groups in the training rows; the sensitive column has one.")
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0; got {weight!r}.")
        if not bandwidth > 0:
            raise ValueError(f"bandwidth must be > 0; got {bandwidth!r}.")
        keep = np.ones(len(groups), dtype=bool)
        if label is not None:
            if y is None:
                raise ValueError("MinDiffPenalty(label=...) needs the training labels y; pass y or label=None.")
            y = np.asarray(y).reshape(-1)
            if len(y) != len(groups):
                raise ValueError(f"y has {len(y)} rows but groups has {len(groups)}; pass one of each per row.")
            keep = y == label
        self.codes = torch.from_numpy(np.where(keep, codes, -1).astype(np.int64))  # -1: not compared
        self.weight, self.bandwidth, self.label = float(weight), float(bandwidth), label

    def __call__(self, out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if out.ndim == 2 and out.shape[1] >= 2:
            score = torch.softmax(out, dim=1)[:, -1]  # (b,) probability of the last (positive) class
        else:
            score = torch.sigmoid(out.reshape(-1))  # one logit per row
        codes = self.codes[idx]  # (b,)
        total = score.sum() * 0.0
        pairs = [0] if self.n_groups == 2 else range(self.n_groups)  # two groups: one comparison
        for g in pairs:
            a, b = score[codes == g], score[(codes >= 0) & (codes != g)]
            if a.numel() >= 2 and b.numel() >= 2:
                total = total + mmd_penalty(a, b, bandwidth=self.bandwidth)
        return self.weight * total
