"""The ONNX front end: one input per raw column, encoded exactly as modelyard.data encodes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import TensorProto, helper

from modelyard.compress import with_raw_inputs
from modelyard.data import category_strings, encode_frame, infer_schema
from modelyard.errors import ModelFormatError


def _identity_core(inputs: dict[str, tuple[int, int]], output: str = "probabilities") -> object:
    """A core that returns its (single) input, so the front end's output can be read directly."""
    (name, (elem, width)), = inputs.items()
    vi = helper.make_tensor_value_info(name, elem, ["N", width])
    out = helper.make_tensor_value_info(output, TensorProto.FLOAT if elem == TensorProto.FLOAT else elem,
                                        ["N", width])
    graph = helper.make_graph([helper.make_node("Identity", [name], [output])], "core", [vi], [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# Column names that equal the core's own input names must not collide with them.
FRAME = pd.DataFrame({
    "x": [1.5, np.nan, -2.0, 4.0],
    "x_num": [10.0, 20.0, np.nan, 40.0],
    "x_cat": ["a", None, "b", "zz"],
    "<b>": ["u", "v", "u", None],
    "y": [0, 1, 0, 1],
})


def _feeds(frame: pd.DataFrame, schema) -> dict[str, np.ndarray]:
    feeds = {}
    for col in schema.features:
        if col.kind == "numeric":
            feeds[col.name] = frame[[col.name]].to_numpy(np.float32)
        else:
            feeds[col.name] = category_strings(frame[col.name]).reshape(-1, 1).astype(str)
    return feeds


@pytest.mark.parametrize("layout", ["x", "x_num", "x_cat"])
def test_front_end_matches_encode_frame(layout: str) -> None:
    schema = infer_schema(FRAME.iloc[:3], "y")  # "zz" in row 4 is unseen: code 0
    x_num, x_cat = encode_frame(FRAME.drop(columns="y"), schema)
    expected = {"x": np.hstack([x_num, x_cat.astype(np.float32)]), "x_num": x_num, "x_cat": x_cat}[layout]
    elem = TensorProto.INT64 if layout == "x_cat" else TensorProto.FLOAT
    model = with_raw_inputs(_identity_core({layout: (elem, expected.shape[1])}), schema)
    assert [i.name for i in model.graph.input] == schema.feature_names
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, _feeds(FRAME, schema))
    np.testing.assert_array_equal(out, expected)  # exact: the front end only copies and looks up


def test_reserved_names_are_refused() -> None:
    frame = pd.DataFrame({"probabilities": [1.0, 2.0], "y": [0, 1]})
    schema = infer_schema(frame, "y")
    with pytest.raises(ModelFormatError, match=r"clash with names the ONNX model reserves"):
        with_raw_inputs(_identity_core({"x": (TensorProto.FLOAT, 1)}), schema)


def test_core_with_unknown_inputs_is_refused() -> None:
    schema = infer_schema(FRAME, "y")
    with pytest.raises(ModelFormatError, match=r"Core ONNX graph has inputs \['z'\]"):
        with_raw_inputs(_identity_core({"z": (TensorProto.FLOAT, 1)}), schema)
