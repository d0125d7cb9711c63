"""Image classifiers: fitting, safetensors round trip, ONNX export with parity, measurement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelyard.compress import export_onnx, measure
from modelyard.data import ImageSplit
from modelyard.errors import ModelFormatError, SchemaMismatchError
from modelyard.models import ImageNetConfig, ImagePredictor, OnnxImagePredictor, load_predictor, save_torch
from modelyard.train import fit_image


def _images(n: int, seed: int) -> ImageSplit:
    """Three classes of 1x12x12 images: a bright bar at the top, the middle or the bottom."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 1, 12, 12)).astype(np.uint8)
    for i, k in enumerate(y):
        x[i, 0, 4 * k : 4 * k + 3, 2:10] = 220
    return ImageSplit(x, y.astype(np.int64))


@pytest.fixture(scope="module")
def splits() -> tuple[ImageSplit, ImageSplit]:
    return _images(300, 0), _images(120, 1)


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_fit_learns_and_is_deterministic(splits, arch: str) -> None:
    train, valid = splits
    config = ImageNetConfig(arch=arch, channels=(4, 8), hidden_sizes=(16,), max_epochs=6, lr=3e-3)
    model = fit_image(train, valid, config, classes=["top", "middle", "bottom"])
    assert (model.predict(valid) == valid.y).mean() > 0.9  # the bars are unmistakable
    again = fit_image(train, valid, config, classes=["top", "middle", "bottom"])
    for a, b in zip(model.module.state_dict().values(), again.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    proba = model.predict_proba(valid.x[:, 0])  # (N, H, W) is accepted for one channel
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)  # float32 softmax rounding


def test_pixels_are_standardized_with_training_statistics(splits) -> None:
    train, valid = splits
    model = fit_image(train, valid, ImageNetConfig(arch="mlp", hidden_sizes=(4,), max_epochs=1))
    pixels = train.x.astype(np.float64) / 255
    assert model.module.mean.item() == pytest.approx(pixels.mean(), rel=1e-6)  # float32 storage
    assert model.module.std.item() == pytest.approx(pixels.std(), rel=1e-6)


def test_save_load_and_onnx_export_parity(splits, tmp_path: Path) -> None:
    train, valid = splits
    model = fit_image(train, valid, ImageNetConfig(channels=(4,), hidden_sizes=(8,), max_epochs=2))
    back = load_predictor(save_torch(model, tmp_path / "m.safetensors"))
    assert isinstance(back, ImagePredictor) and back.classes == model.classes
    np.testing.assert_array_equal(back.predict_proba(valid), model.predict_proba(valid))
    result = export_onnx(model, tmp_path / "m.onnx", sample=valid.x)
    assert result.max_abs_diff < 1e-5  # float32 conv/softmax in two runtimes: ~1e-7
    served = load_predictor(result.path)
    assert isinstance(served, OnnxImagePredictor) and served.image_shape == (1, 12, 12)
    np.testing.assert_allclose(served.predict_proba(valid), model.predict_proba(valid), atol=1e-5)
    m = measure(result.path, valid, batch_sizes=(1, 8), repeats=5, warmup=1)
    assert m.overall["accuracy"] == pytest.approx((model.predict(valid) == valid.y).mean())
    assert set(m.by_slice["class"]) <= set(model.classes) and m.latency[8].batch_size == 8


def test_bad_images_are_refused(splits, tmp_path: Path) -> None:
    train, valid = splits
    model = fit_image(train, valid, ImageNetConfig(arch="mlp", hidden_sizes=(4,), max_epochs=1))
    with pytest.raises(SchemaMismatchError, match=r"\(N, 1, 12, 12\)"):
        model.predict(np.zeros((2, 1, 10, 10), dtype=np.uint8))
    with pytest.raises(TypeError, match="ImageSplit"):
        fit_image(train.x, valid)
    with pytest.raises(ValueError, match="too small"):
        fit_image(train, valid, ImageNetConfig(channels=(2, 2, 2, 2, 2)))
    (tmp_path / "bad.onnx").write_bytes(b"junk")
    with pytest.raises(ModelFormatError):
        OnnxImagePredictor(tmp_path / "bad.onnx")
