"""The pipeline on a built-in image data set: Fashion-MNIST through data, train (cnn), evaluate,
compress, export and report; the image splits as .npz; image/tabular option errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from modelyard import pipeline
from modelyard.data import (
    ImageSplit,
    load_image_split,
    save_image_split,
    subsample_indices,
)
from modelyard.errors import DataError, SpecError
from modelyard.pipeline._spec import parse_spec

from ._synthetic import make_csv, write_spec

EXAMPLE = Path(__file__).parents[2] / "examples" / "fashion_mnist.yaml"
STEPS = ["data", "train.cnn", "evaluate", "explain", "compress", "export", "report"]
SUBSAMPLE = {"train": 3000, "valid": 500, "test": 1000, "seed": 0}

needs_data = pytest.mark.skipif(
    not os.environ.get("MODELYARD_DATA_DIR") or not Path(os.environ["MODELYARD_DATA_DIR"]).is_dir(),
    reason="needs Fashion-MNIST: set MODELYARD_DATA_DIR to the shared data folder (../shared/data)")


def _spec(path: Path) -> Path:
    spec = {
        "name": "fmnist-test",
        "data": {"source": "fashion_mnist", "split": {"valid": 0.1, "seed": 0}, "subsample": SUBSAMPLE},
        "train": {"models": {"cnn": {"family": "cnn", "channels": [4, 8], "hidden_sizes": [32], "max_epochs": 1,
                                     "batch_size": 32, "lr": 0.003}}},
        "evaluate": {"bootstrap": 20},
        "explain": {"rows": [0, 7], "ig_steps": 16, "lime_samples": 300},
        "compress": {"variants": ["dynamic_int8", "static_int8"], "repeats": 3, "warmup": 1, "batch_sizes": [1, 16],
                     "calibration_rows": 128},
        "export": {"parity_rows": 300},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[pipeline.RunResult, pipeline.RunResult]:
    """Two runs of the same spec (the second should be fully cached), in a fresh folder and store."""
    if not os.environ.get("MODELYARD_DATA_DIR") or not Path(os.environ["MODELYARD_DATA_DIR"]).is_dir():
        pytest.skip("needs Fashion-MNIST: set MODELYARD_DATA_DIR to the shared data folder (../shared/data)")
    root = tmp_path_factory.mktemp("image-pipeline")
    spec = _spec(root / "spec.yaml")
    store = f"sqlite:///{root / 'meta.db'}"
    first = pipeline.run(spec, store=store, runs_dir=root / "runs", quiet=True)
    second = pipeline.run(spec, store=store, runs_dir=root / "runs", quiet=True)
    return first, second


def _trained(root: Path):  # -> ImagePredictor
    from modelyard.models import ImagePredictor, load_predictor

    model = load_predictor(root / "train" / "cnn" / "model.safetensors")
    assert isinstance(model, ImagePredictor)
    return model


@needs_data
def test_data_step_writes_npz_splits(runs: tuple) -> None:
    first, _ = runs
    assert [s.name for s in first.steps] == STEPS
    assert all(s.status == "ran" for s in first.steps)
    rows = json.loads((first.root / "data" / "rows.json").read_text())
    assert rows == {"train": 3000, "valid": 500, "test": 1000}
    schema = json.loads((first.root / "data" / "schema.json").read_text())
    assert schema["kind"] == "image" and schema["schema"]["task"] == "multiclass"
    assert schema["schema"]["image_shape"] == [1, 28, 28] and len(schema["schema"]["classes"]) == 10
    for name, n in rows.items():
        with np.load(first.root / "data" / f"{name}.npz", allow_pickle=False) as npz:  # plain numpy, no pickle
            x, y = npz["x"], npz["y"]
        assert x.dtype == np.uint8 and x.shape == (n, 1, 28, 28) and y.dtype == np.int64 and y.shape == (n,)
    # The official test set has 1,000 images per class: a stratified sample of 1,000 has 100 of each.
    test = load_image_split(first.root / "data" / "test.npz")
    assert np.bincount(test.y, minlength=10).tolist() == [100] * 10
    # The test images are official t10k images, not training images (the split is respected).
    from modelyard.data import load

    full = load("fashion_mnist", valid=0.1, seed=0)
    keep = subsample_indices(full.test.y, 1000, seed=0)
    assert np.array_equal(test.x, full.test.x[keep]) and np.array_equal(test.y, full.test.y[keep])


@needs_data
def test_onnx_model_serves_the_trained_model(runs: tuple) -> None:
    import onnxruntime as ort

    first, _ = runs
    test = load_image_split(first.root / "data" / "test.npz")
    session = ort.InferenceSession(str(first.root / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    pixels = test.x.astype(np.float32) / 255.0  # the documented input: float32 [N, 1, 28, 28] in [0, 1]
    (served,) = session.run(["probabilities"], {"image": pixels})
    expected = _trained(first.root).predict_proba(test.x)
    # 1e-5: the export step's atol (float32 ONNX Runtime kernels against float32 torch; measured ~5e-7).
    assert np.max(np.abs(served - expected)) <= 1e-5
    differ = served.argmax(axis=1) != expected.argmax(axis=1)
    top2 = np.sort(expected, axis=1)[:, -2:]
    # A predicted class may only differ where the two top probabilities are within the tolerance.
    assert np.all(top2[differ, 1] - top2[differ, 0] <= 2e-5)
    export = json.loads((first.root / "export" / "export.json").read_text())
    assert export["inputs"] == "image" and export["parity_rows"] == 300 and export["max_abs_diff"] <= 1e-5


@needs_data
# float32 softmax outputs sum to 1 within ~1e-7 in float64; sklearn warns about it (the values still agree).
@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")
def test_evaluation_matches_sklearn(runs: tuple) -> None:
    from sklearn.metrics import accuracy_score, log_loss, recall_score

    first, _ = runs
    metrics = json.loads((first.root / "metrics.json").read_text())
    classes = metrics["data"]["classes"]
    report = metrics["models"]["cnn"]["test"]
    for split, got in (("test", report), ("valid", metrics["models"]["cnn"]["valid"])):
        data = load_image_split(first.root / "data" / f"{split}.npz")
        proba = _trained(first.root).predict_proba(data.x)
        # 1e-12 / 1e-9: the same float64 probabilities; log-loss differs only by summation order and clipping.
        assert got["overall"]["accuracy"] == pytest.approx(accuracy_score(data.y, proba.argmax(axis=1)), abs=1e-12)
        assert got["overall"]["log_loss"] == pytest.approx(log_loss(data.y, proba, labels=range(10)), abs=1e-9)
        assert got["overall"]["count"] == len(data)
    test = load_image_split(first.root / "data" / "test.npz")
    proba = _trained(first.root).predict_proba(test.x)
    per_class = recall_score(test.y, proba.argmax(axis=1), average=None, labels=range(10))
    groups = report["by_slice"]["class"]
    assert set(groups) == set(classes)
    for k, name in enumerate(classes):
        assert groups[name]["accuracy"] == pytest.approx(per_class[k], abs=1e-12)  # accuracy within a class = recall
        assert groups[name]["count"] == 100
    # Invariant: the overall accuracy is the count-weighted mean of the per-class accuracies.
    weighted = sum(g["accuracy"] * g["count"] for g in groups.values()) / sum(g["count"] for g in groups.values())
    assert weighted == pytest.approx(report["overall"]["accuracy"], abs=1e-12)  # float rounding only
    assert metrics["chosen"]["model"] == "cnn" and metrics["chosen"]["onnx"]["inputs"] == "image"
    assert report["overall"]["accuracy"] > 0.6  # one epoch on 3,000 images; chance is 0.1


@needs_data
def test_compress_table_lists_the_variants(runs: tuple) -> None:
    first, _ = runs
    table = pd.read_csv(first.root / "compress" / "compress.csv")
    assert table["variant"].tolist() == ["uncompressed", "dynamic_int8", "static_int8"]
    summary = json.loads((first.root / "compress" / "compress.json").read_text())
    ref = table.set_index("variant").loc["uncompressed", "size_bytes"]
    for row in table.to_dict(orient="records"):
        path = first.root / "compress" / "variants" / summary["measurements"][row["variant"]]["path"]
        assert row["size_bytes"] == path.stat().st_size > 0
        assert row["count"] == 1000 and 0 <= row["accuracy"] <= 1
        if row["variant"] != "uncompressed":
            # int8 weights are a quarter of float32; this tiny model's graph and scales add the rest (measured 0.42-0.45).
            assert row["size_bytes"] < 0.5 * ref
            assert abs(row["accuracy_change"]) < 0.05  # int8 of a small CNN keeps accuracy within a few points
    slices = pd.read_csv(first.root / "compress" / "slices.csv")
    assert set(slices["slice"]) == {"class"} and slices["group"].nunique() == 10
    assert (first.root / "model.compressed.onnx").is_file()
    html = (first.root / "report.html").read_text()
    assert "dynamic_int8" in html and "static_int8" in html and "Shirt" in html
    assert "components" not in html  # the tabular export note is left out for an image model
    card = (first.root / "model_card.md").read_text()
    assert "**class**: 10 groups" in card and "Shirt" in card  # the card's factors are the true classes


@needs_data
def test_explain_step_draws_heatmaps_of_the_chosen_images(runs: tuple) -> None:
    from modelyard import explain as ex
    from modelyard.data import load_image_split

    root = runs[0].root
    result = json.loads((root / "explain" / "explain.json").read_text())
    assert result["methods"] == ["ig", "saliency", "lime"] and result["skipped"] == []
    test = load_image_split(root / "data" / "test.npz")
    model, x = _trained(root), test.x[[0, 7]]
    predicted = model.predict_proba(x).argmax(axis=1)
    for key in ("ig", "saliency", "lime_image"):
        assert result[key]["rows"] == [0, 7] and result[key]["target"] == predicted.tolist()
    # The step's heatmaps are the library's on the same images (independent calls; JSON keeps float64).
    ig = ex.integrated_gradients(model, x, target=predicted, steps=16)
    np.testing.assert_allclose(result["ig"]["heatmaps"], ig.heatmap(), rtol=0, atol=1e-7)
    sal = ex.saliency(model, x, target=predicted)
    np.testing.assert_allclose(result["saliency"]["heatmaps"], sal.heatmap(), rtol=0, atol=1e-7)
    lime = ex.lime_image(model, x, target=predicted, n_samples=300, random_state=0)
    np.testing.assert_allclose(result["lime_image"]["heatmaps"], lime.heatmaps, rtol=0, atol=1e-9)  # seeded: same
    # Completeness of integrated gradients: each heatmap sums to F(x) - F(black) up to the recorded gap,
    # and the gap is small at 16 Gauss-Legendre points (1e-2 of a probability).
    totals = np.asarray(result["ig"]["heatmaps"]).sum(axis=(1, 2))
    change = np.asarray(result["ig"]["predictions"]) - np.asarray(result["ig"]["base_values"])
    np.testing.assert_allclose(totals - change, result["ig"]["delta"], rtol=0, atol=1e-5)
    assert np.abs(result["ig"]["delta"]).max() < 1e-2
    assert [p["file"] for p in result["plots"]] == ["image_row_0.png", "image_row_7.png"]
    assert all((root / "explain" / p["file"]).read_bytes()[:4] == b"\x89PNG" for p in result["plots"])
    html = (root / "report.html").read_text()
    section = html[html.index('<section id="explain">'):]
    section = section[:section.index("</section>")]
    assert "Image attributions" in section and section.count('<img src="data:image/png') == 2


def test_second_run_is_fully_cached(runs: tuple) -> None:
    first, second = runs
    assert [s.status for s in second.steps] == ["cached"] * len(STEPS)
    assert all(s.cached_from_run == first.run_id for s in second.steps)
    assert (second.root / "model.onnx").read_bytes() == (first.root / "model.onnx").read_bytes()


def test_example_spec_is_small() -> None:
    spec = parse_spec(yaml.safe_load(EXAMPLE.read_text()))
    assert spec.data.source == "fashion_mnist" and spec.data.subsample is not None
    assert spec.train.models["cnn"].family_config().max_epochs <= 2
    assert [v.quantize for v in spec.compress.variants] == ["dynamic_int8", "static_int8", "static_int8_float_first"]


# -- splits as .npz -------------------------------------------------------------------------------------


def test_image_split_npz_round_trip_is_deterministic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    split = ImageSplit(rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8), rng.integers(0, 3, 40).astype(np.int64))
    a, b = save_image_split(split, tmp_path / "a.npz"), save_image_split(split, tmp_path / "b.npz")
    # Same arrays, same bytes (fixed member timestamps): the digest identifies the images, so caching works.
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    back = load_image_split(a)
    assert np.array_equal(back.x, split.x) and np.array_equal(back.y, split.y) and back.y.dtype == np.int64
    with np.load(a, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["x", "y"]
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_image_split(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", images=split.x)
    with pytest.raises(DataError, match="not 'x' and 'y'"):
        load_image_split(tmp_path / "other.npz")
    with pytest.raises(DataError, match="does not exist"):
        load_image_split(tmp_path / "missing.npz")


def test_subsample_is_stratified_and_seeded() -> None:
    y = np.repeat(np.arange(4), [500, 300, 150, 50])
    keep = subsample_indices(y, 100, seed=3)
    assert len(keep) == 100 and np.all(np.diff(keep) > 0)
    counts = np.bincount(y[keep], minlength=4)
    assert np.all(np.abs(counts - 100 * np.bincount(y) / len(y)) <= 1)  # within one row of the exact share
    assert np.array_equal(keep, subsample_indices(y, 100, seed=3))
    assert not np.array_equal(keep, subsample_indices(y, 100, seed=4))
    assert np.array_equal(subsample_indices(y, 5000, seed=0), np.arange(len(y)))
    with pytest.raises(DataError, match="positive number"):
        subsample_indices(y, 0, seed=0)


def test_tabular_subsample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    csv = make_csv(tmp_path / "people.csv")
    spec = write_spec(tmp_path / "spec.yaml", csv)
    raw = yaml.safe_load(spec.read_text())
    raw["data"]["subsample"] = {"train": 300, "test": 150}
    raw["train"]["models"] = {"gbm": {"family": "gbm", "max_iter": 5}}
    spec.write_text(yaml.safe_dump(raw))
    result = pipeline.run(spec, store=f"sqlite:///{tmp_path / 'm.db'}", quiet=True)
    rows = json.loads((result.root / "data" / "rows.json").read_text())
    assert rows == {"train": 300, "valid": 300, "test": 150}  # valid: 20% of the 1,500 rows, not subsampled
    full = pd.read_csv(csv)
    train = pd.read_parquet(result.root / "data" / "train.parquet")
    share = (train["label"] == "yes").mean()
    assert abs(share - (full["label"] == "yes").mean()) < 0.02  # stratified: the class share is kept


# -- errors -------------------------------------------------------------------------------------------


IMAGE = {"name": "x", "data": {"source": "fashion_mnist"}}


@pytest.mark.parametrize(("extra", "match"), [
    ({"evaluate": {"slices": ["sex"]}}, r"evaluate.slices: \"sex\" names a column.*sliced by true class"),
    ({"features": {"method": "pca"}}, r"features: is tabular-only for now"),
    ({"search": {"trials": 2}}, r"search: is tabular-only for now"),
    ({"automl": {"time_budget": 5}}, r"automl: is tabular-only for now"),
    ({"explain": {"methods": ["ig", "shap"]}}, r"explain.methods: \['shap'\] explain table columns.*ig, saliency, lime"),
    ({"evaluate": {"gate": {"thresholds": {"accuracy": {"min": 0.5}}}}}, r"evaluate.gate: is tabular-only"),
    ({"train": {"models": {"m": {"family": "mlp"}}}}, r"train.models.m.family: 'mlp' trains on tabular rows.*cnn"),
    ({"data": {"source": "fashion_mnist", "target": "y"}}, r"data.target: is a tabular option"),
    ({"data": {"source": "fashion_mnist", "drop": ["a"]}}, r"data.drop: names columns"),
    ({"train": {"models": {"cnn": {"family": "cnn", "chanels": [4]}}}}, r"unknown key 'chanels'.*channels"),
])
def test_image_spec_errors(extra: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        parse_spec({**IMAGE, **extra})


def test_cnn_on_tabular_data_is_an_error() -> None:
    with pytest.raises(SpecError, match=r"train.models.c.family: 'cnn' trains on images.*tabular"):
        parse_spec({"name": "x", "data": {"source": "adult"}, "train": {"models": {"c": {"family": "cnn"}}}})


def test_image_defaults() -> None:
    spec = parse_spec({**IMAGE, "evaluate": {"slices": ["class"]}})
    assert {n: e.family for n, e in spec.train.models.items()} == {"cnn": "cnn"}  # not mlp and gbm
    assert parse_spec({"name": "x", "data": {"source": "fashion-mnist"}}).train.models["cnn"].family == "cnn"
    tabular = parse_spec({"name": "x", "data": {"source": "adult"}})
    assert set(tabular.train.models) == {"mlp", "gbm"} and tabular.data.subsample is None
    with pytest.raises(SpecError, match=r"data.subsample.train"):
        parse_spec({**IMAGE, "data": {"source": "fashion_mnist", "subsample": {"train": 0}}})


def test_cli_run_rejects_a_tabular_option_on_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelyard.cli import main

    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({**IMAGE, "features": {"method": "mutual_info"}}))
    assert main(["run", str(spec)]) != 0
    assert "features: is tabular-only for now" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # validated before anything ran


def test_cli_explain_draws_the_heatmaps_of_an_image_run(runs: tuple, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from modelyard.cli import main

    run = runs[0]
    store = f"sqlite:///{run.root.parent.parent / 'meta.db'}"
    out = tmp_path / "ex"
    assert main(["explain", run.run_id, "--rows", "7", "--method", "saliency", "--store", store, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "image 7: predicted" in printed and "image_row_7.png" in printed
    result = json.loads((out / "explain.json").read_text())
    step = json.loads((run.root / "explain" / "explain.json").read_text())
    assert result["methods"] == ["saliency"]
    np.testing.assert_allclose(result["saliency"]["heatmaps"][0], step["saliency"]["heatmaps"][1], rtol=0,
                               atol=1e-7)  # the step explained rows [0, 7]: the same image, the same map
    assert (out / "image_row_7.png").is_file()
    bad = tmp_path / "bad"
    assert main(["explain", run.run_id, "--method", "shap", "--store", store, "--out", str(bad)]) != 0
    assert "explains table columns" in capsys.readouterr().err and not bad.exists()
