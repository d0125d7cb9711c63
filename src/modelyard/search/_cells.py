"""Convolutional cells in the style of NASNet and PNAS, their search space, network and FLOPs.

Zoph, Vasudevan, Shlens & Le, "Learning Transferable Architectures for Scalable Image
Recognition" (arXiv:1707.07012), and Liu et al., "Progressive Neural Architecture
Search", ECCV 2018 (arXiv:1712.00559).

A *cell* is a small directed graph of ``B`` *blocks*. Block ``b`` (0-based) combines two
inputs, each passed through one operation, by addition::

    h_b = op1(input1) + op2(input2)

An input is an index into the hidden states the block can see: ``0`` is the output of
the cell before the previous one (``h_{c-2}``), ``1`` the previous cell's output
(``h_{c-1}``) and ``2 + j`` the output of block ``j < b`` of the same cell. The
operations are exactly the six of :data:`OPS`: 3x3 and 5x5 convolutions, a 3x3
depthwise-separable convolution, 3x3 max and average pooling, and identity. The cell's
output concatenates the outputs of the blocks no other block of the cell reads (the
"unused" hidden states, as in NASNet).

A block is symmetric in its two branches, so :meth:`Genotype.canonical` orders each
block's two ``(input, op)`` pairs; PNAS counts cells the same way (136 one-block cells
for its 8 operations, ``12 * 13 / 2 = 78`` for the 6 here).

:class:`CellNetwork` stacks the cell: a 3x3 convolution stem, then ``n_stacks`` stacks
of ``n_cells`` normal cells with a reduction cell between consecutive stacks. A reduction
cell is the same genotype applied with stride 2 to the cell inputs, and doubles the
channels (the PNAS convention: one cell structure for both roles).

:func:`cell_space` writes a fixed number of blocks as a :class:`~modelyard.search.SearchSpace`
of categorical parameters, so every registered strategy (random, TPE, evolution, the RL
controller) searches cells unchanged; :meth:`Genotype.from_params` and
:meth:`Genotype.to_params` convert between a point and a genotype.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from modelyard.errors import SpecError
from modelyard.search._space import Categorical, SearchSpace

__all__ = [
    "OPS",
    "Block",
    "CellNetwork",
    "Genotype",
    "cell_space",
    "count_flops",
    "count_params",
]

#: The operations a block branch can apply, in a fixed order (the order of the categorical choices).
OPS: tuple[str, ...] = (
    "conv_3x3",
    "conv_5x5",
    "sep_conv_3x3",
    "max_pool_3x3",
    "avg_pool_3x3",
    "identity",
)

#: Hidden states every block can read besides earlier blocks: ``h_{c-2}`` and ``h_{c-1}``.
N_CELL_INPUTS = 2

NO_BLOCKS = "A cell needs at least one block; got none. Give e.g. [(0, 'conv_3x3', 1, 'identity')]."
BAD_BLOCK = "Block {index} of the cell must be a 4-tuple (input1, op1, input2, op2); got {block!r}."
BAD_OP = "Block {index} of the cell: unknown operation {op!r}; use one of {ops}."
BAD_INPUT = (
    "Block {index} of the cell: input {value!r} is out of range; block {index} can read "
    "0 (the cell before the previous one), 1 (the previous cell) or 2..{last} (earlier "
    "blocks 0..{prev} of the cell), so give an integer in 0..{last}."
)
BAD_N_BLOCKS = "n_blocks must be a positive integer; got {value!r}."
MISSING_PARAM = (
    "Cell parameters lack {name!r}; a point of cell_space({n}) has b<i>_in1, b<i>_op1, "
    "b<i>_in2 and b<i>_op2 for every block i in 0..{last}."
)


class Block(NamedTuple):
    """One block: ``op1(input1) + op2(input2)``.

    Attributes
    ----------
    input1, input2 : int
        ``0`` for ``h_{c-2}``, ``1`` for ``h_{c-1}``, ``2 + j`` for block ``j`` of the cell.
    op1, op2 : str
        Names from :data:`OPS`.
    """

    input1: int
    op1: str
    input2: int
    op2: str


def _check_block(index: int, block: Any) -> Block:
    if not isinstance(block, Sequence) or isinstance(block, str) or len(block) != 4:
        raise SpecError(BAD_BLOCK.format(index=index, block=block))
    in1, op1, in2, op2 = block
    last = N_CELL_INPUTS + index - 1
    for value in (in1, in2):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value <= last
        ):
            raise SpecError(
                BAD_INPUT.format(
                    index=index,
                    value=value,
                    last=last,
                    prev=index - 1 if index else "none",
                )
            )
    for op in (op1, op2):
        if op not in OPS:
            raise SpecError(BAD_OP.format(index=index, op=op, ops=list(OPS)))
    return Block(int(in1), str(op1), int(in2), str(op2))


@dataclass(frozen=True)
class Genotype:
    """A cell: a validated tuple of blocks.

    Parameters
    ----------
    blocks : sequence of 4-tuples ``(input1, op1, input2, op2)``
        Block ``b`` may read inputs ``0 .. b + 1`` (see the module docstring).

    Raises
    ------
    SpecError
        On no blocks, a block that is not a 4-tuple, an unknown operation or an input
        out of range; the message names the block and the allowed values.

    Examples
    --------
    >>> g = Genotype([(1, "conv_3x3", 0, "identity"), (2, "sep_conv_3x3", 1, "max_pool_3x3")])
    >>> g.n_blocks, g.unused
    (2, (1,))
    >>> g.describe()
    '[0:identity + 1:conv_3x3] [1:max_pool_3x3 + 2:sep_conv_3x3]'
    """

    blocks: tuple[Block, ...]

    def __init__(self, blocks: Sequence[Sequence[Any]]) -> None:
        if isinstance(blocks, Genotype):
            blocks = blocks.blocks
        if not isinstance(blocks, Sequence) or isinstance(blocks, str) or not blocks:
            raise SpecError(NO_BLOCKS)
        object.__setattr__(
            self, "blocks", tuple(_check_block(i, b) for i, b in enumerate(blocks))
        )

    # -- structure -------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        """Number of blocks ``B``."""
        return len(self.blocks)

    @property
    def unused(self) -> tuple[int, ...]:
        """Indices of the blocks no other block reads: their outputs are concatenated into the cell output."""
        read = {
            i - N_CELL_INPUTS
            for b in self.blocks
            for i in (b.input1, b.input2)
            if i >= N_CELL_INPUTS
        }
        return tuple(j for j in range(self.n_blocks) if j not in read)

    def canonical(self) -> Genotype:
        """The same cell with each block's two ``(input, op)`` branches in sorted order.

        Two genotypes that differ only by swapping the branches of some block compute
        the same function; their canonical forms are equal.
        """
        blocks = []
        for b in self.blocks:
            (i1, o1), (i2, o2) = sorted(
                [(b.input1, OPS.index(b.op1)), (b.input2, OPS.index(b.op2))]
            )
            blocks.append(Block(i1, OPS[o1], i2, OPS[o2]))
        return Genotype(blocks)

    def prefix(self, n_blocks: int) -> Genotype:
        """The cell of the first ``n_blocks`` blocks (the parent a progressive search grew it from)."""
        if not 1 <= n_blocks <= self.n_blocks:
            raise ValueError(f"n_blocks must be in 1..{self.n_blocks}; got {n_blocks}.")
        return Genotype(self.blocks[:n_blocks])

    def expansions(self) -> list[Genotype]:
        """Every canonical cell of ``B + 1`` blocks whose first ``B`` blocks are this cell.

        Returns
        -------
        list of Genotype
            ``m (m + 1) / 2`` cells for the ``m = (B + 2) * len(OPS)`` possible branches
            of the new block, in a fixed order.
        """
        base = self.canonical().blocks
        return [Genotype((*base, block)) for block in _canonical_blocks(self.n_blocks)]

    @classmethod
    def all_cells(cls, n_blocks: int = 1) -> Iterator[Genotype]:
        """Every canonical cell of ``n_blocks`` blocks (78 for one block; the count grows fast)."""
        _check_n_blocks(n_blocks)
        per_block = [_canonical_blocks(b) for b in range(n_blocks)]
        for blocks in itertools.product(*per_block):
            yield cls(blocks)

    # -- conversions -----------------------------------------------------------------
    def to_params(self) -> dict[str, Any]:
        """The point of :func:`cell_space` ``(self.n_blocks)`` describing this cell."""
        params: dict[str, Any] = {}
        for i, b in enumerate(self.blocks):
            params[f"b{i}_in1"], params[f"b{i}_op1"] = b.input1, b.op1
            params[f"b{i}_in2"], params[f"b{i}_op2"] = b.input2, b.op2
        return params

    @classmethod
    def from_params(
        cls, params: Mapping[str, Any], n_blocks: int | None = None
    ) -> Genotype:
        """The cell of a point of :func:`cell_space`.

        Parameters
        ----------
        params : mapping
            ``b<i>_in1, b<i>_op1, b<i>_in2, b<i>_op2`` for each block ``i``; other keys are
            ignored.
        n_blocks : int or None, default=None
            Blocks to read; ``params["n_blocks"]`` when present (a variable-size space),
            else every block found.

        Raises
        ------
        SpecError
            If a block's parameter is missing or its value is invalid.
        """
        if n_blocks is None:
            n_blocks = params.get("n_blocks")
        if n_blocks is None:
            n_blocks = 0
            while f"b{n_blocks}_op1" in params:
                n_blocks += 1
        _check_n_blocks(n_blocks)
        blocks = []
        for i in range(int(n_blocks)):
            keys = (f"b{i}_in1", f"b{i}_op1", f"b{i}_in2", f"b{i}_op2")
            for key in keys:
                if key not in params:
                    raise SpecError(
                        MISSING_PARAM.format(name=key, n=n_blocks, last=n_blocks - 1)
                    )
            blocks.append(tuple(params[k] for k in keys))
        return cls(blocks)

    def describe(self) -> str:
        """A one-line text form of the canonical cell, e.g. ``[0:identity + 1:conv_3x3]``."""
        return " ".join(
            f"[{b.input1}:{b.op1} + {b.input2}:{b.op2}]"
            for b in self.canonical().blocks
        )

    def __str__(self) -> str:
        return self.describe()


def _check_n_blocks(n_blocks: Any) -> None:
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1:
        raise SpecError(BAD_N_BLOCKS.format(value=n_blocks))


def _canonical_blocks(index: int) -> list[Block]:
    """Every canonical block at position ``index`` (sorted branch pairs, with repetition)."""
    branches = [(i, k) for i in range(N_CELL_INPUTS + index) for k in range(len(OPS))]
    return [
        Block(a[0], OPS[a[1]], b[0], OPS[b[1]])
        for a, b in itertools.combinations_with_replacement(branches, 2)
    ]


def cell_space(n_blocks: int, *, min_blocks: int | None = None) -> SearchSpace:
    """A cell of ``n_blocks`` blocks as a search space of categorical parameters.

    Block ``i`` has ``b<i>_in1`` and ``b<i>_in2`` (choices ``0 .. i + 1``) and ``b<i>_op1``
    and ``b<i>_op2`` (choices :data:`OPS`). With ``min_blocks`` the number of blocks is
    itself searched: a parameter ``n_blocks`` in ``min_blocks .. n_blocks``, and block
    ``i >= min_blocks`` exists only when ``n_blocks > i``.

    Parameters
    ----------
    n_blocks : int
        Blocks of the cell (the most blocks with ``min_blocks``).
    min_blocks : int or None, default=None
        Fewest blocks, for a variable-size cell; None for exactly ``n_blocks``.

    Returns
    -------
    SearchSpace
        ``Genotype.from_params(point)`` turns any point into a valid :class:`Genotype`.

    Examples
    --------
    >>> space = cell_space(2)
    >>> space.names[:4]
    ['b0_in1', 'b0_op1', 'b0_in2', 'b0_op2']
    """
    _check_n_blocks(n_blocks)
    if min_blocks is not None:
        _check_n_blocks(min_blocks)
        if min_blocks > n_blocks:
            raise SpecError(
                f"min_blocks {min_blocks} is greater than n_blocks {n_blocks}; give min_blocks <= n_blocks."
            )
    params: dict[str, Any] = {}
    if min_blocks is not None and min_blocks < n_blocks:
        params["n_blocks"] = Categorical(list(range(min_blocks, n_blocks + 1)))
    for i in range(n_blocks):
        when = (
            {"n_blocks": {">": i}} if "n_blocks" in params and i >= min_blocks else None
        )  # type: ignore[operator]
        inputs = list(range(N_CELL_INPUTS + i))
        params[f"b{i}_in1"] = Categorical(inputs, when=when)
        params[f"b{i}_op1"] = Categorical(list(OPS), when=when)
        params[f"b{i}_in2"] = Categorical(inputs, when=when)
        params[f"b{i}_op2"] = Categorical(list(OPS), when=when)
    return SearchSpace(params)


# -- torch modules -------------------------------------------------------------------------


class ReLUConvBN(nn.Sequential):
    """ReLU, convolution (no bias), batch norm: the NASNet convolution unit."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(
                c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False
            ),
            nn.BatchNorm2d(c_out),
        )


class SepConv(nn.Sequential):
    """ReLU, 3x3 depthwise convolution, 1x1 pointwise convolution, batch norm.

    PNAS and NASNet apply this unit twice; once keeps the small networks of a CPU
    search cheap, and the operation stays a depthwise-separable convolution.
    """

    def __init__(self, channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(
                channels,
                channels,
                3,
                stride=stride,
                padding=1,
                groups=channels,
                bias=False,
            ),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )


def make_op(name: str, channels: int, stride: int = 1) -> nn.Module:
    """The module of operation ``name`` on ``channels`` channels; ``stride`` 2 halves the spatial size.

    Identity with stride 2 becomes a 1x1 ReLU-conv-BN with stride 2 (NASNet's reduction).
    Every operation maps ``(N, C, H, W)`` to ``(N, C, ceil(H / s), ceil(W / s))``.
    """
    if name == "conv_3x3":
        return ReLUConvBN(channels, channels, 3, stride)
    if name == "conv_5x5":
        return ReLUConvBN(channels, channels, 5, stride)
    if name == "sep_conv_3x3":
        return SepConv(channels, stride)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name == "identity":
        return (
            nn.Identity() if stride == 1 else ReLUConvBN(channels, channels, 1, stride)
        )
    raise SpecError(BAD_OP.format(index="?", op=name, ops=list(OPS)))


class Cell(nn.Module):
    """One cell of a :class:`CellNetwork`.

    Parameters
    ----------
    genotype : Genotype
    c_prev_prev, c_prev : int
        Channels of ``h_{c-2}`` and ``h_{c-1}``.
    channels : int
        Channels of every block output; the cell outputs ``channels * len(genotype.unused)``.
    reduction : bool
        Apply the operations on the cell inputs with stride 2.
    reduction_prev : bool
        ``h_{c-2}`` has twice the spatial size of ``h_{c-1}`` (the previous cell reduced):
        its 1x1 preprocessing convolution uses stride 2.
    """

    def __init__(
        self,
        genotype: Genotype,
        c_prev_prev: int,
        c_prev: int,
        channels: int,
        *,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.genotype = genotype
        self.reduction = reduction
        self.preprocess0 = ReLUConvBN(
            c_prev_prev, channels, 1, 2 if reduction_prev else 1
        )
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1)
        self.ops = nn.ModuleList()
        self.inputs: list[tuple[int, int]] = []
        for b in genotype.blocks:
            for i, op in ((b.input1, b.op1), (b.input2, b.op2)):
                stride = 2 if reduction and i < N_CELL_INPUTS else 1
                self.ops.append(make_op(op, channels, stride))
            self.inputs.append((b.input1, b.input2))
        self.unused = genotype.unused
        self.out_channels = channels * len(self.unused)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]  # each (N, C, H, W)
        for j, (i1, i2) in enumerate(self.inputs):
            states.append(self.ops[2 * j](states[i1]) + self.ops[2 * j + 1](states[i2]))
        return torch.cat([states[N_CELL_INPUTS + j] for j in self.unused], dim=1)


class CellNetwork(nn.Module):
    """An image classifier stacking one cell genotype (NASNet / PNAS layout).

    ``stem (3x3 conv + BN)`` -> stack 1 of ``n_cells`` normal cells -> reduction cell ->
    stack 2 -> ... -> stack ``n_stacks`` -> ReLU, global average pooling, linear.
    Each reduction cell halves the spatial size and doubles the channels.

    Parameters
    ----------
    genotype : Genotype or sequence of blocks
    n_cells : int, default=1
        ``N``: normal cells per stack.
    n_stacks : int, default=2
        Stacks of normal cells; ``n_stacks - 1`` reduction cells sit between them.
    channels : int, default=8
        Channels of a block output in the first stack.
    n_classes : int, default=10
    in_channels : int, default=1
    stem_stride : int, default=1
        Stride of the stem convolution; 2 halves the resolution the cells work at (a
        quarter of the compute, for searches on a CPU budget).

    Examples
    --------
    >>> net = CellNetwork(Genotype([(0, "conv_3x3", 1, "max_pool_3x3")]), n_stacks=2, channels=4)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        genotype: Genotype | Sequence[Sequence[Any]],
        n_cells: int = 1,
        n_stacks: int = 2,
        channels: int = 8,
        n_classes: int = 10,
        in_channels: int = 1,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        genotype = genotype if isinstance(genotype, Genotype) else Genotype(genotype)
        for name, value, low in (
            ("n_cells", n_cells, 0),
            ("n_stacks", n_stacks, 1),
            ("channels", channels, 1),
            ("n_classes", n_classes, 1),
            ("in_channels", in_channels, 1),
            ("stem_stride", stem_stride, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SpecError(
                    f"CellNetwork: {name} must be an integer >= {low}; got {value!r}."
                )
        if n_cells == 0 and n_stacks == 1:
            raise SpecError(
                "CellNetwork: n_cells=0 with n_stacks=1 has no cell; give n_cells >= 1 or n_stacks >= 2."
            )
        self.genotype = genotype
        self.n_cells, self.n_stacks, self.channels = n_cells, n_stacks, channels
        self.stem = nn.Sequential(
            nn.Conv2d(
                in_channels, channels, 3, stride=stem_stride, padding=1, bias=False
            ),
            nn.BatchNorm2d(channels),
        )
        c_pp, c_p, c = channels, channels, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for stack in range(n_stacks):
            if stack > 0:
                c *= 2
                cell = Cell(
                    genotype,
                    c_pp,
                    c_p,
                    c,
                    reduction=True,
                    reduction_prev=reduction_prev,
                )
                self.cells.append(cell)
                c_pp, c_p, reduction_prev = c_p, cell.out_channels, True
            for _ in range(n_cells):
                cell = Cell(
                    genotype,
                    c_pp,
                    c_p,
                    c,
                    reduction=False,
                    reduction_prev=reduction_prev,
                )
                self.cells.append(cell)
                c_pp, c_p, reduction_prev = c_p, cell.out_channels, False
        self.relu = nn.ReLU()
        self.classifier = nn.Linear(c_p, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)  # (N, C, H, W)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        pooled = self.relu(s1).mean(dim=(2, 3))  # (N, C_out)
        return self.classifier(pooled)  # (N, n_classes)


# -- costs -----------------------------------------------------------------------------------


def count_flops(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of the convolution and linear layers for one input of shape ``input_shape``.

    :func:`modelyard.search.module_flops` (forward hooks) on one zero image: a ``Conv2d``
    costs ``output elements * in_channels / groups * kernel area``, a ``Linear``
    ``output elements * in_features``. Batch norm, pooling, activations and additions
    are not counted (the convention of the PNAS and MobileNet papers).

    Parameters
    ----------
    module : torch.nn.Module
    input_shape : sequence of int
        Shape of one input without the batch axis, e.g. ``(1, 28, 28)``.

    Returns
    -------
    int
        Multiply-adds per input.

    Examples
    --------
    >>> count_flops(nn.Conv2d(1, 2, 3, padding=1), (1, 4, 4))  # 16 positions * 2 out * 9
    288
    """
    from modelyard.search._objectives import module_flops

    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return int(module_flops(module, torch.zeros(1, *input_shape, device=device)))


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return int(sum(p.numel() for p in module.parameters()))
