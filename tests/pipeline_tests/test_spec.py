"""Spec validation: every error names the field's path, the bad value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.errors import SpecError
from modelyard.pipeline import load_spec, parse_spec

BASE = {"name": "t", "data": {"source": "adult"}}


def _with(**parts):
    spec = {**BASE}
    for key, value in parts.items():
        spec[key] = value
    return spec


def test_defaults_are_filled_in() -> None:
    spec = parse_spec(BASE)
    resolved = spec.resolved()
    assert set(resolved["train"]["models"]) == {"mlp", "gbm"}
    assert resolved["train"]["models"]["mlp"]["family"] == "mlp"
    assert "max_epochs" in resolved["train"]["models"]["mlp"]  # the family's own defaults
    assert resolved["data"]["split"] == {"test": None, "valid": 0.1, "seed": 0}
    assert resolved["export"]["atol"] == 1e-5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (_with(extra=1), "Invalid spec: (top level): unknown key 'extra'; allowed keys: automl, compress, data, "
         "evaluate, explain, export, features, name, nas, remediation, report, search, train."),
        (_with(data={"source": "adult", "splt": {}}), "Invalid spec: data: unknown key 'splt'; allowed keys: "
         "categorical, drop, sensitive, source, split, subsample, target, task."),
        (_with(data={"source": "adult", "split": {"valid": "lots"}}),
         "Invalid spec: data.split.valid: Input should be a valid number, unable to parse string as a number "
         "(got \"lots\")."),
        (_with(data={"source": "adult", "split": {"valid": 1.5}}),
         "Invalid spec: data.split.valid: Input should be less than 1 (got 1.5)."),
        (_with(data={"source": "adult", "split": {"test": 2.0}}),
         "Invalid spec: data.split.test: must be between 0 and 1 (exclusive) or 'official' (got 2.0)."),
        (_with(evaluate={"slices": ["sex", "race", ["sex", "race"], {"feature": "age", "buckets": [45, 25]}]}),
         "Invalid spec: evaluate.slices[3].buckets: must be strictly increasing (got [45, 25])."),
        (_with(train={"models": {"mlp": {"family": "xgb"}}}),
         "Invalid spec: train.models.mlp.family: unknown model family 'xgb'; known: ['cnn', 'gbm', 'lattice', 'mlp'] (got \"xgb\")."),
        (_with(train={"models": {"mlp": {"family": "mlp", "max_epochs": "ten"}}}),
         "Invalid spec: train.models.mlp.max_epochs: Input should be a valid integer, unable to parse string as "
         "an integer (got \"ten\")."),
        (_with(export={"format": "tflite"}), "Invalid spec: export.format: Input should be 'onnx' (got \"tflite\")."),
        ({"data": {"source": "adult"}}, "Invalid spec: name: required field is missing."),
    ],
)
def test_errors_name_path_value_and_what_is_allowed(spec: dict, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert str(info.value) == message


def test_unknown_family_key_lists_allowed_keys() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_with(train={"models": {"mlp": {"family": "mlp", "hiddn": [8]}}}))
    msg = str(info.value)
    assert msg.startswith("Invalid spec: train.models.mlp: unknown key 'hiddn'; allowed keys: ")
    assert "max_epochs" in msg


def test_a_slice_matching_no_form() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_with(evaluate={"slices": [5]}))
    assert str(info.value) == ("Invalid spec: evaluate.slices[0]: Input should be a valid string or Input should be "
                               "a valid list or Input should be a valid dictionary or instance of BucketSlice (got 5).")


def test_several_errors_are_one_line() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(_with(extra=1, export={"atol": -1}))
    assert "\n" not in str(info.value) and "(and 1 more:" in str(info.value)


def test_yaml_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {source: adult\n")
    with pytest.raises(SpecError, match=r"is not valid YAML at line 3, column 1"):
        load_spec(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(SpecError, match="is empty; it needs at least `name` and `data`"):
        load_spec(empty)
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("name: !!python/object/apply:os.system ['echo hi']\ndata: {source: adult}\n")
    with pytest.raises(SpecError, match="not valid YAML"):  # the safe loader refuses Python tags
        load_spec(unsafe)


def test_example_spec_validates() -> None:
    spec = load_spec(Path(__file__).parents[2] / "examples" / "adult.yaml")
    assert spec.name == "adult-income"
    assert spec.evaluate.slices[3].buckets == [25, 45, 65]
