"""Cell genotypes, their search space, the stacked network and its FLOPs."""

from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

from modelyard.errors import SpecError
from modelyard.search._cells import (
    OPS,
    CellNetwork,
    Genotype,
    cell_space,
    count_flops,
    count_params,
    make_op,
)
from modelyard.search._strategies import resolve_strategy


def test_ops_are_exactly_the_six_named() -> None:
    assert OPS == (
        "conv_3x3",
        "conv_5x5",
        "sep_conv_3x3",
        "max_pool_3x3",
        "avg_pool_3x3",
        "identity",
    )


@pytest.mark.parametrize(
    ("blocks", "match"),
    [
        ([], "at least one block"),
        ([(0, "conv_3x3", 1)], "must be a 4-tuple"),
        ([(0, "conv_7x7", 1, "identity")], "unknown operation 'conv_7x7'"),
        ([(2, "conv_3x3", 1, "identity")], r"input 2 is out of range.*0\.\.1"),
        (
            [(0, "conv_3x3", 1, "identity"), (0, "identity", 3, "identity")],
            r"input 3 .*0\.\.2",
        ),
        ([(-1, "conv_3x3", 1, "identity")], "out of range"),
        ([(True, "conv_3x3", 1, "identity")], "out of range"),
    ],
)
def test_genotype_validation_names_the_fix(blocks: list, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        Genotype(blocks)


def test_canonical_unused_and_describe() -> None:
    g = Genotype(
        [
            (1, "identity", 0, "conv_3x3"),
            (2, "max_pool_3x3", 2, "sep_conv_3x3"),
            (1, "conv_5x5", 0, "identity"),
        ]
    )
    assert g.unused == (1, 2)  # block 0 is read by block 1
    c = g.canonical()
    assert c.blocks[0] == (0, "conv_3x3", 1, "identity")
    # same input: op order decides
    assert c.blocks[1] == (2, "sep_conv_3x3", 2, "max_pool_3x3")
    assert c.canonical() == c and hash(c) == hash(g.canonical())
    assert g.describe() == c.describe() == str(c)


def test_counts_of_cells_and_expansions() -> None:
    one = list(Genotype.all_cells(1))
    # unordered pairs of (2 inputs x 6 ops) branches
    assert len(one) == len(set(one)) == 12 * 13 // 2
    expansions = one[0].expansions()
    assert len(expansions) == 18 * 19 // 2 and all(
        e.prefix(1) == one[0] for e in expansions
    )
    assert all(e.n_blocks == 2 and e == e.canonical() for e in expansions)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_builds_and_keeps_or_halves_shape(op: str, stride: int) -> None:
    module = make_op(op, 4, stride)
    for size in (8, 7):
        out = module(torch.randn(2, 4, size, size))
        half = (size + 1) // 2
        assert (
            out.shape == (2, 4, size, size)
            if stride == 1
            else out.shape == (2, 4, half, half)
        )


def test_network_reduction_halves_spatial_size_and_doubles_channels() -> None:
    g = Genotype(
        [(0, "conv_3x3", 1, "max_pool_3x3"), (2, "identity", 1, "avg_pool_3x3")]
    )
    net = CellNetwork(g, n_cells=1, n_stacks=3, channels=4)
    shapes = []
    for cell in net.cells:
        cell.register_forward_hook(
            lambda m, i, o: shapes.append((m.reduction, tuple(o.shape)))
        )
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # normal 28x28 (block 1 unused: 4 ch), reduction to 14x14 (8 ch), normal, reduction to 7x7 (16 ch), normal
    assert shapes == [
        (False, (2, 4, 28, 28)),
        (True, (2, 8, 14, 14)),
        (False, (2, 8, 14, 14)),
        (True, (2, 16, 7, 7)),
        (False, (2, 16, 7, 7)),
    ]


def test_network_argument_errors() -> None:
    g = Genotype([(0, "identity", 1, "identity")])
    with pytest.raises(SpecError, match="n_stacks must be an integer >= 1"):
        CellNetwork(g, n_stacks=0)
    with pytest.raises(SpecError, match="no cell"):
        CellNetwork(g, n_cells=0, n_stacks=1)


def test_count_flops_against_hand_count_of_tiny_net() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)
    )
    assert count_flops(net, (1, 4, 4)) == 16 * 2 * 9 + 32 * 3  # 288 + 96
    assert count_params(net) == (2 * 9 + 2) + (32 * 3 + 3)


def test_count_flops_of_cell_network_by_hand() -> None:
    # One block of two pools: only the stem, the two 1x1 preprocessing convs and the head count.
    g = Genotype([(0, "max_pool_3x3", 1, "avg_pool_3x3")])
    net = CellNetwork(g, n_cells=1, n_stacks=1, channels=4, n_classes=10, in_channels=1)
    stem = 8 * 8 * 4 * (1 * 9)  # 3x3 conv 1 -> 4 on 8x8
    preprocess = 2 * (8 * 8 * 4 * 4)  # two 1x1 convs 4 -> 4
    head = 4 * 10
    assert count_flops(net, (1, 8, 8)) == stem + preprocess + head
    # A 3x3 separable conv adds depthwise (9 per output) + pointwise (4 per output) multiply-adds.
    sep = CellNetwork(
        Genotype([(0, "sep_conv_3x3", 1, "identity")]),
        n_cells=1,
        n_stacks=1,
        channels=4,
    )
    assert count_flops(sep, (1, 8, 8)) == stem + preprocess + head + 8 * 8 * 4 * (9 + 4)


def test_cell_space_round_trip() -> None:
    space = cell_space(3)
    assert len(space) == 12 and all(
        space[n].distribution().choices for n in space.names
    )
    assert space["b2_in1"].choices == (0, 1, 2, 3)
    g = Genotype(
        [
            (1, "conv_3x3", 0, "identity"),
            (2, "sep_conv_3x3", 1, "max_pool_3x3"),
            (3, "conv_5x5", 2, "avg_pool_3x3"),
        ]
    )
    params = g.to_params()
    assert set(params) == set(space.names)
    assert Genotype.from_params(params) == g
    with pytest.raises(SpecError, match="lack 'b1_op2'"):
        Genotype.from_params(
            {k: v for k, v in params.items() if k != "b1_op2"}, n_blocks=3
        )


def test_variable_size_cell_space() -> None:
    space = cell_space(3, min_blocks=1)
    point = {
        "n_blocks": 2,
        **Genotype(
            [(0, "identity", 1, "identity"), (2, "conv_3x3", 0, "conv_3x3")]
        ).to_params(),
    }
    assert space.active(point) == [n for n in space.names if not n.startswith("b2_")]
    assert Genotype.from_params(point).n_blocks == 2
    with pytest.raises(SpecError, match="min_blocks 4 is greater"):
        cell_space(3, min_blocks=4)


@pytest.mark.parametrize("strategy", ["rl", "evolution", "random"])
def test_registered_samplers_propose_valid_genotypes(strategy: str) -> None:
    space = cell_space(2)
    options = (
        {"population_size": 4, "sample_size": 2} if strategy == "evolution" else {}
    )
    sampler = resolve_strategy(strategy, **options).make_sampler(space, 0, 1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    seen = []
    for _ in range(12):
        trial = study.ask()
        g = Genotype.from_params(space.suggest(trial))
        seen.append(g)
        study.tell(trial, sum(b.op1 == "conv_3x3" for b in g.blocks))
    assert all(isinstance(g, Genotype) and g.n_blocks == 2 for g in seen)
    assert len(set(seen)) > 1
