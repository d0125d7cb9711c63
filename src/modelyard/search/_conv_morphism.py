"""Network morphism for CNNs, and morphism as a search strategy (hill climbing with weight inheritance).

Wei, Wang, Rui & Chen, "Network Morphism", ICML 2016 (arXiv:1603.01670); the
Net2WiderNet / Net2DeeperNet operators of Chen, Goodfellow & Shlens, "Net2Net", ICLR
2016 (arXiv:1511.05641); the search loop of Elsken, Metzen & Hutter, "Simple and
efficient architecture search for Convolutional Neural Networks" (NASH, arXiv:1711.04528).

The network is a plain :class:`ConvNet`: fixed input normalization, blocks ``conv
(stride 1, "same" padding) -> ReLU -> optional 2x2 max pool``, optional skip connections
(a 1x1 projection of one block's output added to a later block's input), and a linear
head on the flattened last feature map. It has no batch normalization and no dropout,
so every transform below keeps the function **exactly** (up to float32 rounding) in
training and in eval mode alike, and the child's first training step starts from
precisely its parent's function:

* :func:`widen_conv` -- Net2WiderNet: channels copied, outgoing weights divided by the
  copy count (with optional function-preserving noise that breaks the copies' symmetry);
* :func:`deepen_conv` -- an identity-initialized ``conv -> ReLU`` block after a block,
  exact because the block's output is already ``>= 0`` (ReLU, then max pooling) and
  ``ReLU(x) = x`` there;
* :func:`add_skip_conv` -- a zero-initialized 1x1 projection skip;
* :func:`widen_kernel` -- a ``k x k`` kernel zero-padded to ``k' x k'`` (padding grows
  with it, so every output sees the same taps times the same weights plus zeros).

Each returns a new module; the parent is deep-copied, never changed.
:func:`morphism_search` is NASH's hill climbing: each round makes children of the current
parent by one to three random transforms, trains them briefly from the inherited weights
(and the parent a little further), and makes the round's best the next parent.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from modelyard.search._morphism import _set_weights
from modelyard.search._objectives import module_flops

__all__ = [
    "ConvBlock",
    "ConvNet",
    "ConvSkip",
    "add_skip_conv",
    "count_flops",
    "count_params",
    "deepen_conv",
    "evaluate_accuracy",
    "morphism_search",
    "random_morphism",
    "train_convnet",
    "widen_conv",
    "widen_kernel",
]

#: ``train_fn(model, train, valid, epochs, seed) -> validation accuracy``; trains ``model`` in place.
TrainFn = Callable[[nn.Module, Any, Any, int, int], float]


# -- the network -----------------------------------------------------------------------


def _check_kernel(kernel_size: int, what: str = "kernel_size") -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise TypeError(f"{what} must be an int; got {kernel_size!r}.")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"{what}={kernel_size} must be a positive odd number: 'same' padding needs a center tap."
        )


class ConvBlock(nn.Module):
    """``Conv2d(k x k, stride 1, padding k // 2) -> ReLU -> MaxPool2d(2)`` (the pool only if ``pool``).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int, default=3
        Odd, so that "same" padding keeps the spatial size.
    pool : bool, default=False
        Halve height and width after the ReLU.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, pool: bool = False
    ) -> None:
        super().__init__()
        _check_kernel(kernel_size)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2
        )
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()

    @property
    def pooled(self) -> bool:
        return isinstance(self.pool, nn.MaxPool2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv(x)))  # (B, C_in, H, W) -> (B, C_out, H', W')


class ConvSkip(nn.Module):
    """Block ``from_layer``'s output, projected by a 1x1 conv, added to the input of layer ``to_layer``.

    When the source is larger than the receiving input (pooling lies between them) it is
    first average-pooled to the receiving size (``adaptive_avg_pool2d``).

    Parameters
    ----------
    from_layer : int
        Source block; its output (after ReLU and pooling) is projected.
    to_layer : int
        Receiving block; ``to_layer == number of blocks`` means the feature map that is
        flattened for the head.
    in_channels, out_channels : int
        Channels of the source and of the receiving input.
    zero : bool, default=True
        Zero-initialize the projection (a morphism); ``False`` keeps PyTorch's default
        initialization (a network built from scratch).
    """

    def __init__(
        self,
        from_layer: int,
        to_layer: int,
        in_channels: int,
        out_channels: int,
        *,
        zero: bool = True,
    ) -> None:
        super().__init__()
        self.from_layer = from_layer
        self.to_layer = to_layer
        self.proj = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        if zero:
            nn.init.zeros_(self.proj.weight)  # the parent's function is unchanged

    def extra_repr(self) -> str:
        return f"from_layer={self.from_layer}, to_layer={self.to_layer}"

    def forward(self, h: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(h.shape[-2:]) != tuple(size):
            h = F.adaptive_avg_pool2d(h, tuple(size))  # (B, C_from, H_to, W_to)
        return self.proj(h)  # (B, C_to_in, H_to, W_to)


class ConvNet(nn.Module):
    """A plain CNN: input normalization, conv blocks, optional projection skips, a linear head on the flattened features.

    ``forward`` takes images ``(B, C, H, W)`` of size ``image_size``: uint8 (first scaled
    to [0, 1] by dividing by 255, so an :class:`~modelyard.data.ImageSplit`'s pixels can
    be fed directly) or float (taken as already in [0, 1]); it then subtracts
    ``input_mean`` and divides by ``input_std`` and returns logits ``(B, n_classes)``.
    The head reads the flattened last feature map (a global average pool instead learns
    far more slowly without batch normalization: 0.45 against 0.79 validation accuracy
    after 3 epochs of Adam, cosine-decayed from 3e-3, on 3,000 Fashion-MNIST images).

    Parameters
    ----------
    in_channels : int, default=1
    n_classes : int, default=10
    channels : sequence of int, default=(8, 16)
        Output channels of each block.
    kernel_sizes : int or sequence of int, default=3
        Odd kernel size of every block, or one per block.
    pools : sequence of bool, optional
        Whether each block ends with a 2x2 max pool; default: the first two blocks pool.
    skips : sequence of (int, int), default=()
        ``(from_layer, to_layer)`` projection skips, ``to_layer >= from_layer + 2``
        (``to_layer == len(channels)`` is the feature map flattened for the head). Built
        this way they get PyTorch's default initialization, not zeros.
    image_size : (int, int), default=(28, 28)
        Height and width of the input; each pooling block halves them (rounding down).
    input_mean, input_std : float, default=0.0 and 1.0
        Normalization of the [0, 1]-scaled input (the same for every channel).
    seed : int, optional
        Seeds the initialization (without touching torch's global generator state).

    Attributes
    ----------
    blocks : nn.ModuleList of ConvBlock
    skips : nn.ModuleList of ConvSkip
    head : nn.Linear
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        channels: Sequence[int] = (8, 16),
        *,
        kernel_sizes: int | Sequence[int] = 3,
        pools: Sequence[bool] | None = None,
        skips: Sequence[tuple[int, int]] = (),
        image_size: Sequence[int] = (28, 28),
        input_mean: float = 0.0,
        input_std: float = 1.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        channels = list(channels)
        n = len(channels)
        if n == 0:
            raise ValueError("ConvNet needs at least one block: channels is empty.")
        for name, value in (("in_channels", in_channels), ("n_classes", n_classes), *(
            (f"channels[{i}]", c) for i, c in enumerate(channels)
        )):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}.")
        kernels = [kernel_sizes] * n if isinstance(kernel_sizes, int) else list(kernel_sizes)
        pools = [i < 2 for i in range(n)] if pools is None else [bool(p) for p in pools]
        if len(kernels) != n or len(pools) != n:
            raise ValueError(
                f"kernel_sizes ({len(kernels)}) and pools ({len(pools)}) need one entry per block ({n})."
            )
        height, width = (int(v) for v in image_size)
        out_h, out_w = height >> sum(pools), width >> sum(pools)
        if out_h < 1 or out_w < 1:
            raise ValueError(
                f"{sum(pools)} pooling blocks shrink a {height}x{width} image to nothing; pool fewer blocks."
            )
        if not input_std > 0:
            raise ValueError(f"input_std must be > 0; got {input_std!r}.")
        self.image_size = (height, width)
        self.register_buffer("input_mean", torch.tensor(float(input_mean)))
        self.register_buffer("input_std", torch.tensor(float(input_std)))
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            widths = [in_channels, *channels]
            self.blocks = nn.ModuleList(
                ConvBlock(widths[i], widths[i + 1], kernels[i], pools[i]) for i in range(n)
            )
            self.skips = nn.ModuleList()
            for src, dst in skips:
                _check_skip(self, src, dst)
                self.skips.append(
                    ConvSkip(src, dst, channels[src], channels[dst - 1], zero=False)
                )
            self.head = nn.Linear(channels[-1] * out_h * out_w, n_classes)

    @property
    def config(self) -> dict[str, Any]:
        """The architecture as keyword arguments: ``ConvNet(**net.config)`` rebuilds it, freshly initialized.

        ``ConvNet(**net.config).load_state_dict(net.state_dict())`` then restores the weights.
        """
        return {
            "in_channels": self.blocks[0].conv.in_channels,
            "n_classes": self.head.out_features,
            "channels": [b.conv.out_channels for b in self.blocks],
            "kernel_sizes": [b.conv.kernel_size[0] for b in self.blocks],
            "pools": [b.pooled for b in self.blocks],
            "skips": [(s.from_layer, s.to_layer) for s in self.skips],
            "image_size": self.image_size,
            "input_mean": float(self.input_mean),
            "input_std": float(self.input_std),
        }

    def describe(self) -> str:
        """One line, e.g. ``"3x3:8+pool 3x3:16+pool 5x5:16 skip0->2 -> 10"``."""
        parts = [
            f"{b.conv.kernel_size[0]}x{b.conv.kernel_size[0]}:{b.conv.out_channels}"
            + ("+pool" if b.pooled else "")
            for b in self.blocks
        ]
        parts += [f"skip{s.from_layer}->{s.to_layer}" for s in self.skips]
        return " ".join(parts) + f" -> {self.head.out_features}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"ConvNet takes images of shape (B, C, H, W); got shape {tuple(x.shape)}."
            )
        if x.dtype == torch.uint8:
            x = x.to(self.input_std.dtype) / 255.0  # (B, C, H, W) in [0, 1]
        x = (x - self.input_mean) / self.input_std
        n = len(self.blocks)
        outputs: list[torch.Tensor] = []
        h = x
        for j in range(n + 1):
            for s in self.skips:
                if s.to_layer == j:
                    h = h + s(outputs[s.from_layer], h.shape[-2:])  # (B, C_in_j, H_j, W_j)
            if j == n:
                break
            h = self.blocks[j](h)  # (B, C_j, H_j', W_j')
            outputs.append(h)
        return self.head(h.flatten(1))  # (B, C_last * H_last * W_last) -> (B, n_classes)


# -- layout helpers --------------------------------------------------------------------


def _net(net: nn.Module) -> ConvNet:
    if not isinstance(net, ConvNet):
        raise TypeError(f"Convolutional morphisms need a ConvNet; got {type(net).__name__}.")
    return net


def _check_index(index: int, top: int, what: str, n: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= top:
        raise IndexError(
            f"{what}={index!r} is out of range: valid indices are 0..{top} ({n} conv blocks)."
        )


def _input_channels(net: ConvNet, layer: int) -> int:
    """Channels entering block ``layer >= 1`` (the head's input for ``layer == number of blocks``)."""
    return net.blocks[layer - 1].conv.out_channels


def _check_skip(net: ConvNet, from_layer: int, to_layer: int) -> None:
    n = len(net.blocks)
    _check_index(from_layer, n - 1, "from_layer", n)
    _check_index(to_layer, n, "to_layer", n)
    if to_layer < from_layer + 2:
        raise ValueError(
            f"to_layer={to_layer} must be >= from_layer + 2 = {from_layer + 2}: block {from_layer + 1} "
            "already receives that output, so a skip must jump at least one block."
        )
    if any(s.from_layer == from_layer and s.to_layer == to_layer for s in net.skips):
        raise ValueError(f"A skip from block {from_layer} to block {to_layer} exists already.")


# -- transforms ------------------------------------------------------------------------


@torch.no_grad()
def widen_conv(
    net: ConvNet,
    layer: int,
    new_channels: int,
    *,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> ConvNet:
    """A copy of ``net`` whose block ``layer`` has ``new_channels`` output channels, same function.

    Net2WiderNet (Chen et al. 2016; the width morphism of Wei et al. 2016): channel
    ``j < old`` keeps itself, each new channel copies a uniformly drawn existing channel
    ``g(j)`` (its filter and bias), and every outgoing weight of a channel copied ``c``
    times is divided by ``c``: in the next block's conv (input dimension), or in the head
    when ``layer`` is the last block (the head's columns for all ``H x W`` positions of a
    channel), and in every skip projection leaving ``layer``. A skip projection *into*
    block ``layer + 1`` has its output channels copied like the channels it is added to.
    ReLU and max pooling act per channel, so the copies stay copies.

    Parameters
    ----------
    net : ConvNet
        The parent; not modified.
    layer : int
        Block to widen, ``0 <= layer < number of blocks``.
    new_channels : int
        Channels after widening; must exceed the current number.
    noise : float, default=0.0
        Function-preserving symmetry breaking: for each new channel, ``noise *
        std(outgoing weights) * N(0, 1)`` is added to its outgoing weights and subtracted
        from its source channel's (both compute the same activation, so the sum is
        unchanged). Without it the copies receive identical gradients forever.
    generator : torch.Generator, optional
        Draws the channel mapping and the noise (default: torch's global generator).

    Returns
    -------
    ConvNet

    Raises
    ------
    IndexError
        If ``layer`` is out of range.
    ValueError
        If ``new_channels`` does not exceed the current width, or ``noise < 0``.
    """
    n = len(_net(net).blocks)
    _check_index(layer, n - 1, "layer", n)
    old = net.blocks[layer].conv.out_channels
    if isinstance(new_channels, bool) or not isinstance(new_channels, int):
        raise TypeError(f"new_channels must be an int; got {new_channels!r}.")
    if new_channels <= old:
        raise ValueError(
            f"new_channels={new_channels} must be > the current {old} channels of block {layer}: "
            "widen_conv only grows a network (narrowing cannot keep the function)."
        )
    if noise < 0:
        raise ValueError(f"noise must be >= 0; got {noise}.")
    child = copy.deepcopy(net)
    conv = child.blocks[layer].conv
    extra = torch.randint(0, old, (new_channels - old,), generator=generator)  # (new - old,)
    g = torch.cat([torch.arange(old), extra])  # (new,) source channel of each channel
    counts = torch.bincount(g, minlength=old).to(conv.weight.dtype)  # (old,)
    _set_weights(conv, conv.weight[g], conv.bias[g] if conv.bias is not None else None)

    def outgoing(w: torch.Tensor) -> torch.Tensor:
        """Input channels (dim 1) copied, divided by the copy counts: (out, old, ...) -> (out, new, ...)."""
        w = w[:, g] / counts[g].reshape(1, -1, *([1] * (w.dim() - 2)))  # (out, new, ...)
        if noise > 0:
            eps = noise * w.std() * torch.randn(
                w.shape[0], new_channels - old, *w.shape[2:], generator=generator
            ).to(w)
            w[:, old:] += eps  # the new channels
            w.index_add_(1, extra, -eps)  # their sources: each pair's sum is unchanged
        return w

    if layer == n - 1:  # head columns: channel-major (C, H, W) flattening
        w = child.head.weight  # (K, old * H * W)
        w = outgoing(w.reshape(w.shape[0], old, -1))  # (K, new, H * W)
        _set_weights(child.head, w.reshape(w.shape[0], -1), None)  # (K, new * H * W)
    else:
        nxt = child.blocks[layer + 1].conv
        _set_weights(nxt, outgoing(nxt.weight), None)
    for s in child.skips:
        if s.from_layer == layer:
            _set_weights(s.proj, outgoing(s.proj.weight), None)  # (out, new, 1, 1)
        if s.to_layer == layer + 1:
            _set_weights(s.proj, s.proj.weight[g], None)  # (new, in, 1, 1)
    return child


@torch.no_grad()
def deepen_conv(
    net: ConvNet,
    after_layer: int,
    kernel_size: int = 3,
    *,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> ConvNet:
    """A copy of ``net`` with an identity ``conv -> ReLU`` block after block ``after_layer``, same function.

    Net2DeeperNet (Chen et al. 2016; the depth morphism of Wei et al. 2016): the new
    block's ``C x C x k x k`` kernel is zero except ``w[c, c, k // 2, k // 2] = 1``, its
    bias zero and it does not pool. Its input is block ``after_layer``'s output, which is
    ``ReLU`` (then possibly max pooling) and so ``>= 0``; the new block computes
    ``ReLU(x) = x`` on it. Skips keep their endpoints: one that entered block
    ``after_layer + 1`` still enters that (now shifted) block, so the new block never
    sees a skip's possibly negative sum.

    Parameters
    ----------
    net : ConvNet
        The parent; not modified.
    after_layer : int
        The new block goes after this block, ``0 <= after_layer < number of blocks``.
    kernel_size : int, default=3
        Odd kernel size of the new block.
    noise : float, default=0.0
        Standard deviation of Gaussian noise added to the identity kernel (Net2Net's
        symmetry breaking); with ``noise > 0`` the function changes by ``O(noise)``.
        The identity is not symmetric across channels, so the search leaves it at 0.
    generator : torch.Generator, optional
        Draws the noise.

    Returns
    -------
    ConvNet
    """
    n = len(_net(net).blocks)
    _check_index(after_layer, n - 1, "after_layer", n)
    _check_kernel(kernel_size)
    if noise < 0:
        raise ValueError(f"noise must be >= 0; got {noise}.")
    child = copy.deepcopy(net)
    ref = child.blocks[after_layer].conv.weight
    c = ref.shape[0]
    block = ConvBlock(c, c, kernel_size, pool=False).to(dtype=ref.dtype, device=ref.device)
    weight = torch.zeros(c, c, kernel_size, kernel_size, dtype=ref.dtype, device=ref.device)
    weight[torch.arange(c), torch.arange(c), kernel_size // 2, kernel_size // 2] = 1.0
    if noise > 0:
        weight += noise * torch.randn(weight.shape, generator=generator).to(weight)
    _set_weights(block.conv, weight, torch.zeros(c, dtype=ref.dtype, device=ref.device))
    block.train(child.training)
    blocks = list(child.blocks)
    blocks.insert(after_layer + 1, block)
    child.blocks = nn.ModuleList(blocks)
    for s in child.skips:  # endpoints past the insertion move one block up
        s.from_layer += s.from_layer > after_layer
        s.to_layer += s.to_layer > after_layer
    return child


@torch.no_grad()
def add_skip_conv(net: ConvNet, from_layer: int, to_layer: int) -> ConvNet:
    """A copy of ``net`` with a zero-initialized 1x1 projection skip, same function.

    The skip morphism of Wei et al. 2016 as a projection: block ``from_layer``'s output
    (average-pooled to the receiving size if pooling lies between), times a 1x1 kernel
    initialized to zero, is added to the input of block ``to_layer``. The output is
    unchanged, and the kernel's gradient (``dL/d input`` times the source) is generally
    nonzero, so the skip learns.

    Parameters
    ----------
    net : ConvNet
        The parent; not modified.
    from_layer : int
        Source block, ``0 <= from_layer < number of blocks``.
    to_layer : int
        Receiving block, ``from_layer + 2 <= to_layer <= number of blocks`` (the last
        value is the feature map flattened for the head).

    Returns
    -------
    ConvNet

    Raises
    ------
    IndexError
        If an index is out of range.
    ValueError
        If ``to_layer < from_layer + 2`` or that skip exists already.
    """
    _check_skip(_net(net), from_layer, to_layer)
    child = copy.deepcopy(net)
    ref = child.blocks[from_layer].conv.weight
    skip = ConvSkip(
        from_layer,
        to_layer,
        child.blocks[from_layer].conv.out_channels,
        _input_channels(child, to_layer),
    ).to(dtype=ref.dtype, device=ref.device)
    child.skips.append(skip.train(child.training))
    return child


@torch.no_grad()
def widen_kernel(net: ConvNet, layer: int, kernel_size: int = 5) -> ConvNet:
    """A copy of ``net`` whose block ``layer`` has a larger kernel, zero-padded, same function.

    The ``k x k`` kernel is placed in the center of a zero ``k' x k'`` kernel and the
    padding grows from ``k // 2`` to ``k' // 2``: every output position sees the same
    input taps with the same weights as before, plus taps weighted by zero.

    Parameters
    ----------
    net : ConvNet
        The parent; not modified.
    layer : int
        Block whose kernel grows, ``0 <= layer < number of blocks``.
    kernel_size : int, default=5
        Odd, larger than the current kernel size.

    Returns
    -------
    ConvNet
    """
    n = len(_net(net).blocks)
    _check_index(layer, n - 1, "layer", n)
    _check_kernel(kernel_size)
    old = net.blocks[layer].conv
    k = old.kernel_size[0]
    if kernel_size <= k:
        raise ValueError(
            f"kernel_size={kernel_size} must be > the current kernel size {k} of block {layer}."
        )
    child = copy.deepcopy(net)
    pad = (kernel_size - k) // 2
    conv = nn.Conv2d(
        old.in_channels, old.out_channels, kernel_size, padding=kernel_size // 2
    ).to(dtype=old.weight.dtype, device=old.weight.device)
    _set_weights(conv, F.pad(old.weight, (pad, pad, pad, pad)), old.bias.clone())
    child.blocks[layer].conv = conv.train(child.training)
    return child


def random_morphism(
    net: ConvNet,
    rng: random.Random,
    generator: torch.Generator | None = None,
    *,
    noise: float = 0.1,
    max_channels: int = 64,
    max_layers: int = 6,
    max_kernel: int = 5,
) -> tuple[ConvNet, str]:
    """Apply one function-preserving transform, drawn uniformly among those allowed.

    The kinds are widen (a random block to ``min(max_channels, ceil(1.5x or 2x))``
    channels), deepen (a 3x3 identity block after a random block), skip (a random new
    ``from -> to`` pair) and kernel (a random 3x3 block to 5x5); a kind is left out when
    the limits leave it no candidate.

    Parameters
    ----------
    net : ConvNet
        The parent; not modified.
    rng : random.Random
        Draws the kind and its arguments.
    generator : torch.Generator, optional
        Draws widen's channel mapping and noise.
    noise : float, default=0.1
        Passed to :func:`widen_conv` (function-preserving).
    max_channels, max_layers, max_kernel : int
        Growth limits.

    Returns
    -------
    child : ConvNet
    description : str
        What was done, e.g. ``"widen 1: 16->32"``.

    Raises
    ------
    ValueError
        If the limits allow no transform at all.
    """
    n = len(_net(net).blocks)
    widths = [b.conv.out_channels for b in net.blocks]
    kernels = [b.conv.kernel_size[0] for b in net.blocks]
    existing = {(s.from_layer, s.to_layer) for s in net.skips}
    options: dict[str, list[Any]] = {
        "widen": [i for i in range(n) if widths[i] < max_channels],
        "deepen": list(range(n)) if n < max_layers else [],
        "skip": [
            (i, j)
            for i in range(n)
            for j in range(i + 2, n + 1)
            if (i, j) not in existing
        ],
        "kernel": [i for i in range(n) if kernels[i] + 2 <= max_kernel],
    }
    kinds = [k for k, v in options.items() if v]
    if not kinds:
        raise ValueError(
            f"No morphism is possible within max_channels={max_channels}, max_layers={max_layers}, "
            f"max_kernel={max_kernel} for {net.describe()}."
        )
    kind = rng.choice(kinds)
    arg = rng.choice(options[kind])
    if kind == "widen":
        new = min(max_channels, math.ceil(widths[arg] * rng.choice([1.5, 2.0])))
        return (
            widen_conv(net, arg, new, noise=noise, generator=generator),
            f"widen {arg}: {widths[arg]}->{new}",
        )
    if kind == "deepen":
        return deepen_conv(net, arg), f"deepen after {arg}"
    if kind == "skip":
        return add_skip_conv(net, *arg), f"skip {arg[0]}->{arg[1]}"
    return widen_kernel(net, arg, kernels[arg] + 2), f"kernel {arg}: {kernels[arg]}->{kernels[arg] + 2}"


# -- measuring, training ---------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass on one input of shape ``input_shape`` (e.g. ``(1, 28, 28)``).

    :func:`modelyard.search.module_flops` (forward hooks on every ``Conv2d`` and
    ``Linear``, so skip projections count; activations, pooling and additions do not)
    on a zero image.
    """
    ref = next(model.parameters())
    return module_flops(model, torch.zeros(1, *input_shape, dtype=ref.dtype, device=ref.device))


def _tensors(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of an ImageSplit-like object or an ``(x, y)`` pair, as tensors; x gains a channel axis if 3-D."""
    if isinstance(split, (tuple, list)) and len(split) == 2:
        x, y = split
    elif hasattr(split, "x") and hasattr(split, "y"):
        x, y = split.x, split.y
    else:
        raise TypeError(
            f"Expected an ImageSplit (with .x and .y) or an (x, y) pair; got {type(split).__name__}."
        )
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).long()
    if x.dim() == 3:
        x = x.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    if x.dim() != 4 or len(x) != len(y):
        raise ValueError(
            f"Expected images (N, C, H, W) or (N, H, W) and N labels; got x {tuple(x.shape)}, y {tuple(y.shape)}."
        )
    return x, y


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, split: Any, *, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` (eval mode) on an ImageSplit or ``(x, y)`` pair."""
    x, y = _tensors(split)
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(y), 1)


def train_convnet(
    model: nn.Module,
    train: Any,
    valid: Any,
    epochs: int,
    seed: int,
    *,
    lr: float = 3e-3,
    batch_size: int = 128,
    schedule: Literal["constant", "cosine"] = "constant",
    threads: int | None = 1,
) -> float:
    """The default ``train_fn``: Adam on cross-entropy, then validation accuracy.

    The learning rate is constant by default, so that training a model ``a`` epochs and
    then (as an inherited child) ``b`` more is close to training it ``a + b`` epochs at
    once. Measured on 3,000 Fashion-MNIST images (seeds 0 and 1, ``ConvNet()``):
    constant 3e-3 gave 0.833/0.813 after 2 + 2 epochs against 0.836/0.826 after 4 in one
    go, and 0.843/0.839 after 2 + 2 + 2 against 0.846/0.833 after 6; a cosine decay to 0
    restarted at each call (NASH's SGDR) was worse both ways at these budgets (0.791/0.776
    after 2 + 2, 0.813/0.804 after 4).

    Parameters
    ----------
    model : nn.Module
        Trained in place; takes uint8 images (a :class:`ConvNet` scales them).
    train, valid : ImageSplit or (x, y)
    epochs : int
        Passes over ``train``; 0 only evaluates.
    seed : int
        Seeds the batch order.
    lr : float, default=3e-3
        Learning rate (3e-3 beat 1e-3 for fresh and continued training alike above).
    batch_size : int, default=128
    schedule : {"constant", "cosine"}, default="constant"
        ``"cosine"`` decays the rate to 0 over this call's steps.
    threads : int or None, default=1
        ``torch.set_num_threads`` while training (restored after); ``None`` leaves it.

    Returns
    -------
    float
        Accuracy on ``valid`` after training.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0; got {epochs!r}.")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine'; got {schedule!r}.")
    x, y = _tensors(train)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(seed)
        steps = epochs * math.ceil(len(y) / batch_size)
        if steps:
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            sched = (
                torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
                if schedule == "cosine"
                else None
            )
            model.train()
            for _ in range(epochs):
                order = torch.randperm(len(y), generator=g)
                for i in range(0, len(y), batch_size):
                    idx = order[i : i + batch_size]
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
        return evaluate_accuracy(model, valid)
    finally:
        torch.set_num_threads(previous)


# -- search ----------------------------------------------------------------------------


def morphism_search(
    train: Any,
    valid: Any,
    *,
    models: int,
    epochs: int,
    seed: int,
    n_classes: int,
    train_fn: TrainFn | None = None,
    from_scratch: bool = False,
    scratch_epochs: Literal["lineage", "same"] = "lineage",
    neighbors: int = 3,
    train_parent: bool = True,
    max_morphisms: int = 3,
    initial: ConvNet | None = None,
    noise: float = 0.1,
    max_channels: int = 64,
    max_layers: int = 6,
    stop_at: float | None = None,
    callback: Callable[[dict[str, Any], nn.Module], None] | None = None,
) -> list[dict[str, Any]]:
    """Architecture search by network morphism: hill climbing in which children inherit their parent's weights.

    NASH (Elsken et al. 2017, Algorithm 1) with the transforms of Wei et al. 2016: model 0
    (``initial``, default ``ConvNet(channels=(8, 16))`` normalized by the training
    pixels' mean and standard deviation) is trained for ``epochs``. Then, round after
    round, ``neighbors`` children are made from the round's parent, each by one to
    ``max_morphisms`` random function-preserving transforms (:func:`random_morphism`),
    and each is trained for ``epochs`` starting from the inherited weights, so it starts
    at its parent's accuracy; with ``train_parent`` a copy of the parent itself is also
    trained ``epochs`` more, so that a child is never preferred merely for having had
    more training. The round's best model (by validation accuracy) is the next round's
    parent, whether or not it beats an earlier round's: keeping an old score would let one
    lucky validation measurement stall the search. The search stops after ``models``
    trained models in all (or at ``stop_at``); the records hold every model, so the best
    of the whole search is their maximum.

    With ``from_scratch=True`` the same procedure re-initializes each child (and the
    parent's copy) before training: the baseline that weight inheritance is measured
    against. To make the comparison fair the scratch model gets, by default
    (``scratch_epochs="lineage"``), the epochs its inherited counterpart has effectively
    had: its parent's lineage epochs plus ``epochs`` (model 0 has ``epochs``; a child of
    model 0 gets ``2 * epochs``, a grandchild ``3 * epochs``, ...). ``"same"`` trains it
    for ``epochs`` only (cheaper, but each child then knows less than an inherited one).
    Both modes draw the same random transforms while their choices of parent agree.

    Parameters
    ----------
    train, valid : ImageSplit or (x, y)
        Images ``(N, C, H, W)`` (or ``(N, H, W)``), uint8 or float, and labels.
    models : int
        Models trained in all, model 0 included (>= 1).
    epochs : int
        Epochs per trained model (>= 1).
    seed : int
        Seeds the transforms, the initialization and each model's training (``seed + i``).
    n_classes : int
    train_fn : callable, optional
        ``train_fn(model, train, valid, epochs, seed) -> validation accuracy``, training
        ``model`` in place (it must not re-initialize it); default :func:`train_convnet`.
    from_scratch : bool, default=False
        Re-initialize each child (the baseline) instead of inheriting.
    scratch_epochs : {"lineage", "same"}, default="lineage"
        Epochs of a scratch child, see above.
    neighbors : int, default=3
        Morphed children per round.
    train_parent : bool, default=True
        Also train a copy of the round's parent further (one more model per round).
    max_morphisms : int, default=3
        Transforms per child, drawn uniformly from 1..max_morphisms.
    initial : ConvNet, optional
        Model 0's architecture and initialization (copied; trained here).
    noise : float, default=0.1
        Widen's function-preserving symmetry breaking.
    max_channels, max_layers : int
        Growth limits of :func:`random_morphism`.
    stop_at : float, optional
        Stop as soon as a model reaches this validation accuracy (``models`` is then the
        most that are trained): for measuring the time to reach a target.
    callback : callable, optional
        ``callback(record, model)`` after each model is trained.

    Returns
    -------
    list of dict
        One record per trained model, in training order: ``model`` (index), ``accuracy``,
        ``seconds`` (wall seconds since the search started, after this model),
        ``params``, ``flops`` (multiply-adds per image), ``description``
        (:meth:`ConvNet.describe`), ``inherited`` (trained from inherited weights),
        ``parent`` (index or None), ``morphisms`` (list of str; empty for the parent's
        further-trained copy), ``epochs`` (trained here), ``lineage_epochs`` (epochs
        behind its weights, inherited included) and ``cpu_seconds`` (this process's CPU
        time since the start: unlike ``seconds``, barely moved by other processes on the
        machine).
    """
    for name, value, low in (
        ("models", models, 1), ("epochs", epochs, 1), ("n_classes", n_classes, 2),
        ("neighbors", neighbors, 1), ("max_morphisms", max_morphisms, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")
    if scratch_epochs not in ("lineage", "same"):
        raise ValueError(f"scratch_epochs must be 'lineage' or 'same'; got {scratch_epochs!r}.")
    fn = train_convnet if train_fn is None else train_fn
    x, _ = _tensors(train)
    image_shape = tuple(x.shape[1:])
    start, cpu_start = time.perf_counter(), time.process_time()
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    if initial is None:
        pixels = x.double() / 255.0 if x.dtype == torch.uint8 else x.double()
        model = ConvNet(
            image_shape[0],
            n_classes,
            image_size=image_shape[1:],
            input_mean=float(pixels.mean()),
            input_std=float(pixels.std()) or 1.0,
            seed=seed,
        )
    else:
        model = copy.deepcopy(_net(initial))
    takes = (model.blocks[0].conv.in_channels, *model.image_size)
    if model.head.out_features != n_classes or takes != image_shape:
        raise ValueError(
            f"initial takes {takes} images to {model.head.out_features} classes; "
            f"the data has images of shape {image_shape} and n_classes={n_classes}."
        )
    records: list[dict[str, Any]] = []

    def record(
        net: ConvNet, accuracy: float, parent: int | None, done: list[str], trained: int, lineage: int
    ) -> dict[str, Any]:
        rec = {
            "model": len(records),
            "accuracy": float(accuracy),
            "seconds": 0.0,
            "params": count_params(net),
            "flops": count_flops(net, image_shape),
            "description": net.describe(),
            "inherited": parent is not None and not from_scratch,
            "parent": parent,
            "morphisms": done,
            "epochs": trained,
            "lineage_epochs": lineage,
        }
        rec["seconds"] = time.perf_counter() - start
        rec["cpu_seconds"] = time.process_time() - cpu_start
        records.append(rec)
        if callback is not None:
            callback(rec, net)
        return rec

    best = (model, record(model, fn(model, train, valid, epochs, seed), None, [], epochs, epochs))

    def finished() -> bool:
        return len(records) >= models or (stop_at is not None and records[-1]["accuracy"] >= stop_at)

    while not finished():
        parent, parent_rec = best
        round_best: tuple[ConvNet, dict[str, Any]] | None = None
        for k in range(neighbors + int(train_parent)):
            index = len(records)
            child, done = parent, []
            if k == neighbors:  # the parent itself, trained further
                child = copy.deepcopy(parent)
            else:  # a morphed child (each transform returns a new module)
                for _ in range(rng.randint(1, max_morphisms)):
                    child, what = random_morphism(
                        child, rng, generator, noise=noise, max_channels=max_channels, max_layers=max_layers
                    )
                    done.append(what)
            lineage = parent_rec["lineage_epochs"] + epochs
            trained = epochs
            if from_scratch:
                child = ConvNet(**child.config, seed=seed + index)
                if scratch_epochs == "lineage":
                    trained = lineage
                else:
                    lineage = trained
            accuracy = fn(child, train, valid, trained, seed + index)
            rec = record(child, accuracy, parent_rec["model"], done, trained, lineage)
            if round_best is None or rec["accuracy"] >= round_best[1]["accuracy"]:
                round_best = (child, rec)
            if finished():
                break
        best = round_best
    return records
