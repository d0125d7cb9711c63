"""TCAV: directional derivatives against finite differences, a real concept is significant, a random one is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelyard.data import ImageSplit
from modelyard.explain import (
    concept_activation_vector,
    directional_derivatives,
    layer_activations,
    tcav,
)
from modelyard.models import ImageNetConfig
from modelyard.train import fit_image


def _noise(rng, n: int) -> np.ndarray:
    return rng.integers(0, 70, (n, 1, 12, 12)).astype(np.uint8)


def _bars(rng, n: int, horizontal: bool) -> np.ndarray:
    x = _noise(rng, n)
    for i in range(n):
        p = rng.integers(1, 10)
        if horizontal:
            x[i, 0, p : p + 2, 1:11] = 230
        else:
            x[i, 0, 1:11, p : p + 2] = 230
    return x


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    x = np.concatenate([_bars(rng, 150, True), _bars(rng, 150, False), _noise(rng, 150)])
    y = np.repeat(np.arange(3), 150).astype(np.int64)
    split = ImageSplit(x, y)
    return fit_image(split, split, ImageNetConfig(channels=(6,), hidden_sizes=(16,), max_epochs=6, lr=3e-3),
                     classes=["horizontal", "vertical", "noise"])


def test_directional_derivative_equals_finite_differences(model) -> None:
    rng = np.random.default_rng(1)
    x = _bars(rng, 5, True)
    acts = layer_activations(model, x, "features.0")
    cav = rng.normal(size=acts.shape[1])
    cav /= np.linalg.norm(cav)
    grad = directional_derivatives(model, x, "features.0", cav, target=0)
    layer = dict(model.module.named_modules())["features.0"]
    eps = 1e-3
    outs = []
    for sign in (1, -1):
        def push(m, i, out, s=sign):
            return out + s * eps * torch.as_tensor(cav, dtype=out.dtype).view(out.shape[1:])

        handle = layer.register_forward_hook(push)
        with torch.no_grad():
            outs.append(model.module(torch.from_numpy(x).float() / 255)[:, 0].double().numpy())
        handle.remove()
    fd = (outs[0] - outs[1]) / (2 * eps)
    # At the conv output (before ReLU and max pooling) the logit is smooth except at ReLU kinks,
    # which +-eps rarely crosses. (After the ReLU, zeros tie in the max pool and a push moves
    # every tied entry: finite differences then measure a one-sided slope, not the gradient.)
    # Central differences in float32: error ~ eps^2 * curvature + rounding 1e-7 / eps.
    np.testing.assert_allclose(grad, fd, atol=2e-3)


def test_cav_separates_a_real_concept(model) -> None:
    rng = np.random.default_rng(2)
    concept = layer_activations(model, _bars(rng, 60, True), "features.1")
    random = layer_activations(model, _noise(rng, 60), "features.1")
    cav, acc = concept_activation_vector(concept, random)
    assert acc > 0.9 and np.linalg.norm(cav) == pytest.approx(1.0)
    # The CAV points toward the concept: concept activations project higher than random ones.
    assert (concept @ cav).mean() > (random @ cav).mean()


def test_tcav_finds_the_class_concept_and_not_a_random_one(model) -> None:
    rng = np.random.default_rng(3)
    inputs = _bars(rng, 40, True)
    pool = _noise(rng, 200)
    real = tcav(model, inputs, _bars(rng, 40, True), pool, layer="features.1", target=0, n_random=4,
                concept_name="horizontal stripes")
    assert real.significant and real.score > 0.8 and real.cav_accuracy.min() > 0.9
    fake = tcav(model, inputs, _noise(np.random.default_rng(9), 40), pool, layer="features.1", target=0, n_random=4)
    assert not fake.significant and fake.cav_accuracy.mean() < 0.65  # noise is no concept: CAVs at chance


def test_bad_input(model) -> None:
    rng = np.random.default_rng(4)
    x = _noise(rng, 30)
    with pytest.raises(ValueError, match="Layer 'conv9' is not in the model; its layers are"):
        layer_activations(model, x, "conv9")
    with pytest.raises(ValueError, match="random_pool has 30 images"):
        tcav(model, x, x[:20], x, layer="features.1", target=0)
    with pytest.raises(ValueError, match="target must be a class index in 0..2"):
        tcav(model, x, x[:5], _noise(rng, 40), layer="features.1", target=7)
