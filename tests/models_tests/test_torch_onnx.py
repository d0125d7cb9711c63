"""Safe weights (safetensors), ONNX export with parity, and the ONNX Runtime adapter."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from modelyard.compress import ONNX_EXPORTERS, ExportResult, export_onnx
from modelyard.compress._export import ExporterRegistry
from modelyard.compress._onnx_frontend import SCHEMA_KEY
from modelyard.data import TabularSplit, infer_schema
from modelyard.errors import ModelFormatError, SchemaMismatchError
from modelyard.train import fit_mlp
from modelyard.models import (
    MODEL_FAMILIES,
    MLPConfig,
    OnnxPredictor,
    TabularMLP,
    TorchPredictor,
    load_predictor,
    save_torch,
)

try:  # tests/models_tests may or may not be a package
    from ._adult import adult, adult_mlp, synthetic
except ImportError:
    from _adult import adult, adult_mlp, synthetic

#: Parity bound of torch vs ONNX Runtime: float32 kernels differ in summation order and
#: in sin/cos/exp, about 1e-6 on Adult probabilities; the requirement is 1e-5.
ATOL = 1e-5
RETRAIN = "re-run the training step to write it again"


@pytest.fixture(scope="module")
def model() -> TorchPredictor:
    return adult_mlp()[0]


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    """2,000 official test rows, with a missing number, missing categories and an unseen one."""
    _, _, test = adult()
    frame = test.X.iloc[:2000].copy()
    assert frame.isna().any(axis=1).sum() > 50  # adult.test's own "?" in workclass, occupation, native-country
    frame.loc[frame.index[0], "age"] = np.nan
    frame.loc[frame.index[1], "capital-gain"] = np.nan  # a log-transformed column
    frame.loc[frame.index[2], "workclass"] = "Martian"  # unseen in training
    frame.loc[frame.index[3], "native-country"] = None
    return frame


# -- safetensors --------------------------------------------------------------------------
def test_safetensors_round_trip_is_exact(model: TorchPredictor, sample: pd.DataFrame, tmp_path: Path) -> None:
    path = save_torch(model, tmp_path / "sub" / "model.safetensors")
    assert path == tmp_path / "sub" / "model.safetensors"
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temp file left behind
    loaded = load_predictor(path)
    assert isinstance(loaded, TorchPredictor) and loaded.schema == model.schema and loaded.config == model.config
    np.testing.assert_array_equal(loaded.predict_proba(sample), model.predict_proba(sample))
    for name, tensor in model.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[name], tensor), name


def test_weights_file_is_safetensors_not_pickle(model: TorchPredictor, tmp_path: Path, monkeypatch) -> None:
    path = save_torch(model, tmp_path / "model.safetensors")
    head = path.read_bytes()[:16]
    assert head[0] != pickle.PROTO  # 0x80 opens every pickle of protocol >= 2
    assert not head.startswith(b"PK")  # nor a zip (torch.save's format)
    header_len = int.from_bytes(head[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    meta = header["__metadata__"]
    assert meta["format"] == "modelyard" and meta["family"] == "mlp"
    assert MLPConfig.model_validate_json(meta["config"]) == model.config
    assert json.loads(meta["schema"]) == model.schema.to_dict()
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(model.module.state_dict())
    # Loading never unpickles.
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling while loading weights")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_predictor(path)


def _corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    if how == "truncated":
        del data[-100:]
    elif how == "flipped":  # bytes inside the tensor data: still a well-formed safetensors file
        for i in range(8 + header_len + 100, len(data), 997):
            data[i] ^= 0xFF
    elif how == "garbage":
        data = bytearray(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_unreadable_weights_file_raises_model_format_error(
    model: TorchPredictor, tmp_path: Path, how: str
) -> None:
    path = save_torch(model, tmp_path / "model.safetensors")
    _corrupt(path, how)
    with pytest.raises(ModelFormatError) as err:
        load_predictor(path)
    assert str(err.value) == f"{path} is not a readable safetensors file (truncated or corrupted); {RETRAIN}."


def test_flipped_weight_bytes_fail_the_checksum(model: TorchPredictor, tmp_path: Path) -> None:
    path = save_torch(model, tmp_path / "model.safetensors")
    _corrupt(path, "flipped")
    safetensors.torch.load_file(str(path))  # safetensors alone would not notice
    with pytest.raises(ModelFormatError) as err:
        load_predictor(path)
    assert str(err.value) == (
        f"{path} is corrupted: its tensors do not match the checksum recorded when it was saved; {RETRAIN}."
    )


def _resave(path: Path, edit) -> None:
    """Rewrite ``path`` with the same tensors and edited metadata (a valid safetensors file)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = safetensors.torch.load_file(str(path))
    path.write_bytes(safetensors.torch.save(tensors, metadata=edit(meta)))


def test_wrong_metadata_raises_model_format_error(model: TorchPredictor, tmp_path: Path) -> None:
    path = save_torch(model, tmp_path / "model.safetensors")

    # A plain safetensors file with no modelyard metadata.
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ModelFormatError) as err:
        load_predictor(plain)
    missing = ["format", "family", "config", "schema", "modelyard_version", "weights_sha256"]
    assert str(err.value) == (
        f"{plain} is not a modelyard model file (missing {missing} in its metadata); "
        f"save it with modelyard.models.save_torch, or {RETRAIN}."
    )

    # A config whose layers differ from the stored tensors.
    _resave(path, lambda m: {**m, "config": MLPConfig(hidden_sizes=(128, 32)).model_dump_json()})
    with pytest.raises(ModelFormatError) as err:
        load_predictor(path)
    f32 = "torch.float32"
    assert str(err.value) == (
        f"{path} holds tensors that do not match its mlp config ("
        f"'body.3.bias' is (64,) {f32}, expected (32,) {f32}; "
        f"'body.3.weight' is (64, 128) {f32}, expected (32, 128) {f32}; "
        f"'head.weight' is (2, 64) {f32}, expected (2, 32) {f32}); {RETRAIN}."
    )

    # An unknown family.
    _resave(path, lambda m: {**m, "family": "transformer"})
    with pytest.raises(ModelFormatError) as err:
        load_predictor(path)
    assert str(err.value) == (
        f"{path} holds model family 'transformer', unknown to this modelyard (known: ['lattice', 'mlp']); "
        f"upgrade modelyard, or {RETRAIN}."
    )

    # Unparsable config JSON.
    _resave(path, lambda m: {**m, "family": "mlp", "config": "{not json"})
    with pytest.raises(ModelFormatError) as err:
        load_predictor(path)
    assert str(err.value) == f"{path} has an invalid config or schema in its metadata; {RETRAIN}."


def test_load_predictor_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_predictor(tmp_path / "nope.safetensors")
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ModelFormatError) as err:
        load_predictor(pickled)
    assert str(err.value) == (
        f"Cannot load {pickled}: expected a .safetensors (torch weights) or .onnx file, got '.pt'; "
        "save with modelyard.models.save_torch or modelyard.compress.export_onnx."
    )
    assert MODEL_FAMILIES.get("mlp") is TabularMLP


def test_save_torch_checks_its_arguments(model: TorchPredictor, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"save_torch writes \.safetensors files; got"):
        save_torch(model, tmp_path / "model.pt")
    with pytest.raises(TypeError, match="save_torch saves a TorchPredictor"):
        save_torch(object(), tmp_path / "model.safetensors")  # type: ignore[arg-type]


# -- ONNX export -----------------------------------------------------------------------
def test_onnx_export_parity_on_adult(model: TorchPredictor, sample: pd.DataFrame, tmp_path: Path) -> None:
    result = export_onnx(model, tmp_path / "model.onnx", sample=sample)
    assert isinstance(result, ExportResult)
    assert result.path == tmp_path / "model.onnx" and result.n_rows == len(sample) and result.opset == 17
    assert result.max_abs_diff <= ATOL
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]

    # The model takes raw columns: one input per feature, named after it; categories as strings.
    proto = onnx.load(str(result.path))
    inputs = {i.name: i.type.tensor_type for i in proto.graph.input}
    assert list(inputs) == model.feature_names
    for col in model.schema.features:
        want = onnx.TensorProto.STRING if col.kind == "categorical" else onnx.TensorProto.FLOAT
        assert inputs[col.name].elem_type == want, col.name
        assert inputs[col.name].shape.dim[1].dim_value == 1
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    assert json.loads({p.key: p.value for p in proto.metadata_props}[SCHEMA_KEY]) == model.schema.to_dict()

    # Served from the file (and from bytes), it matches the torch model.
    served = load_predictor(result.path)
    assert isinstance(served, OnnxPredictor) and served.schema == model.schema and not served.differentiable
    expected = model.predict_proba(sample)
    np.testing.assert_allclose(served.predict_proba(sample), expected, rtol=0, atol=ATOL)
    from_bytes = OnnxPredictor(result.path.read_bytes())
    np.testing.assert_array_equal(from_bytes.predict_proba(sample), served.predict_proba(sample))
    # The rows with a missing number, an unseen and a missing category: finite, and equal.
    np.testing.assert_allclose(served.predict_proba(sample.iloc[:4]), expected[:4], rtol=0, atol=ATOL)
    assert served.predict_proba(sample.iloc[:0]).shape == (0, 2)


@pytest.mark.parametrize(
    ("task", "numeric", "categorical"),
    [("multiclass", True, True), ("regression", True, True), ("binary", False, True), ("regression", True, False)],
)
def test_onnx_export_other_tasks_and_schemas(task: str, numeric: bool, categorical: bool, tmp_path: Path) -> None:
    train, valid = synthetic(task, numeric=numeric, categorical=categorical)
    model = fit_mlp(train, valid, MLPConfig(max_epochs=5, batch_size=64, lr=3e-3))
    sample = valid.X.copy()
    if categorical:
        sample.loc[sample.index[0], "color"] = "purple"  # unseen
    result = export_onnx(model, tmp_path / "model.onnx", sample=sample)
    served = OnnxPredictor(result.path)
    proto = onnx.load(str(result.path))
    assert [i.name for i in proto.graph.input] == model.feature_names
    if task == "regression":
        assert [o.name for o in proto.graph.output] == ["prediction"]
        pred = model.predict(sample)
        # Predictions here reach ~7: float32 resolves them to ~5e-7, inside atol * max|pred|.
        np.testing.assert_allclose(served.predict(sample), pred, rtol=0, atol=ATOL * np.abs(pred).max())
    else:
        assert [o.name for o in proto.graph.output] == ["probabilities"]
        np.testing.assert_allclose(served.predict_proba(sample), model.predict_proba(sample), rtol=0, atol=ATOL)


class _Offset(TorchPredictor):
    """A regression predictor half a unit above its module: a known, fixed parity gap."""

    def _forward(self, X: pd.DataFrame) -> np.ndarray:
        return super()._forward(X) + 0.5


def test_regression_parity_bound_scales_with_the_target(tmp_path: Path) -> None:
    frames = [s.frame.assign(y=s.frame["y"] * 2e4 + 1e5) for s in synthetic("regression")]  # house-price units
    schema = infer_schema(frames[0], "y")
    train, valid = (TabularSplit(f, schema) for f in frames)
    model = fit_mlp(train, valid, MLPConfig(max_epochs=3))
    scale = np.abs(model.predict(valid.X)).max()
    assert scale > 5e4
    result = export_onnx(model, tmp_path / "model.onnx", sample=valid.X)
    assert result.max_abs_diff <= ATOL * scale  # float32 steps are 0.0078 at 1e5: a plain 1e-5 could fail
    # A gap of 0.5 passes atol=1e-5 (bound ~1) but not atol=1e-6 (bound ~0.1).
    offset = _Offset(model.module, schema)
    # The gap is 0.5 give or take float32 rounding of values near 1e5 (0.0078 a step).
    assert abs(export_onnx(offset, tmp_path / "offset.onnx", sample=valid.X).max_abs_diff - 0.5) < 0.02
    with pytest.raises(ModelFormatError, match=r"exceeds atol=1e-06 x max\(1, max \|prediction\|\) = 0\.1"):
        export_onnx(offset, tmp_path / "strict.onnx", sample=valid.X, atol=1e-6)
    assert not (tmp_path / "strict.onnx").exists()


class _Shifted(TorchPredictor):
    """A torch predictor whose outputs drift from its module's: the ONNX graph cannot match it."""

    def _forward(self, X: pd.DataFrame) -> np.ndarray:
        return super()._forward(X) * 0.999 + 0.0005


def test_parity_failure_raises_and_writes_nothing(model: TorchPredictor, sample: pd.DataFrame, tmp_path: Path) -> None:
    shifted = _Shifted(model.module, model.schema)  # uses TorchPredictor's exporter (lookup by MRO)
    path = tmp_path / "model.onnx"
    with pytest.raises(ModelFormatError) as err:
        export_onnx(shifted, path, sample=sample)
    assert re.fullmatch(
        r"ONNX export of _Shifted failed the parity check: max \|onnx - source\| = 0\.000\d+ on 2000 sample rows "
        rf"exceeds atol=1e-05; nothing was written to {re.escape(str(path))}\. "
        r"Fix the exporter, or raise atol if the difference is expected\.",
        str(err.value),
    ), str(err.value)
    assert list(tmp_path.iterdir()) == []
    # A tolerance above the drift lets the same export through.
    assert export_onnx(shifted, path, sample=sample, atol=1e-3).max_abs_diff > ATOL


def test_exporter_registry() -> None:
    assert TorchPredictor in ONNX_EXPORTERS
    with pytest.raises(TypeError) as err:
        ONNX_EXPORTERS.get(object())
    assert str(err.value).startswith("No ONNX exporter for object; known: [")
    registry = ExporterRegistry()
    registry.register(TorchPredictor)(lambda p: onnx.ModelProto())
    with pytest.raises(ValueError, match="already registered"):
        registry.register(TorchPredictor)(lambda p: onnx.ModelProto())
    assert registry.get(_Shifted(torch.nn.Linear(1, 1), adult()[0].schema)) is not None  # a subclass inherits it
    with pytest.raises(TypeError, match="registered for a predictor class"):
        registry.register("TorchPredictor")  # type: ignore[arg-type]


def test_export_onnx_checks_its_arguments(model: TorchPredictor, sample: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"export_onnx writes \.onnx files"):
        export_onnx(model, tmp_path / "model.bin", sample=sample)
    with pytest.raises(ValueError, match="non-empty DataFrame"):
        export_onnx(model, tmp_path / "model.onnx", sample=sample.iloc[:0])
    with pytest.raises(SchemaMismatchError):
        export_onnx(model, tmp_path / "model.onnx", sample=sample.drop(columns="age"))
    assert list(tmp_path.iterdir()) == []


# -- the ONNX Runtime adapter ------------------------------------------------------------
@pytest.fixture(scope="module")
def served(model: TorchPredictor, sample: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> OnnxPredictor:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, path, sample=sample)
    return OnnxPredictor(path)


def test_onnx_predictor_refuses_other_columns(served: OnnxPredictor, sample: pd.DataFrame) -> None:
    expects = served.feature_names
    with pytest.raises(SchemaMismatchError) as err:
        served.predict(sample.drop(columns="occupation"))
    assert str(err.value) == (
        f"Feature columns differ from training: missing ['occupation']. "
        f"The model expects {expects}; rename or drop columns to match."
    )
    with pytest.raises(SchemaMismatchError) as err:
        served.predict_proba(sample.assign(zipcode="94110"))
    assert str(err.value) == (
        f"Feature columns differ from training: unexpected ['zipcode']. "
        f"The model expects {expects}; rename or drop columns to match."
    )
    with pytest.raises(SchemaMismatchError, match="Numeric feature 'age' holds non-numeric values"):
        served.predict(sample.assign(age="old"))
    # The target and sensitive columns may ride along; column order does not matter.
    _, _, test = adult()
    frame = test.frame.iloc[:50]
    np.testing.assert_array_equal(
        served.predict_proba(frame[frame.columns[::-1]]), served.predict_proba(test.X.iloc[:50])
    )


def test_onnx_predictor_refuses_bad_files(served: OnnxPredictor, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelFormatError) as err:
        OnnxPredictor(garbage)
    assert str(err.value) == (
        f"{garbage} is not a valid ONNX model (truncated or corrupted); "
        "re-export it with modelyard.compress.export_onnx."
    )
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(served.path.read_bytes()[:2000])
    with pytest.raises(ModelFormatError, match="is not a valid ONNX model"):
        load_predictor(truncated)
    # A valid ONNX model that modelyard did not export: no schema in its metadata.
    proto = onnx.load(str(served.path))
    del proto.metadata_props[:]
    with pytest.raises(ModelFormatError) as err:
        OnnxPredictor(proto.SerializeToString())
    assert str(err.value) == (
        f"the given ONNX bytes has no {SCHEMA_KEY!r} metadata, so its input columns are unknown; "
        "re-export it with modelyard.compress.export_onnx."
    )
    with pytest.raises(FileNotFoundError):
        OnnxPredictor(tmp_path / "missing.onnx")


def test_files_are_written_atomically(model: TorchPredictor, sample: pd.DataFrame, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")
    real_replace = os.replace

    def crash(src, dst):
        raise KeyboardInterrupt  # the process dies between writing and renaming

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_torch(model, path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    monkeypatch.setattr(os, "replace", real_replace)
    save_torch(model, path)
    assert isinstance(load_predictor(path), TorchPredictor)


@pytest.mark.parametrize("activation", ["gelu", "silu", "tanh"])
def test_every_activation_is_built_and_exports_with_parity(activation: str, tmp_path: Path) -> None:
    train, valid = synthetic("binary")
    model = fit_mlp(train, valid, MLPConfig(max_epochs=2, batch_size=64, activation=activation))
    kinds = {type(m).__name__.lower() for m in model.module.body}
    assert activation in kinds and "relu" not in kinds
    sample = valid.X
    served = OnnxPredictor(export_onnx(model, tmp_path / "model.onnx", sample=sample).path)
    np.testing.assert_allclose(served.predict_proba(sample), model.predict_proba(sample), rtol=0, atol=ATOL)
