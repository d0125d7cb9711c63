"""The NAS runner on a few hundred Fashion-MNIST images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelyard.data import ImageData, ImageSplit
from modelyard.errors import DataError, SpecError
from modelyard.search._cells import CellNetwork, Genotype
from modelyard.search._nas import nas, subset, train_and_score


@pytest.fixture(scope="module")
def fashion() -> ImageData:
    """300 training and 200 validation images of Fashion-MNIST (a synthetic stand-in if the files are missing)."""
    from modelyard.data import load

    try:
        data = load("fashion_mnist", download=False)
    except (
        DataError,
        OSError,
    ):  # no data files here: two classes of noisy stripes, same shapes
        rng = np.random.default_rng(0)

        def split(n: int) -> ImageSplit:
            y = rng.integers(0, 2, n)
            x = rng.integers(0, 60, (n, 1, 28, 28))
            x[y == 1, :, ::4] += 150
            x[y == 0, :, :, ::4] += 150
            return ImageSplit(x.astype(np.uint8), y.astype(np.int64))

        return ImageData("stripes", split(300), split(200), split(10), ("h", "v"))
    return ImageData(
        data.name,
        subset(data.train, 300, 0),
        subset(data.valid, 200, 0),
        subset(data.test, 10, 0),
        data.classes,
    )


def test_train_and_score_is_seeded_and_learns(fashion: ImageData) -> None:
    g = Genotype([(1, "conv_3x3", 0, "max_pool_3x3")])
    scores = []
    for _ in range(2):
        torch.manual_seed(0)
        net = CellNetwork(g, channels=4, stem_stride=2, n_classes=fashion.n_classes)
        scores.append(
            train_and_score(
                net, fashion.train, fashion.valid, epochs=1, batch_size=32, seed=0
            )
        )
    assert scores[0] == scores[1]
    assert scores[0] > 1.5 / fashion.n_classes  # well above chance after one epoch
    with pytest.raises(SpecError, match="Unknown optimizer 'rmsprop'"):
        train_and_score(net, fashion.train, fashion.valid, optimizer="rmsprop")


@pytest.mark.parametrize("strategy", ["pnas", "rl"])
def test_tiny_nas_run(fashion: ImageData, strategy: str) -> None:
    cache: dict = {}
    kwargs = {
        "models": 4,
        "epochs": 1,
        "n_blocks": 2,
        "beam": 2,
        "initial": 2,
        "channels": 4,
        "train_size": None,
        "valid_size": None,
        "batch_size": 32,
        "seed": 0,
        "cache": cache,
    }
    seen = []
    result = nas(fashion, strategy, callback=seen.append, **kwargs)
    assert len(result.records) == 4 and seen == result.records
    assert [r.index for r in result.records] == [1, 2, 3, 4]
    for r in result.records:
        assert (
            0.0 <= r.accuracy <= 1.0 and r.params > 0 and r.flops > 0 and r.seconds > 0
        )
        assert r.genotype is not None and r.description == r.genotype.describe()
    if strategy == "pnas":
        assert [r.n_blocks for r in result.records] == [1, 1, 2, 2]
        assert result.records[2].extra["round"] == 1
    assert result.best.accuracy == max(r.accuracy for r in result.records)
    assert result.models_to_reach(result.best.accuracy) == result.best.index
    assert result.seconds_to_reach(2.0) is None
    frame = result.to_dataframe()
    assert list(frame["accuracy"]) == [r.accuracy for r in result.records]
    assert {"index", "description", "accuracy", "params", "flops", "seconds"} <= set(
        frame.columns
    )
    # the same settings again: every cell comes from the cache, with the same accuracy
    again = nas(fashion, strategy, **kwargs)
    assert all(r.cached for r in again.records)
    assert [r.accuracy for r in again.records] == [r.accuracy for r in result.records]


def test_nas_errors(fashion: ImageData) -> None:
    with pytest.raises(
        SpecError,
        match=r"Unknown NAS strategy 'bogus'; use one of \[.*'morphism'.*'pnas'.*'rl'",
    ):
        nas(fashion, "bogus")
    with pytest.raises(SpecError, match="models must be an integer >= 1"):
        nas(fashion, "random", models=0)
    with pytest.raises(SpecError, match="nas needs an ImageData"):
        nas("fashion_mnist", "random")  # type: ignore[arg-type]
