"""The nas step of an image pipeline: NAS on a tiny Fashion-MNIST subset, its best network a candidate
that goes through evaluate, compress and export; the stored network reloads; the spec's nas errors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from modelyard import pipeline
from modelyard.data import load_image_split
from modelyard.errors import ModelFormatError, SpecError
from modelyard.pipeline._spec import parse_spec

from ._synthetic import make_csv

needs_data = pytest.mark.skipif(
    not os.environ.get("MODELYARD_DATA_DIR") or not Path(os.environ["MODELYARD_DATA_DIR"]).is_dir(),
    reason="needs Fashion-MNIST: set MODELYARD_DATA_DIR to the shared data folder (../shared/data)")

SUBSAMPLE = {"train": 300, "valid": 150, "test": 150, "seed": 0}
#: A tiny search: 3 one-block cells of 4 channels, 1 epoch each, on every train/valid image.
NAS = {"strategy": "pnas", "models": 3, "epochs": 1, "n_blocks": 1, "channels": 4, "batch_size": 32,
       "train_size": None, "valid_size": None}
STEPS = ["data", "nas", "train.cnn", "evaluate", "compress", "export", "report"]


def _spec(path: Path, nas: dict, *, compress: bool = True) -> Path:
    spec = {
        "name": "fmnist-nas",
        "data": {"source": "fashion_mnist", "split": {"valid": 0.1, "seed": 0}, "subsample": SUBSAMPLE},
        "nas": nas,
        # A cnn that barely learns (lr 1e-7: its weights stay at their initialization, ~10% accuracy),
        # so the searched network (0.27 here) is the one chosen, and export and compress take it.
        "train": {"models": {"cnn": {"family": "cnn", "channels": [4], "hidden_sizes": [16], "max_epochs": 1,
                                     "batch_size": 32, "lr": 1e-7}}},
        "evaluate": {"bootstrap": 0},
        "export": {"parity_rows": 100},
    }
    if compress:
        spec["compress"] = {"model": "nas", "variants": ["dynamic_int8"], "repeats": 2, "warmup": 0,
                            "batch_sizes": [1], "calibration_rows": 64}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[pipeline.RunResult, pipeline.RunResult]:
    """Two runs of the same spec (the second should be fully cached), in a fresh folder and store."""
    if not os.environ.get("MODELYARD_DATA_DIR") or not Path(os.environ["MODELYARD_DATA_DIR"]).is_dir():
        pytest.skip("needs Fashion-MNIST: set MODELYARD_DATA_DIR to the shared data folder (../shared/data)")
    root = tmp_path_factory.mktemp("nas-pipeline")
    spec = _spec(root / "spec.yaml", NAS)
    store = f"sqlite:///{root / 'meta.db'}"
    first = pipeline.run(spec, store=store, runs_dir=root / "runs", quiet=True)
    second = pipeline.run(spec, store=store, runs_dir=root / "runs", quiet=True)
    return first, second


@needs_data
def test_nas_step_writes_its_search_and_is_cached(runs: tuple) -> None:
    first, second = runs
    assert [s.name for s in first.steps] == STEPS
    assert all(s.status == "ran" for s in first.steps)
    assert all(s.status == "cached" for s in second.steps)  # an unchanged spec reuses every step, nas included
    folder = first.root / "nas"
    result = json.loads((folder / "nas.json").read_text())
    assert result["strategy"] == "pnas" and len(result["records"]) == 3
    assert result["settings"]["models"] == 3 and result["settings"]["train_size"] == 300
    best = max(result["records"], key=lambda r: (r["accuracy"], -r["index"]))
    assert result["best"]["index"] == best["index"]
    with (folder / "leaderboard.csv").open() as f:
        board = list(csv.DictReader(f))
    assert len(board) == 3 and int(board[0]["index"]) == best["index"]  # best first
    assert (folder / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    architecture = json.loads((folder / "architecture.json").read_text())
    assert architecture["kind"] == "cell" and architecture["channels"] == 4
    assert [list(b) for b in architecture["genotype"]] == best["genotype"]
    fit = json.loads((folder / "fit.json").read_text())
    assert fit["family"] == "nas" and fit["nas"]["strategy"] == "pnas" and fit["nas"]["budget"] == 3
    # nas() keeps no weights: the step retrained the best cell exactly as the search did (same subset,
    # seed and settings on one thread), so it scores the very accuracy the search recorded.
    assert fit["retrained_accuracy"] == best["accuracy"] == fit["search_accuracy"]


@needs_data
def test_nas_model_is_a_candidate_and_is_exported(runs: tuple) -> None:
    import onnxruntime as ort

    from modelyard.pipeline._image import load_image_model

    first, _ = runs
    evaluation = json.loads((first.root / "evaluate" / "evaluation.json").read_text())
    assert set(evaluation["models"]) == {"nas", "cnn"}
    entry = evaluation["models"]["nas"]
    assert entry["family"] == "nas"
    assert set(entry["test"]["by_slice"]["class"]) == set(json.loads(
        (first.root / "data" / "schema.json").read_text())["schema"]["classes"])
    fit = json.loads((first.root / "nas" / "fit.json").read_text())
    # valid_size null: the search scored every validation image, as the evaluate step does.
    assert entry["valid"]["overall"]["accuracy"] == fit["search_accuracy"]
    test = load_image_split(first.root / "data" / "test.npz")
    predictor = load_image_model(first.root / "nas" / "model.safetensors")
    proba = predictor.predict_proba(test.x)
    # 1e-12: the same float64 accuracy of the same predictions.
    assert entry["test"]["overall"]["accuracy"] == pytest.approx(float(np.mean(proba.argmax(1) == test.y)), abs=1e-12)
    assert evaluation["chosen"]["model"] == "nas"  # the cnn is crippled (lr 1e-7), see _spec
    export = json.loads((first.root / "export" / "export.json").read_text())
    assert export["model"] == "nas" and export["family"] == "nas" and export["inputs"] == "image"
    session = ort.InferenceSession(str(first.root / "model.onnx"), providers=["CPUExecutionProvider"])
    (served,) = session.run(["probabilities"], {"image": test.x.astype(np.float32) / 255.0})
    # 1e-5: the export step's atol (float32 ONNX Runtime kernels against float32 torch).
    assert np.max(np.abs(served - proba)) <= 1e-5
    compress = json.loads((first.root / "compress" / "compress.json").read_text())
    assert compress["model"] == "nas" and compress["family"] == "nas"
    assert "dynamic_int8" in compress["measurements"] and "uncompressed" in compress["measurements"]
    metrics = json.loads((first.root / "metrics.json").read_text())
    assert metrics["models"]["nas"]["nas"]["best"]["index"] == json.loads(
        (first.root / "nas" / "nas.json").read_text())["best"]["index"]


@needs_data
def test_report_has_a_nas_section(runs: tuple) -> None:
    first, _ = runs
    html = (first.root / "report.html").read_text()
    section = html[html.index('<section id="nas">'):]
    section = section[:section.index("</section>")]
    best = json.loads((first.root / "nas" / "nas.json").read_text())["best"]
    assert "pnas" in section and "3 of a budget of 3 networks" in section
    assert best["description"] in section and "data:image/png;base64," in section
    assert section.count("<tr>") == 1 + 3  # header and the three trained networks
    assert '<a href="#nas">' in html


def _predictor(architecture: dict, seed: int = 0):
    import torch

    from modelyard.models import ImagePredictor
    from modelyard.pipeline._nas_step import NASConfig
    from modelyard.search._nas import NASNetwork

    torch.manual_seed(seed)
    module = NASNetwork(architecture).eval()
    return ImagePredictor(module, [f"c{i}" for i in range(10)], NASConfig(architecture=architecture))


CELL = {"kind": "cell", "genotype": [[0, "sep_conv_3x3", 1, "max_pool_3x3"], [2, "conv_3x3", 1, "identity"]],
        "n_cells": 1, "n_stacks": 2, "channels": 4, "stem_stride": 2, "n_classes": 10, "image_shape": [1, 28, 28],
        "input_mean": 0.29, "input_std": 0.35}
CONVNET = {"kind": "convnet", "n_classes": 10, "image_shape": [1, 28, 28], "input_mean": 0.0, "input_std": 1.0,
           "network": {"in_channels": 1, "n_classes": 10, "channels": [4, 8, 8], "kernel_sizes": [3, 5, 3],
                       "pools": [True, True, False], "skips": [[0, 2]], "image_size": [28, 28],
                       "input_mean": 0.29, "input_std": 0.35}}


@pytest.mark.parametrize("architecture", [CELL, CONVNET], ids=["cell", "convnet"])
def test_stored_network_reloads_with_the_same_predictions(tmp_path: Path, architecture: dict) -> None:
    import torch

    from modelyard.compress import export_onnx
    from modelyard.pipeline._image import load_image_model
    from modelyard.pipeline._nas_step import (
        is_nas_model,
        load_nas_predictor,
        save_nas_model,
    )

    predictor = _predictor(architecture)
    with torch.no_grad():  # weights away from their initialization, batch-norm statistics too
        for p in predictor.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for name, b in predictor.module.named_buffers():
            if name.endswith("running_mean"):
                b.add_(0.1)
    images = np.random.default_rng(0).integers(0, 256, (20, 1, 28, 28), dtype=np.uint8)
    before = predictor.predict_proba(images)
    path = save_nas_model(predictor, tmp_path / "model.safetensors")
    assert is_nas_model(path) and not is_nas_model(tmp_path / "missing.safetensors")
    state = torch.get_rng_state()
    loaded = load_nas_predictor(path)
    assert torch.equal(torch.get_rng_state(), state)  # loading does not move the caller's RNG
    assert loaded.module.architecture == architecture and loaded.classes == predictor.classes
    assert np.array_equal(loaded.predict_proba(images), before)  # the same weights: the very same outputs
    assert np.array_equal(load_image_model(path).predict_proba(images), before)
    # 1e-5: the export step's default atol (float32 ONNX Runtime kernels against float32 torch).
    assert export_onnx(loaded, tmp_path / "model.onnx", sample=images, atol=1e-5).max_abs_diff <= 1e-5
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a flipped byte in the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="corrupted"):
        load_nas_predictor(path)


@needs_data
def test_morphism_keeps_the_weights_it_trained(tmp_path: Path) -> None:
    nas = {"strategy": "morphism", "models": 2, "epochs": 1, "batch_size": 32, "train_size": None,
           "valid_size": None, "options": {"neighbors": 1, "train_parent": False}}
    result = pipeline.run(_spec(tmp_path / "spec.yaml", nas, compress=False), store=f"sqlite:///{tmp_path / 'm.db'}",
                          runs_dir=tmp_path / "runs", quiet=True)
    fit = json.loads((result.root / "nas" / "fit.json").read_text())
    assert fit["arch"] == "convnet" and fit["retrained_accuracy"] is None and fit["nas"]["trained"] == 2
    evaluation = json.loads((result.root / "evaluate" / "evaluation.json").read_text())
    # The stored network is the one the search scored: the same accuracy on the same validation images.
    assert evaluation["models"]["nas"]["valid"]["overall"]["accuracy"] == fit["search_accuracy"]
    export = json.loads((result.root / "export" / "export.json").read_text())
    assert export["model"] == "nas" and export["max_abs_diff"] <= 1e-5  # the morphism network exports too
    settings = json.loads((result.root / "nas" / "nas.json").read_text())["settings"]
    assert settings["strategy_options"] == {"neighbors": 1, "train_parent": False}  # not the step's callback


def _parse(extra: dict, source: str = "fashion_mnist") -> None:
    parse_spec({"name": "t", "data": {"source": source}, **extra})


def test_nas_spec_defaults_and_errors(tmp_path: Path) -> None:
    spec = parse_spec({"name": "t", "data": {"source": "fashion-mnist"}, "nas": {}})
    assert spec.resolved()["nas"]["strategy"] == "pnas" and spec.resolved()["nas"]["models"] == 30
    csv_path = make_csv(tmp_path / "d.csv", n=50)
    with pytest.raises(SpecError, match=r"nas: searches CNN architectures for images, but data.source .* is "
                                        r"tabular; remove nas, use search: .* or automl:"):
        _parse({"nas": {"models": 3}}, source=str(csv_path))
    with pytest.raises(SpecError, match=r"nas: .*'adult' is tabular"):
        _parse({"nas": {}}, source="adult")
    with pytest.raises(SpecError, match=r"nas.strategy: unknown NAS strategy 'darts'; known: .*evolution.*morphism"
                                        r".*pnas.*random.*rl"):
        _parse({"nas": {"strategy": "darts"}})
    with pytest.raises(SpecError, match=r"nas: unknown key 'trials' \(a search:/automl: option\); nas: takes models"):
        _parse({"nas": {"trials": 5}})
    with pytest.raises(SpecError, match=r"nas: unknown key 'modelz'; allowed keys: batch_size, beam, channels"):
        _parse({"nas": {"modelz": 5}})
    with pytest.raises(SpecError, match=r"nas.models: Input should be greater than or equal to 1"):
        _parse({"nas": {"models": 0}})
    with pytest.raises(SpecError, match=r"train.models: the name 'nas' is taken"):
        _parse({"nas": {}, "train": {"models": {"nas": {"family": "cnn"}}}})
    with pytest.raises(SpecError, match=r"nas.options.callback: is set by the nas step"):
        _parse({"nas": {"options": {"callback": "x"}}})
    with pytest.raises(SpecError, match=r"search: is tabular-only .* use nas:"):
        _parse({"search": {"trials": 2}})
    _parse({"nas": {}, "compress": {"model": "nas"}})  # the nas model can be compressed by name


def test_example_spec_is_small() -> None:
    example = Path(__file__).parents[2] / "examples" / "fashion_mnist_nas.yaml"
    spec = parse_spec(yaml.safe_load(example.read_text()))
    assert spec.nas is not None and spec.nas.strategy == "pnas" and spec.nas.models <= 12 and spec.nas.epochs == 1
    assert spec.data.subsample is not None and spec.data.subsample.train <= 2000
    assert spec.compress is not None and spec.compress.model == "nas"
