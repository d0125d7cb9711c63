"""Integrated gradients and saliency: against captum, completeness, quadrature, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from modelyard.data import ImageSplit, TabularSplit, infer_schema
from modelyard.explain import integrated_gradients, quadrature, saliency
from modelyard.models import ImageNetConfig, MLPConfig
from modelyard.train import fit_image, fit_mlp

captum = pytest.importorskip("captum", reason="captum is the reference implementation (dev extra)")


@pytest.fixture(scope="module")
def image_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    x = rng.integers(0, 80, (200, 1, 10, 10)).astype(np.uint8)
    for i, k in enumerate(y):
        x[i, 0, 3 * k : 3 * k + 2, 2:8] = 230
    split = ImageSplit(x, y.astype(np.int64))
    return fit_image(split, split, ImageNetConfig(channels=(4,), hidden_sizes=(8,), max_epochs=3, lr=3e-3)), x


def _tabular(numeric_only: bool = False):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"x1": rng.normal(size=400), "x2": rng.exponential(3.0, size=400)})
    if not numeric_only:
        frame["color"] = rng.choice(["red", "green", "blue"], 400)
    signal = frame["x1"] - 0.3 * frame["x2"] + (frame["color"] == "red" if not numeric_only else 0)
    frame["y"] = np.where(signal > 0, "yes", "no")
    frame.loc[5, "x1"] = np.nan  # a missing value takes the imputed one's path
    split = TabularSplit(frame, infer_schema(frame, "y"))
    return fit_mlp(split, split, MLPConfig(max_epochs=3, hidden_sizes=(16,), numeric_embedding="periodic")), frame


def test_quadrature_rules_match_captum() -> None:
    from captum.attr._utils.approximation_methods import approximation_parameters

    for method in ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle"):
        steps_fn, alphas_fn = approximation_parameters(method)
        a, w = quadrature(9, method)
        np.testing.assert_allclose(a, alphas_fn(9), atol=1e-7)  # captum builds Riemann points in float32
        np.testing.assert_allclose(w, steps_fn(9), atol=1e-12)
    # captum's trapezoid weights are 1/n (halved at the ends) and sum to 1 - 1/n; the rule on
    # n points spaced 1/(n-1) has weights 1/(n-1) and integrates a linear function exactly.
    a, w = quadrature(9, "riemann_trapezoid")
    assert w.sum() == pytest.approx(1.0) and np.sum(w * (3 * a + 1)) == pytest.approx(2.5)
    a, w = quadrature(5)  # Gauss-Legendre with 5 nodes integrates degree 9 exactly
    assert np.sum(w * a**9) == pytest.approx(1 / 10, abs=1e-14)


def test_image_ig_equals_captum(image_model) -> None:
    from captum.attr import IntegratedGradients

    model, x = image_model
    mine = integrated_gradients(model, x[:6], steps=32)
    wrapped = lambda t: torch.softmax(model.module(t), dim=1)
    pixels = torch.from_numpy(x[:6]).float() / 255
    ref = IntegratedGradients(wrapped).attribute(pixels, baselines=torch.zeros_like(pixels),
                                                 target=torch.from_numpy(mine.target), n_steps=32)
    np.testing.assert_allclose(mine.values, ref.numpy(), atol=1e-5)  # float32 sums in another order
    assert mine.heatmap().shape == (6, 10, 10)


def test_image_saliency_equals_captum(image_model) -> None:
    from captum.attr import Saliency

    model, x = image_model
    mine = saliency(model, x[:4], target=1)
    pixels = (torch.from_numpy(x[:4]).float() / 255).requires_grad_(True)
    ref = Saliency(lambda t: torch.softmax(model.module(t), dim=1)).attribute(pixels, target=1)
    np.testing.assert_allclose(mine.values, ref.numpy(), atol=1e-6)


def test_tabular_numeric_ig_equals_captum() -> None:
    from captum.attr import IntegratedGradients

    model, frame = _tabular(numeric_only=True)
    rows = frame.iloc[:8]
    mine = integrated_gradients(model, rows, baseline={"x1": 0.0, "x2": 1.0}, steps=40, method="riemann_middle",
                                output="logit")
    x = torch.from_numpy(np.nan_to_num(rows[["x1", "x2"]].to_numpy(np.float32), nan=0.0))
    base = torch.tensor([[0.0, 1.0]]).repeat(8, 1)
    ref = IntegratedGradients(lambda t: model.module(t, None)).attribute(
        x, baselines=base, target=torch.from_numpy(mine.target), n_steps=40, method="riemann_middle")
    keep = [i for i in range(8) if i != 5]
    np.testing.assert_allclose(mine.values[keep], ref.numpy()[keep], atol=1e-5)  # float32


def test_completeness_with_categorical_embeddings() -> None:
    model, frame = _tabular()
    rows = frame.iloc[:20]
    coarse = integrated_gradients(model, rows, steps=16)
    fine = integrated_gradients(model, rows, steps=256)
    # ReLU kinks (hidden layer, periodic embedding) make the path integrand only piecewise smooth,
    # so the quadrature error falls about as 1/steps (measured: 8.8e-3 at 16 steps, 3.8e-4 at 256,
    # 1.8e-4 at 1024, where float32 rounding takes over). A wrong path or a missed input would
    # leave a gap that does not shrink.
    assert np.abs(fine.delta).max() < 1e-3
    assert np.abs(fine.delta).max() < np.abs(coarse.delta).max() / 5
    np.testing.assert_allclose(fine.values.sum(axis=1), fine.output - fine.baseline_output, atol=1e-3)
    assert fine.to_frame().columns.tolist() == ["x1", "x2", "color"]
    assert np.isfinite(fine.values).all()  # the missing x1 of row 5 uses the imputed value
    sal = saliency(model, rows)
    assert sal.values.shape == (20, 3) and (sal.values >= 0).all()


def test_bad_input() -> None:
    from modelyard.models import GBMConfig
    from modelyard.train import fit_gbm

    _, frame = _tabular()
    split = TabularSplit(frame, infer_schema(frame, "y"))
    gbm = fit_gbm(split, split, GBMConfig(max_iter=5), n_threads=1)
    with pytest.raises(TypeError, match="permutation_importance, kernel_shap or lime"):
        integrated_gradients(gbm, frame)
    model, _ = _tabular()
    with pytest.raises(ValueError, match="steps"):
        integrated_gradients(model, frame.iloc[:2], steps=0)
    with pytest.raises(ValueError, match="Unknown quadrature"):
        integrated_gradients(model, frame.iloc[:2], method="simpson")
    with pytest.raises(ValueError, match="classes are 0..1"):
        integrated_gradients(model, frame.iloc[:2], target=3)
