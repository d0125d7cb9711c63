"""Convolutional network morphism: children compute their parent's function before training; the search runs."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from modelyard.data import ImageSplit, load
from modelyard.search._conv_morphism import (
    ConvNet,
    add_skip_conv,
    count_flops,
    count_params,
    deepen_conv,
    evaluate_accuracy,
    morphism_search,
    random_morphism,
    train_convnet,
    widen_conv,
    widen_kernel,
)

# The child reorders and splits float32 sums (a channel's contribution w * h becomes c
# terms of (w / c) * h, noise adds and subtracts the same eps, identity and padded
# kernels add exact zeros; the convolution backend may also sum in another order for
# another shape): a few ulps of logits of size O(0.1-1). 1e-5 is ~100 ulps at 1.0 and
# far below any real change of function (those move logits by O(0.01) or more).
ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: these convolutions are tiny, and on a busy 2-core machine a second
    thread's synchronization made one test 40x slower (26 s against 0.7 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _net(channels=(8, 16, 12), seed=0, **kw) -> ConvNet:
    return ConvNet(1, 10, channels, pools=[True, True] + [False] * (len(channels) - 2), seed=seed, **kw)


def _images(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))  # (n, 1, 28, 28)


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _rebuilds(net: ConvNet, x: torch.Tensor) -> None:
    """A child is a plain ConvNet of its config: its state dict rebuilds it exactly."""
    rebuilt = ConvNet(**net.config)
    rebuilt.load_state_dict(net.state_dict())
    assert _max_diff(net, rebuilt, x) == 0.0


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_widen_conv_preserves_function(seed, noise):
    parent = _net(seed=seed, skips=[(0, 2), (1, 3)])  # skips with nonzero weights in and out
    x = _images(seed=seed)
    before = _state(parent)
    g = torch.Generator().manual_seed(seed)
    for layer, c in enumerate((8, 16, 12)):
        child = widen_conv(parent, layer, 2 * c + 3, noise=noise, generator=g)
        assert _max_diff(parent, child, x) < ATOL
        assert child.blocks[layer].conv.out_channels == 2 * c + 3
        _rebuilds(child, x)
    assert parent.config["channels"] == [8, 16, 12]  # the parent is untouched
    assert all(torch.equal(v, parent.state_dict()[k]) for k, v in before.items())


def test_widen_conv_noise_breaks_symmetry():
    parent = _net()
    plain = widen_conv(parent, 1, 30, generator=torch.Generator().manual_seed(0))
    noisy = widen_conv(parent, 1, 30, noise=0.1, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(plain.blocks[2].conv.weight, noisy.blocks[2].conv.weight)
    assert _max_diff(parent, noisy, _images()) < ATOL


@pytest.mark.parametrize("after", [0, 1, 2])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_deepen_conv_preserves_function(after, kernel_size):
    parent = _net(skips=[(0, 2), (1, 3)])
    x = _images()
    child = deepen_conv(parent, after, kernel_size)
    assert _max_diff(parent, child, x) < ATOL
    c = parent.blocks[after].conv.out_channels
    assert count_params(child) - count_params(parent) == c * c * kernel_size**2 + c
    # Skip endpoints keep pointing at the same blocks.
    shift = {i: i + (i > after) for i in range(4)}
    assert child.config["skips"] == [(shift[0], shift[2]), (shift[1], shift[3])]
    _rebuilds(child, x)
    assert len(parent.blocks) == 3


@pytest.mark.parametrize(("src", "dst"), [(0, 2), (0, 3), (1, 3)])
def test_add_skip_conv_preserves_function(src, dst):
    parent = _net()
    x = _images()
    child = add_skip_conv(parent, src, dst)
    assert _max_diff(parent, child, x) < ATOL
    dst_in = (8, 16, 12)[dst - 1]
    assert count_params(child) - count_params(parent) == (8, 16, 12)[src] * dst_in
    assert len(parent.skips) == 0
    _rebuilds(child, x)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_widen_kernel_preserves_function(layer):
    parent = _net(skips=[(0, 2)])
    x = _images()
    child = widen_kernel(parent, layer, 5)
    assert _max_diff(parent, child, x) < ATOL
    assert child.config["kernel_sizes"][layer] == 5 and parent.config["kernel_sizes"][layer] == 3
    _rebuilds(child, x)


def test_random_morphisms_compose_and_keep_function():
    """Twenty random transforms in a row; skips made nonzero after each so later transforms must carry them."""
    rng, g = random.Random(0), torch.Generator().manual_seed(0)
    child = _net(channels=(6, 8), skips=[])
    x = _images(8)
    with torch.no_grad():
        reference = child(x)
    kinds = set()
    for _ in range(20):
        parent = child
        child, what = random_morphism(child, rng, g, max_channels=24, max_layers=5)
        kinds.add(what.split()[0])
        with torch.no_grad():
            assert float((child(x) - reference).abs().max()) < ATOL, what
            assert _max_diff(parent, child, x) < ATOL, what
            for s in child.skips:  # zero-initialized skips would make widen's skip handling untested
                s.proj.weight.add_(0.1 * torch.randn(s.proj.weight.shape, generator=g))
            reference = child(x)
    assert kinds == {"widen", "deepen", "skip", "kernel"}


def test_new_parameters_get_gradients():
    parent = _net()
    child = add_skip_conv(deepen_conv(parent, 0), 0, 3)
    x, y = _images(32), torch.arange(32) % 10
    nn.functional.cross_entropy(child(x), y).backward()
    assert child.skips[0].proj.weight.grad.abs().sum() > 0  # dL/dW = dL/d(input) x source != 0
    assert child.blocks[1].conv.weight.grad.abs().sum() > 0  # the identity block


def test_count_flops_and_params():
    net = ConvNet(1, 10, (8, 16), seed=0)
    # conv1 28*28*8 outputs x 1*3*3, conv2 (after a pool) 14*14*16 x 8*3*3, head 10 x 16*7*7.
    assert count_flops(net, (1, 28, 28)) == 28 * 28 * 8 * 9 + 14 * 14 * 16 * 72 + 10 * 784
    assert count_params(net) == (8 * 9 + 8) + (16 * 72 + 16) + (10 * 784 + 10)
    assert net.describe() == "3x3:8+pool 3x3:16+pool -> 10"


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: widen_conv(m, 3, 40), IndexError, r"layer=3 is out of range: valid indices are 0\.\.2"),
        (lambda m: widen_conv(m, -1, 40), IndexError, "out of range"),
        (lambda m: widen_conv(m, 0, 8), ValueError, "must be > the current 8 channels"),
        (lambda m: widen_conv(m, 1, 4), ValueError, "narrowing cannot keep the function"),
        (lambda m: widen_conv(m, 0, 20, noise=-1.0), ValueError, "noise must be >= 0"),
        (lambda m: deepen_conv(m, 3), IndexError, "after_layer=3 is out of range"),
        (lambda m: deepen_conv(m, 0, 4), ValueError, "positive odd number"),
        (lambda m: add_skip_conv(m, 0, 1), ValueError, r"must be >= from_layer \+ 2"),
        (lambda m: add_skip_conv(m, 0, 4), IndexError, r"to_layer=4 is out of range: valid indices are 0\.\.3"),
        (lambda m: add_skip_conv(add_skip_conv(m, 0, 2), 0, 2), ValueError, "exists already"),
        (lambda m: widen_kernel(m, 0, 3), ValueError, "must be > the current kernel size 3"),
        (lambda m: widen_kernel(m, 5, 5), IndexError, "layer=5 is out of range"),
        (lambda m: widen_conv(nn.Linear(3, 4), 0, 8), TypeError, "need a ConvNet"),
        (lambda m: m(torch.zeros(2, 28, 28)), ValueError, r"shape \(B, C, H, W\)"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(_net())


# -- the search ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion() -> tuple[ImageSplit, ImageSplit]:
    """400 training and 300 validation images of the real Fashion-MNIST, or skip (never downloads)."""
    shared = os.environ.get("MODELYARD_DATA_DIR")
    if not shared or not os.path.isdir(shared):
        pytest.skip("needs the real data sets: set MODELYARD_DATA_DIR to the shared data folder (../shared/data)")
    data = load("fashion_mnist", data_dir=shared, download=False)
    return (
        ImageSplit(data.train.x[:400], data.train.y[:400]),
        ImageSplit(data.valid.x[:300], data.valid.y[:300]),
    )


def test_morphism_search_records_and_inheritance(fashion):
    train, valid = fashion
    start_accuracy = {}

    def train_fn(model, tr, va, epochs, seed):
        start_accuracy[len(start_accuracy)] = evaluate_accuracy(model, va)
        return train_convnet(model, tr, va, epochs, seed, batch_size=32)

    records = morphism_search(train, valid, models=3, epochs=1, seed=0, n_classes=10, train_fn=train_fn)
    assert [r["model"] for r in records] == [0, 1, 2]
    keys = {"model", "accuracy", "seconds", "params", "flops", "description", "inherited"}
    for r in records:
        assert keys <= r.keys()
        assert 0.0 <= r["accuracy"] <= 1.0 and r["params"] > 0 and r["flops"] > 0
        assert isinstance(r["description"], str) and r["description"].endswith("-> 10")
    assert [r["inherited"] for r in records] == [False, True, True]
    assert all(r["cpu_seconds"] > 0 for r in records)
    assert np.all(np.diff([r["seconds"] for r in records]) > 0)
    assert records[0]["accuracy"] > 0.4  # one epoch on 400 images already beats chance (0.1)
    for r in records[1:]:
        # Before any training the child classifies exactly as its parent did after training.
        assert start_accuracy[r["model"]] == records[r["parent"]]["accuracy"]
        assert 1 <= len(r["morphisms"]) <= 3 and r["lineage_epochs"] == 2
        assert r["params"] >= records[0]["params"]


def test_morphism_search_from_scratch(fashion):
    train, valid = fashion
    starts = []

    def train_fn(model, tr, va, epochs, seed):
        starts.append(evaluate_accuracy(model, va))
        return train_convnet(model, tr, va, 0, seed)  # evaluation only: the records are what is tested

    records = morphism_search(
        (train.x, train.y), valid, models=5, epochs=1, seed=0, n_classes=10, train_fn=train_fn,
        from_scratch=True, neighbors=1,
    )
    assert [r["inherited"] for r in records] == [False] * 5
    # Rounds of one morphed child and the parent trained further: 0 | 1, 2 | 3, 4.
    assert [r["parent"] for r in records[1:3]] == [0, 0] and records[2]["morphisms"] == []
    assert records[2]["description"] == records[0]["description"]
    assert [r["epochs"] for r in records[1:3]] == [2, 2]  # lineage: the parent's 1 epoch + 1
    parent = 1 if records[1]["accuracy"] > records[2]["accuracy"] else 2  # ties go to the later model
    assert [r["parent"] for r in records[3:]] == [parent, parent]
    assert [r["epochs"] for r in records[3:]] == [3, 3]


def test_morphism_search_stops_at_target(fashion):
    train, valid = fashion
    scores = iter([0.5, 0.6, 0.9, 0.7, 0.95])

    def train_fn(model, tr, va, epochs, seed):
        return next(scores)  # no training: only the stopping rule is tested

    records = morphism_search(train, valid, models=5, epochs=1, seed=0, n_classes=10, train_fn=train_fn, stop_at=0.9)
    assert [r["accuracy"] for r in records] == [0.5, 0.6, 0.9]
    assert [r["morphisms"] == [] for r in records] == [True, False, False]


def test_morphism_search_bad_arguments(fashion):
    train, valid = fashion
    with pytest.raises(ValueError, match="models must be an int >= 1"):
        morphism_search(train, valid, models=0, epochs=1, seed=0, n_classes=10)
    with pytest.raises(ValueError, match="scratch_epochs must be"):
        morphism_search(train, valid, models=1, epochs=1, seed=0, n_classes=10, scratch_epochs="all")
    with pytest.raises(ValueError, match=r"the data has images of shape \(1, 28, 28\) and n_classes=10"):
        morphism_search(train, valid, models=1, epochs=1, seed=0, n_classes=10, initial=ConvNet(3, 10))
    with pytest.raises(TypeError, match="ImageSplit"):
        morphism_search("images", valid, models=1, epochs=1, seed=0, n_classes=10)
