"""Network morphism: each transform's child computes its parent's function before training, and learns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from modelyard.data import encode_frame, infer_schema
from modelyard.models import MLPConfig, TabularMLP
from modelyard.search._morphism import SkipBody, add_skip, deepen, widen

# The child reorders and splits float32 sums (a unit's contribution w * h becomes c
# terms of (w / c) * h; an identity layer adds exact zeros): errors of a few ulps of
# the logits, which are O(1) here. 1e-5 is ~100 ulps at 1.0 and far below any real
# change of function (those move outputs by O(0.1)).
ATOL = 1e-5


def _data(task: str = "binary", n: int = 200, seed: int = 0):
    """A small real-ish table: a normal and a heavy-tailed numeric column with NaNs, a categorical one."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.exponential(1000.0, size=n),
            "color": rng.choice(["red", "green", "blue"], size=n),
        }
    )
    frame.loc[rng.random(n) < 0.05, "x1"] = np.nan
    signal = 2 * frame["x1"].fillna(0) + frame["color"].map(
        {"red": -2.0, "green": 0.0, "blue": 2.0}
    )
    if task == "regression":
        frame["y"] = signal
    else:
        frame["y"] = np.where(signal > signal.median(), "yes", "no")
    schema = infer_schema(frame, "y")
    x_num, x_cat = encode_frame(frame[schema.feature_names], schema)
    return schema, torch.from_numpy(x_num).float(), torch.from_numpy(x_cat).long()


def _mlp(hidden=(16, 8), seed=0, task="binary", **kw):
    schema, x_num, x_cat = _data(task, seed=seed)
    module = TabularMLP.build(
        schema, MLPConfig(hidden_sizes=hidden, seed=seed, **kw), x_num=x_num.numpy()
    )
    return module.eval(), schema, x_num, x_cat


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _same_function(parent, child, x_num, x_cat):
    with torch.no_grad():
        torch.testing.assert_close(
            child.eval()(x_num, x_cat), parent.eval()(x_num, x_cat), atol=ATOL, rtol=0
        )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("hidden", [(16, 8), (5,), (32, 16, 7)])
def test_widen_preserves_function(seed, hidden):
    parent, schema, x_num, x_cat = _mlp(hidden, seed)
    g = torch.Generator().manual_seed(seed)
    for i, w in enumerate(hidden):
        child = widen(parent, i, 2 * w + 3, generator=g)
        _same_function(parent, child, x_num, x_cat)
        # Grows by (extra units) * (fan-in + 1 bias + fan-out of the next layer).
        fan_in = child.body[3 * i].in_features
        fan_out = (
            child.body[3 * (i + 1)] if i + 1 < len(hidden) else child.head
        ).out_features
        assert _n_params(child) - _n_params(parent) == (w + 3) * (fan_in + 1 + fan_out)
        assert child.config.hidden_sizes[i] == 2 * w + 3
        # The child is a plain TabularMLP of its config: a state dict rebuilds it exactly.
        rebuilt = TabularMLP(schema, child.config)
        rebuilt.load_state_dict(child.state_dict())
        _same_function(child, rebuilt, x_num, x_cat)
    assert parent.config.hidden_sizes == hidden  # the parent is untouched


def test_widen_noise_breaks_symmetry_and_keeps_function():
    parent, _, x_num, x_cat = _mlp((16, 8))
    plain = widen(parent, 0, 30, generator=torch.Generator().manual_seed(0))
    noisy = widen(parent, 0, 30, noise=0.1, generator=torch.Generator().manual_seed(0))
    _same_function(parent, noisy, x_num, x_cat)
    assert not torch.equal(plain.body[3].weight, noisy.body[3].weight)


def test_widen_preserves_regression_output_and_buffers():
    parent, _, x_num, x_cat = _mlp((12,), task="regression")
    child = widen(parent, 0, 20, generator=torch.Generator().manual_seed(3))
    _same_function(parent, child, x_num, x_cat)
    for name, buf in parent.named_buffers():
        assert torch.equal(buf, dict(child.named_buffers())[name]), name
    assert torch.equal(parent.embeddings[0].weight, child.embeddings[0].weight)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("hidden", [(16, 8), (5,), (32, 16, 7)])
def test_deepen_preserves_function(seed, hidden):
    parent, schema, x_num, x_cat = _mlp(hidden, seed)
    for i, w in enumerate(hidden):
        child = deepen(parent, i)
        _same_function(parent, child, x_num, x_cat)
        assert (
            _n_params(child) - _n_params(parent) == w * w + w
        )  # one (w, w) Linear with bias
        assert child.config.hidden_sizes == hidden[: i + 1] + (w,) + hidden[i + 1 :]
        rebuilt = TabularMLP(schema, child.config)
        rebuilt.load_state_dict(child.state_dict())
        _same_function(child, rebuilt, x_num, x_cat)


def test_deepen_refuses_non_idempotent_activation():
    parent, _, _, _ = _mlp((16, 8))
    parent.body[1] = nn.Tanh()
    with pytest.raises(ValueError, match="idempotent activation .* got Tanh"):
        deepen(parent, 0)
    deepen(parent, 1)  # layer 1 still has ReLU


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("hidden", "src", "dst"),
    [((16, 8), 0, 2), ((32, 16, 7), 0, 2), ((32, 16, 7), 0, 3), ((32, 16, 7), 1, 3)],
)
def test_add_skip_preserves_function(seed, hidden, src, dst):
    parent, _, x_num, x_cat = _mlp(hidden, seed)
    child = add_skip(parent, src, dst)
    assert isinstance(child.body, SkipBody) and not isinstance(parent.body, SkipBody)
    _same_function(parent, child, x_num, x_cat)
    dst_in = hidden[dst - 1]  # the receiving Linear's input width
    assert (
        _n_params(child) - _n_params(parent) == hidden[src] * dst_in
    )  # projection, no bias


def test_transforms_compose_and_keep_function():
    parent, _, x_num, x_cat = _mlp((16, 8, 6))
    g = torch.Generator().manual_seed(0)
    child = add_skip(parent, 0, 2)
    child = add_skip(child, 1, 3)
    # Skips must be nonzero for widen/deepen to have something to preserve on them.
    for s in child.body.skips:
        nn.init.normal_(s.proj.weight, generator=g)
    with torch.no_grad():
        reference = child(x_num, x_cat)
    for step in [
        lambda m: widen(m, 0, 24, generator=g),
        lambda m: widen(m, 1, 13, noise=0.1, generator=g),
        lambda m: deepen(m, 0),
        lambda m: widen(m, 3, 9, generator=g),
        lambda m: deepen(m, 3),
    ]:
        child = step(child)
        with torch.no_grad():
            torch.testing.assert_close(
                child(x_num, x_cat), reference, atol=ATOL, rtol=0
            )
    assert child.config.hidden_sizes == (24, 24, 13, 9, 9)
    assert [(s.from_layer, s.to_layer) for s in child.body.skips] == [(0, 3), (2, 5)]


def _train_step(model, x_num, x_cat, lr=0.05):
    model.train()
    y = (x_num[:, 0].nan_to_num() > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss = nn.functional.cross_entropy(model(x_num, x_cat), y)
    opt.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    return grads


@pytest.mark.parametrize("transform", ["widen", "deepen", "add_skip"])
def test_child_trains_and_new_parameters_get_gradients(transform):
    parent, _, x_num, x_cat = _mlp((16, 8), dropout=0.0)
    g = torch.Generator().manual_seed(0)
    child = {
        "widen": lambda: widen(parent, 0, 24, noise=0.1, generator=g),
        "deepen": lambda: deepen(parent, 0),
        "add_skip": lambda: add_skip(parent, 0, 2),
    }[transform]()
    with torch.no_grad():
        before = child.eval()(x_num, x_cat)
    grads = _train_step(child, x_num, x_cat)
    with torch.no_grad():
        after = child.eval()(x_num, x_cat)
    assert (after - before).abs().max() > 1e-4  # one SGD step changed the function
    new = {
        "widen": "body.0.weight",
        "deepen": "body.3.weight",
        "add_skip": "body.skips.0.proj.weight",
    }[transform]
    if transform == "widen":
        assert grads[new][16:].abs().sum() > 0  # rows of the copied units
    else:
        # For the zero-initialized skip this is the point: dL/dW = dL/d(input) @ h_from^T != 0.
        assert grads[new].abs().sum() > 0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda m: widen(m, 2, 40),
            IndexError,
            r"layer_index=2 is out of range: valid indices are 0\.\.1",
        ),
        (lambda m: widen(m, -1, 40), IndexError, "out of range"),
        (
            lambda m: widen(m, 0, 16),
            ValueError,
            "must be > the current width 16",
        ),
        (lambda m: widen(m, 0, 8), ValueError, "must be > the current width 16"),
        (lambda m: widen(m, 0, 20, noise=-1.0), ValueError, "noise must be >= 0"),
        (lambda m: deepen(m, 2), IndexError, "after_layer_index=2 is out of range"),
        (lambda m: add_skip(m, 0, 1), ValueError, "must be >= from_layer \\+ 2"),
        (
            lambda m: add_skip(m, 0, 3),
            IndexError,
            r"to_layer=3 is out of range: valid indices are 0\.\.2",
        ),
        (lambda m: add_skip(add_skip(m, 0, 2), 0, 2), ValueError, "exists already"),
        (lambda m: widen(nn.Linear(3, 4), 0, 8), TypeError, "TabularMLP-like module"),
    ],
)
def test_bad_arguments(call, error, match):
    parent, _, _, _ = _mlp((16, 8))
    with pytest.raises(error, match=match):
        call(parent)
