"""Unstructured pruning: exact sparsity (layer-wise, global), TF-MOT schedule, folding, sparse storage, OBD."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune as torch_prune

from modelyard.compress import export_onnx
from modelyard.compress._obd import hessian_diagonal, obd_saliency
from modelyard.compress._prune import (
    GradualPruner,
    PolynomialDecay,
    fine_tuner,
    fold_masks,
    load_sparse,
    magnitude_masks,
    prunable_layers,
    prune,
    prune_unstructured,
    save_sparse,
    sparse_sizes,
    weight_sparsity,
)
from modelyard.data import ImageSplit, TabularSplit, infer_schema
from modelyard.models import MLPConfig
from modelyard.train import fit_mlp


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 30), nn.ReLU(), nn.Linear(30, 5)
    )


def _tabular(n: int = 600) -> tuple[TabularSplit, TabularSplit]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n), "color": rng.choice(["red", "blue"], n)})
    signal = frame["x1"] + 0.5 * frame["x2"] + np.where(frame["color"] == "red", 0.7, -0.7)
    frame["y"] = np.where(signal + rng.normal(scale=0.3, size=n) > 0, "yes", "no")
    schema = infer_schema(frame, "y")
    cut = int(0.75 * n)
    return (TabularSplit(frame.iloc[:cut].reset_index(drop=True), schema),
            TabularSplit(frame.iloc[cut:].reset_index(drop=True), schema))


def _images(n: int = 480, seed: int = 0) -> ImageSplit:
    """8x8 images whose class is the brightest of three horizontal bands: learnable by a small MLP."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 120, (n, 1, 8, 8))
    for i, c in enumerate(y):
        x[i, 0, 3 * c : 3 * c + 2] += 120
    return ImageSplit(x.astype(np.uint8), y.astype(np.int64))


# -- masks -------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9])
def test_layer_scope_zeroes_exactly_the_smallest_of_each_layer(sparsity: float) -> None:
    net = _net()
    pruned = prune_unstructured(net, sparsity, scope="layer")
    for name, layer in prunable_layers(net).items():
        w = layer.weight.detach().numpy().reshape(-1)
        n_zero = round(sparsity * w.size)
        reference = np.ones(w.size, bool)
        reference[np.argsort(np.abs(w), kind="stable")[:n_zero]] = False  # numpy: drop the n smallest |w|
        got = pruned.get_submodule(name).weight.detach().numpy().reshape(-1) != 0
        assert got.sum() == w.size - n_zero, f"{name=} {sparsity=}"
        np.testing.assert_array_equal(got, reference, err_msg=f"{name=} {sparsity=}")


def test_global_scope_zeroes_the_smallest_magnitudes_across_layers() -> None:
    net = _net()
    layers = prunable_layers(net)
    flat = np.concatenate([m.weight.detach().numpy().reshape(-1) for m in layers.values()])
    n_zero = round(0.8 * flat.size)
    reference = np.ones(flat.size, bool)
    reference[np.argsort(np.abs(flat), kind="stable")[:n_zero]] = False
    masks = magnitude_masks(net, 0.8, scope="global")
    got = np.concatenate([masks[n].numpy().reshape(-1) for n in layers])
    np.testing.assert_array_equal(got, reference)
    report = weight_sparsity(prune_unstructured(net, 0.8, scope="global"))
    assert report["overall"] == n_zero / flat.size
    assert len({round(v, 3) for k, v in report.items() if k != "overall"}) > 1  # layers end up unequal


def test_masks_only_grow_and_the_original_is_untouched() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    half = prune_unstructured(net, 0.5)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert not torch_prune.is_pruned(net) and torch_prune.is_pruned(half)
    lower = prune_unstructured(half, 0.3)  # asking for less keeps what was pruned
    assert weight_sparsity(lower) == weight_sparsity(half)
    more = prune_unstructured(half, 0.8)
    for name in prunable_layers(net):
        kept_half = half.get_submodule(name).weight != 0
        kept_more = more.get_submodule(name).weight != 0
        assert not (kept_more & ~kept_half).any(), name  # nothing revived


def test_obd_scores_rank_weights() -> None:
    net = _net()
    scores = {n: torch.rand_like(m.weight) for n, m in prunable_layers(net).items()}
    masks = magnitude_masks(net, 0.5, scores=scores)
    for n, s in scores.items():
        assert float(s[~masks[n]].max()) <= float(s[masks[n]].min())


def test_fold_leaves_zeros_and_no_hooks_and_dense_keys() -> None:
    net = _net()
    x = torch.rand(5, 1, 6, 6)
    pruned = prune_unstructured(net, 0.6)
    expected = pruned(x)
    fold_masks(pruned)
    assert not torch_prune.is_pruned(pruned)
    assert all(not m._forward_pre_hooks for m in pruned.modules())
    assert set(pruned.state_dict()) == set(net.state_dict())
    assert torch.equal(pruned(x), expected)
    assert weight_sparsity(pruned)["overall"] == pytest.approx(0.6, abs=1e-3)


def test_exported_onnx_carries_the_zeros(tmp_path: Path) -> None:
    train, valid = _tabular()
    predictor = fit_mlp(train, valid, MLPConfig(max_epochs=2, hidden_sizes=(64, 32), numeric_embedding="none"))
    pruned = fold_masks(prune_unstructured(predictor, 0.9, scope="global"))
    assert type(pruned) is type(predictor) and pruned.module is not predictor.module
    export_onnx(pruned, tmp_path / "p.onnx", sample=valid.X)
    weights = {tuple(m.weight.shape): int((m.weight == 0).sum()) for m in prunable_layers(pruned).values()}
    found = {}
    for init in onnx.load(tmp_path / "p.onnx").graph.initializer:
        arr = numpy_helper.to_array(init)
        for shape, zeros in weights.items():
            if arr.shape in (shape, shape[::-1]) and arr.ndim == 2:
                found[shape] = int((arr == 0).sum()) == zeros
    assert found and all(found.values()), found


# -- schedule ------------------------------------------------------------------------------


def _tfmot(step: int, si: float, sf: float, begin: int, end: int, power: float) -> float:
    """tfmot.sparsity.keras.PolynomialDecay.__call__, transcribed from TF Model Optimization."""
    p = min(1.0, max(0.0, (step - begin) / (end - begin)))
    return (si - sf) * (1 - p) ** power + sf


@pytest.mark.parametrize("step", [0, 10, 99, 100, 137, 250, 399, 400, 401, 1000])
@pytest.mark.parametrize(("si", "sf", "power"), [(0.0, 0.9, 3), (0.5, 0.8, 3), (0.2, 0.95, 1.5)])
def test_polynomial_decay_matches_tfmot(step: int, si: float, sf: float, power: float) -> None:
    s = PolynomialDecay(si, sf, begin_step=100, end_step=400, power=power, frequency=50)
    assert s.sparsity(step) == pytest.approx(_tfmot(step, si, sf, 100, 400, power), abs=1e-15), f"{step=}"
    # TF-MOT: prune when begin <= step <= end and (step - begin) % frequency == 0.
    assert s.should_prune(step) == (100 <= step <= 400 and (step - 100) % 50 == 0), f"{step=}"
    assert s(step) == (s.should_prune(step), s.sparsity(step))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"initial_sparsity": 1.0}, ValueError, "initial_sparsity"),
        ({"final_sparsity": -0.1}, ValueError, "final_sparsity"),
        ({"end_step": 0}, ValueError, "end_step must be > begin_step"),
        ({"begin_step": -1}, ValueError, "begin_step"),
        ({"frequency": 0}, ValueError, "frequency"),
        ({"frequency": 2.5}, TypeError, "frequency"),
    ],
)
def test_polynomial_decay_refuses_bad_parameters(kwargs: dict, error: type, match: str) -> None:
    params = {"initial_sparsity": 0.0, "final_sparsity": 0.9, "begin_step": 0, "end_step": 10} | kwargs
    with pytest.raises(error, match=match):
        PolynomialDecay(**params)


def test_gradual_pruner_follows_the_schedule_while_fine_tuning() -> None:
    from modelyard.models import ImageNetConfig
    from modelyard.train import fit_image

    train, valid = _images(), _images(240, seed=1)
    dense = fit_image(train, valid, ImageNetConfig(arch="mlp", hidden_sizes=(48,), max_epochs=3, batch_size=32))
    steps_per_epoch = math.ceil(len(train) / 32)  # 15
    schedule = PolynomialDecay(0.0, 0.85, begin_step=0, end_step=2 * steps_per_epoch, frequency=4)
    pruner = GradualPruner(schedule, scope="global").fit(dense, fine_tuner(train, batch_size=32), epochs=3)
    assert pruner.steps_ == 3 * steps_per_epoch and pruner.reached_final_
    steps = [s for s, _ in pruner.updates_]
    assert steps == sorted({0, *range(4, 2 * steps_per_epoch + 1, 4), 2 * steps_per_epoch})
    assert [v for _, v in pruner.updates_] == [schedule.sparsity(s) for s in steps]
    total = sum(m.weight.numel() for m in prunable_layers(dense).values())
    assert pruner.sparsity_["overall"] == round(0.85 * total) / total
    assert not torch_prune.is_pruned(pruner.model_.module)  # folded
    accuracy = (pruner.model_.predict(valid) == valid.y).mean()
    assert accuracy > 0.8, accuracy  # the task is easy; a fine-tuned 85%-sparse MLP still solves it


def test_gradual_pruner_applies_the_final_sparsity_when_training_stops_short() -> None:
    net = _net()
    schedule = PolynomialDecay(0.0, 0.7, begin_step=0, end_step=1000, frequency=10)
    with pytest.warns(RuntimeWarning, match="below the final"):
        pruner = GradualPruner(schedule).fit(net, lambda m, epochs: None, epochs=1)
    assert not pruner.reached_final_
    for name, layer in prunable_layers(net).items():
        assert pruner.sparsity_[name] == round(0.7 * layer.weight.numel()) / layer.weight.numel()


@pytest.fixture(scope="module")
def small_image_model() -> tuple[object, ImageSplit]:
    from modelyard.models import ImageNetConfig
    from modelyard.train import fit_image

    train = _images(240)
    return fit_image(train, train, ImageNetConfig(arch="mlp", hidden_sizes=(24,), max_epochs=2)), train


@pytest.mark.parametrize(("method", "epochs"), [("magnitude", 0), ("obd", 0), ("magnitude", 2), ("obd", 1)])
def test_prune_in_one_call(method: str, epochs: int, small_image_model) -> None:
    dense, train = small_image_model
    pruned = prune(dense, train, sparsity=0.75, method=method, epochs=epochs, batch_size=32)
    total = sum(m.weight.numel() for m in prunable_layers(dense).values())
    assert weight_sparsity(pruned)["overall"] == round(0.75 * total) / total
    assert not torch_prune.is_pruned(pruned.module) and not torch_prune.is_pruned(dense.module)
    with pytest.raises(ValueError, match="Unknown pruning method"):
        prune(dense, train, method="random")


# -- storage ---------------------------------------------------------------------------------


def test_sparse_storage_round_trips_and_is_small(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    pruned = fold_masks(prune_unstructured(net, 0.9))
    path = save_sparse(pruned, tmp_path / "p.safetensors")
    state = load_sparse(path)
    assert set(state) == set(pruned.state_dict())
    assert all(torch.equal(state[k], v) for k, v in pruned.state_dict().items())
    dense, sparse = sparse_sizes(net), sparse_sizes(pruned)
    # Random float32 weights hardly compress (gzip keeps ~90% of them). At 90% zeros the
    # information is about 0.1 * 32 bits + H(0.1) = 3.7 bits per weight, 11.6% of dense;
    # gzip gets within ~2x of that: 0.3x leaves room and still fails a format storing zeros as floats.
    assert dense.dense_gzip_bytes > 0.85 * dense.dense_bytes
    assert sparse.dense_gzip_bytes < 0.3 * dense.dense_gzip_bytes
    # Bitmask + nonzero values: 1/8 + 0.1 * 4 bytes per weight = 13% of 4 bytes, before gzip.
    assert sparse.sparse_bytes < 0.14 * dense.dense_bytes
    assert sparse.zero_fraction == pytest.approx(0.9, abs=1e-3)


# -- optimal brain damage ----------------------------------------------------------------------


def _exact_hessian(net: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    ws = [net.get_submodule(n).weight for n in names]
    sizes = [w.numel() for w in ws]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, sizes)
        params = {f"{n}.weight": p.reshape(w.shape) for n, p, w in zip(names, parts, ws, strict=True)}
        return F.cross_entropy(torch.func.functional_call(net, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, torch.cat([w.detach().reshape(-1) for w in ws]))


def _tiny(act: nn.Module) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), act, nn.Linear(5, 4), act, nn.Linear(4, 3)).double()
    return net, torch.randn(40, 3, dtype=torch.float64), torch.randint(0, 3, (40,))


def test_gauss_newton_diagonal_is_the_exact_hessian_diagonal_of_a_relu_net() -> None:
    net, x, y = _tiny(nn.ReLU())
    names = ["0", "2", "4"]
    exact = torch.diagonal(_exact_hessian(net, names, x, y))
    est = hessian_diagonal(net, (x, y), method="gauss-newton", batch_size=16)  # 3 batches: the sum over batches
    got = torch.cat([est[n].reshape(-1) for n in names])
    # A ReLU net is piecewise linear in each single weight, so the Hessian diagonal has no
    # second-derivative term and equals the Gauss-Newton diagonal: only float64 rounding differs.
    torch.testing.assert_close(got, exact, rtol=1e-9, atol=1e-14)
    sal = obd_saliency(net, (x, y))
    for n in names:
        torch.testing.assert_close(sal[n], 0.5 * est[n] * net.get_submodule(n).weight.detach() ** 2)


def test_hutchinson_diagonal_converges_to_the_exact_one_of_a_tanh_net() -> None:
    net, x, y = _tiny(nn.Tanh())
    names = ["0", "2", "4"]
    hessian = _exact_hessian(net, names, x, y)
    exact = torch.diagonal(hessian)
    n_probes = 400
    est = hessian_diagonal(net, (x, y), method="hutchinson", n_probes=n_probes, batch_size=40)
    got = torch.cat([est[n].reshape(-1) for n in names])
    # With Rademacher probes, entry i of the estimate has variance sum_{j != i} H_ij^2 / n:
    # allow 5 standard deviations (47 entries: a false alarm has probability ~3e-5 if the
    # errors were Gaussian; at 400 probes they are sums of 400 bounded terms, close to it).
    sd = ((hessian.square().sum(1) - exact.square()) / n_probes).sqrt()
    assert bool(((got - exact).abs() <= 5 * sd + 1e-12).all()), float(((got - exact).abs() / sd).max())
    gn = hessian_diagonal(net, (x, y), method="gauss-newton")
    gap = torch.cat([gn[n].reshape(-1) for n in names]) - exact
    assert float(gap.abs().max()) > 1e-3  # with tanh the Gauss-Newton diagonal is only an approximation


def test_obd_works_on_a_predictor_with_conv_layers() -> None:
    from modelyard.models import ImageNetConfig
    from modelyard.train import fit_image

    train = _images(200)
    model = fit_image(train, train, ImageNetConfig(channels=(3,), hidden_sizes=(8,), max_epochs=1))
    sal = obd_saliency(model, train, max_rows=64)
    assert set(sal) == set(prunable_layers(model))
    assert all(bool((s >= 0).all()) and s.shape == prunable_layers(model)[n].weight.shape for n, s in sal.items())
    pruned = prune_unstructured(model, 0.5, scope="global", scores=sal)
    total = sum(s.numel() for s in sal.values())
    assert weight_sparsity(pruned)["overall"] == round(0.5 * total) / total


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "error"), [(1.0, ValueError), (-0.1, ValueError), (1.5, ValueError), ("0.5", TypeError)])
def test_sparsity_outside_the_unit_interval_is_refused(value: object, error: type) -> None:
    with pytest.raises(error, match=r"\[0, 1\)"):
        prune_unstructured(_net(), value)


def test_bad_arguments_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="no prunable layers"):
        prune_unstructured(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="scope"):
        prune_unstructured(_net(), 0.5, scope="net")
    with pytest.raises(ValueError, match="not prunable layers"):
        prune_unstructured(_net(), 0.5, layers=["1"])
    with pytest.raises(TypeError, match="list of layer names"):
        prune_unstructured(_net(), 0.5, layers="3")
    with pytest.raises(TypeError, match="scope='layer'"):
        prune_unstructured(_net(), {"3": 0.5}, scope="global")
    with pytest.raises(TypeError, match="TorchPredictor"):
        prune_unstructured(object(), 0.5)
    with pytest.raises(ValueError, match="hutchinson"):
        hessian_diagonal(_net(), (torch.rand(2, 1, 6, 6), torch.tensor([0, 1])), method="exact")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fold_masks(_net()) is not None  # folding an unpruned model is a no-op
