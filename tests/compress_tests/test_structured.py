"""Structured pruning: smaller layers, exact function when zero units go, FLOPs targets, predictors end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from modelyard.compress import export_onnx
from modelyard.compress._structured import _FlopsModel, prune_structured, unit_groups
from modelyard.data import ImageSplit, TabularSplit, infer_schema
from modelyard.models import (
    ImageNetConfig,
    MLPConfig,
    OnnxImagePredictor,
    load_predictor,
    save_torch,
)
from modelyard.search import module_flops
from modelyard.train import fit_image, fit_mlp


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 8), nn.GELU(), nn.Linear(8, 3))


@torch.no_grad()
def _kill(layer: nn.Module, units: list[int]) -> None:
    """Zero the incoming weights and bias of ``units``: they output activation(0) = 0."""
    layer.weight[units] = 0
    if layer.bias is not None:
        layer.bias[units] = 0


def test_groups_follow_the_graph_and_skip_the_head_and_residuals() -> None:
    assert [(g.producer, g.consumer, g.span) for g in unit_groups(_mlp())] == [("0", "3", 1), ("3", "5", 1)]

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            return self.c(h + torch.relu(self.b(h)))  # a's and b's units are tied by the addition

    assert unit_groups(Residual()) == []


def test_removing_zero_units_keeps_the_function_exactly() -> None:
    net = _mlp().eval()
    _kill(net[0], [1, 4, 5, 9, 15])
    _kill(net[3], [0, 6])
    x = torch.randn(64, 10)
    result = prune_structured(net, x, amount={"0": 5 / 16, "3": 2 / 8})
    small = result.model
    assert result.kept == {"0": [0, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14], "3": [1, 2, 3, 4, 5, 7]}
    assert small[0].weight.shape == (11, 10) and small[3].weight.shape == (6, 11) and small[5].weight.shape == (3, 6)
    assert (small[0].out_features, small[3].in_features, small[5].in_features) == (11, 11, 6)
    # The removed terms were exact zeros; only the summation order of the matmuls may change.
    torch.testing.assert_close(small(x), net(x), rtol=0, atol=1e-6)
    assert result.params_after < result.params_before
    assert net[0].weight.shape == (16, 10)  # the original is untouched


def test_conv_channels_batchnorm_and_flatten_shrink_together() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 7), nn.ReLU(), nn.Linear(7, 3),
    )  # fmt: skip
    bn = net[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        # Channels 2 and 3 of the first conv and channel 1 of the second are dead: zero rows,
        # and BatchNorm maps them to 0 (gamma = beta = 0), so removing them is exact.
        _kill(net[0], [2, 3])
        bn.weight[[2, 3]] = 0
        bn.bias[[2, 3]] = 0
        _kill(net[4], [1])
    net.eval()
    x = torch.rand(8, 2, 8, 8)
    groups = {g.producer: g for g in unit_groups(net)}
    assert groups["0"].norms == ("1",) and groups["4"].span == 16 and groups["4"].consumer == "7"
    result = prune_structured(net, x, amount={"0": 2 / 6, "4": 1 / 5})
    small = result.model
    assert small[0].out_channels == 4 and small[1].num_features == 4 and small[1].running_mean.shape == (4,)
    assert small[4].in_channels == 4 and small[4].out_channels == 4 and small[7].in_features == 4 * 16
    torch.testing.assert_close(small(x), net(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("target", [0.5, 0.3])
def test_flops_target_is_reached_and_counted_like_module_flops(scope: str, target: float) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 200), nn.ReLU(), nn.Linear(200, 100), nn.ReLU(), nn.Linear(100, 10))
    x = torch.randn(4, 40)
    dense = module_flops(net, x)
    result = prune_structured(net, x, flops=target, scope=scope)
    assert result.flops_before == dense
    assert result.flops_after == module_flops(result.model, x)
    assert result.flops_after <= target * dense
    assert result.flops_after >= (target - 0.05) * dense  # close to the budget, not far below it
    if scope == "layer":  # the same fraction of units everywhere (up to rounding)
        fractions = list(result.removed_fraction.values())
        assert max(fractions) - min(fractions) < 0.02


def test_flops_model_is_bilinear_in_widths_for_convs() -> None:
    model = fit_image(_images(64), _images(32, 1), ImageNetConfig(channels=(4, 6), hidden_sizes=(12,), max_epochs=1))
    x = torch.rand(3, 1, 8, 8)
    groups = unit_groups(model.module)
    fm = _FlopsModel(model.module, groups, (x,))
    assert fm.total(fm.units) == module_flops(model.module, x)
    result = prune_structured(model, model_input := x, amount=0.5)
    widths = {n: after for n, (_, after) in result.widths.items()}
    assert fm.total(widths) == module_flops(result.model.module, model_input)


def _images(n: int, seed: int = 0) -> ImageSplit:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 120, (n, 1, 8, 8))
    for i, c in enumerate(y):
        x[i, 0, 3 * c : 3 * c + 2] += 120
    return ImageSplit(x.astype(np.uint8), y.astype(np.int64))


def test_image_predictor_shrinks_exports_and_reloads(tmp_path: Path) -> None:
    train = _images(300)
    model = fit_image(train, _images(100, 1), ImageNetConfig(channels=(8, 8), hidden_sizes=(32,), max_epochs=2))
    result = prune_structured(model, train, flops=0.5)
    small = result.model
    assert type(small) is type(model) and small.module is not model.module
    assert small.config.channels == tuple(after for n, (_, after) in result.widths.items() if n.startswith("features"))
    assert small.config.hidden_sizes == (result.widths["body.0"][1],)
    assert model.config.channels == (8, 8)  # the original keeps its config and layers
    export_onnx(small, tmp_path / "small.onnx", sample=train.x[:32])
    served = OnnxImagePredictor(tmp_path / "small.onnx")
    np.testing.assert_allclose(served.predict_proba(train.x[:50]), small.predict_proba(train.x[:50]), atol=1e-5)
    save_torch(small, tmp_path / "small.safetensors")
    again = load_predictor(tmp_path / "small.safetensors")
    np.testing.assert_allclose(again.predict_proba(train.x[:50]), small.predict_proba(train.x[:50]), atol=1e-6)


def test_tabular_predictor_config_follows_the_new_widths(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=300), "c": rng.choice(["x", "y", "z"], 300)})
    frame["y"] = np.where(frame["a"] + (frame["c"] == "x") > 0.3, "p", "q")
    split = TabularSplit(frame, infer_schema(frame, "y"))
    model = fit_mlp(split, split, MLPConfig(hidden_sizes=(24, 12), max_epochs=2))
    with torch.no_grad():
        _kill(model.module.body[0], [0, 1, 2, 3])
    result = prune_structured(model, split, amount={"body.0": 4 / 24})
    assert result.model.config.hidden_sizes == (20, 12) and result.model.module.config.hidden_sizes == (20, 12)
    np.testing.assert_allclose(result.model.predict_proba(frame), model.predict_proba(frame), atol=1e-6)
    save_torch(result.model, tmp_path / "m.safetensors")
    assert load_predictor(tmp_path / "m.safetensors").module.body[0].out_features == 20


def test_bad_input_is_refused_with_the_fix() -> None:
    net, x = _mlp(), torch.randn(2, 10)
    with pytest.raises(ValueError, match="exactly one target"):
        prune_structured(net, x)
    with pytest.raises(ValueError, match="exactly one target"):
        prune_structured(net, x, flops=0.5, amount=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        prune_structured(net, x, flops=0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune_structured(net, x, amount=1.0)
    with pytest.raises(ValueError, match="cannot be reached"):
        prune_structured(net, x, flops=0.01)
    with pytest.raises(ValueError, match="no removable units"):
        prune_structured(nn.Sequential(nn.Linear(3, 2)), torch.randn(2, 3), amount=0.5)
    with pytest.raises(ValueError, match="criterion"):
        prune_structured(net, x, amount=0.5, criterion="l3")

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x)) if float(x.sum()) > 0 else self.b(-self.a(x))

    with pytest.raises(TypeError, match="torch.fx"):
        prune_structured(Branchy(), torch.randn(2, 3), amount=0.5)
