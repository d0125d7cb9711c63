"""measure/compare: sizes, pinned-thread ONNX Runtime latency, metrics overall and per slice."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelyard.compress import compare, export_onnx, file_sizes, measure
from modelyard.data import TabularSplit, infer_schema
from modelyard.errors import ModelFormatError
from modelyard.evaluate import evaluate_predictor
from modelyard.models import GBMConfig, MLPConfig
from modelyard.train import fit_gbm, fit_mlp


def _splits(n: int = 800) -> tuple[TabularSplit, TabularSplit]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n),
                          "color": rng.choice(["red", "blue"], size=n)})
    signal = frame["x1"] + 0.5 * frame["x2"] + np.where(frame["color"] == "red", 0.7, -0.7)
    frame["y"] = np.where(signal + rng.normal(scale=0.3, size=n) > 0, "yes", "no")
    schema = infer_schema(frame, "y")
    cut = int(0.75 * n)
    return TabularSplit(frame.iloc[:cut].reset_index(drop=True), schema), TabularSplit(
        frame.iloc[cut:].reset_index(drop=True), schema)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[dict[str, Path], TabularSplit, dict]:
    train, valid = _splits()
    folder = tmp_path_factory.mktemp("measure")
    mlp = fit_mlp(train, valid, MLPConfig(max_epochs=3, hidden_sizes=(16,)))
    gbm = fit_gbm(train, valid, GBMConfig(max_iter=20), n_threads=1)
    paths = {"mlp": folder / "mlp.onnx", "gbm": folder / "gbm.onnx"}
    export_onnx(mlp, paths["mlp"], sample=valid.X)
    export_onnx(gbm, paths["gbm"], sample=valid.X)
    return paths, valid, {"mlp": mlp, "gbm": gbm}


def test_file_sizes_are_the_bytes_and_their_gzip(tmp_path: Path) -> None:
    path = tmp_path / "zeros.bin"
    path.write_bytes(bytes(100_000))
    raw, gz = file_sizes(path)
    assert raw == 100_000 == path.stat().st_size
    assert gz == len(gzip.compress(bytes(100_000), 9, mtime=0)) and gz < 1_000  # zeros compress ~1000x


def test_measure_scores_like_the_in_memory_model(exported) -> None:
    paths, valid, models = exported
    m = measure(paths["mlp"], valid, slices=["color"], batch_sizes=(1, 64), repeats=20, warmup=2)
    direct = evaluate_predictor(models["mlp"], valid, slices=["color"])
    # ONNX parity of the export is ~1e-6 on probabilities; accuracy counts are identical
    # unless a probability sits within 1e-6 of 0.5 (none does here), AUC within 1e-6.
    assert m.overall["accuracy"] == direct.overall["accuracy"]
    assert m.overall["auc"] == pytest.approx(direct.overall["auc"], abs=1e-6)
    assert set(m.by_slice["color"]) == set(direct.by_slice["color"])
    assert set(m.latency) == {1, 64}
    for b, lat in m.latency.items():
        assert lat.batch_size == b and lat.repeats == 20 and 0 < lat.p50_ms <= lat.p99_ms
    assert m.size_bytes == paths["mlp"].stat().st_size and 0 < m.gzip_bytes < m.size_bytes
    assert m.to_dict()["latency"]["64"]["batch_size"] == 64


def test_compare_gives_ratios_and_changes_against_the_reference(exported) -> None:
    paths, valid, _ = exported
    table, found = compare(paths, valid, reference="mlp", repeats=5, warmup=1)
    ref = table.set_index("variant").loc["mlp"]
    assert ref["size_ratio"] == 1.0 and ref["p50_ratio_b64"] == 1.0 and ref["accuracy_change"] == 0.0
    other = table.set_index("variant").loc["gbm"]
    assert other["size_ratio"] == pytest.approx(found["gbm"].size_bytes / found["mlp"].size_bytes)
    assert other["accuracy_change"] == pytest.approx(found["gbm"].overall["accuracy"] - found["mlp"].overall["accuracy"])


def test_bad_input_is_refused(exported, tmp_path: Path) -> None:
    paths, valid, _ = exported
    with pytest.raises(ValueError, match="batch_sizes"):
        measure(paths["mlp"], valid, batch_sizes=(0,))
    with pytest.raises(ValueError, match="threads"):
        measure(paths["mlp"], valid, threads=0)
    with pytest.raises(ValueError, match="at least one row"):
        measure(paths["mlp"], valid.frame.iloc[:0])
    with pytest.raises(FileNotFoundError):
        measure(tmp_path / "missing.onnx", valid)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFormatError):
        measure(tmp_path / "junk.onnx", valid)
    with pytest.raises(ValueError, match="reference 'fp16' is not a variant"):
        compare(paths, valid, reference="fp16")
