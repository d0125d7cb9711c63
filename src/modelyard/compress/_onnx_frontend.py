"""An ONNX front end that lets any exported model take raw feature columns.

Every modelyard model is exported as a *core* graph that takes encoded features (see
:mod:`modelyard.data._schema` for the encoding), then wrapped by
:func:`with_raw_inputs`, which adds one graph input per feature column:

* numeric column  -> ``float32 [N, 1]`` (missing values as NaN);
* categorical one -> ``string [N, 1]`` mapped to its code by ``ai.onnx.ml.LabelEncoder``
  (unseen or missing values, given as ``""``, map to code 0).

The core graph may take:

* ``x_num`` ``float32 [N, n_numeric]`` and/or ``x_cat`` ``int64 [N, n_categorical]``
  (layout ``"split"``, used by the torch MLP), or
* ``x`` ``float32 [N, n_numeric + n_categorical]``: numeric columns then the
  categorical codes as floats (layout ``"matrix"``, used by tree ensembles).

Its outputs (``probabilities [N, n_classes]`` for classifiers, ``prediction [N]`` for
regression) are kept as they are. The schema is stored in the model's metadata under
``modelyard.schema`` so the ONNX file alone is enough to serve and check inputs.
"""

from __future__ import annotations

import json

import onnx
from onnx import TensorProto, helper

from modelyard.data._schema import Schema
from modelyard.errors import ModelFormatError
from modelyard.models._base import OUTPUT_NAMES, SCHEMA_KEY

__all__ = ["with_raw_inputs", "SCHEMA_KEY", "CORE_INPUTS", "OUTPUT_NAMES"]

CORE_INPUTS = ("x_num", "x_cat", "x")
_ML_DOMAIN = "ai.onnx.ml"
_ML_OPSET = 3  # LabelEncoder with string keys and int64 values is in ai.onnx.ml >= 2
_PREFIX = "core/"  # core tensor names are prefixed so no column name can collide with them


def _rename_core(core: onnx.ModelProto) -> onnx.GraphProto:
    """Copy the core graph with every tensor name but its outputs prefixed (inputs too: ``x`` -> ``core/x``).

    Column inputs may then have any name, ``x`` included, without colliding with a core tensor.
    """
    graph = onnx.GraphProto()
    graph.CopyFrom(core.graph)
    keep = {o.name for o in graph.output}

    def ren(name: str) -> str:
        return name if (not name or name in keep) else _PREFIX + name

    for node in graph.node:
        node.input[:] = [ren(n) for n in node.input]
        node.output[:] = [ren(n) for n in node.output]
        if node.name:
            node.name = _PREFIX + node.name
    for init in graph.initializer:
        init.name = ren(init.name)
    for vi in graph.value_info:
        vi.name = ren(vi.name)
    for vi in graph.input:
        vi.name = ren(vi.name)
    return graph


def with_raw_inputs(core: onnx.ModelProto, schema: Schema, *, doc: str = "") -> onnx.ModelProto:
    """Wrap ``core`` so that it takes one input per raw feature column.

    Parameters
    ----------
    core : onnx.ModelProto
        A graph whose inputs are a subset of ``x_num``/``x_cat`` or exactly ``x``.
    schema : Schema
        The schema the model was trained on; gives the columns and vocabularies.
    doc : str, default=""
        Stored as the graph's doc string.
    """
    core_inputs = [i.name for i in core.graph.input if i.name not in {t.name for t in core.graph.initializer}]
    bad = [n for n in core_inputs if n not in CORE_INPUTS]
    if bad or not core_inputs or ("x" in core_inputs and len(core_inputs) > 1):
        raise ModelFormatError(
            f"Core ONNX graph has inputs {core_inputs}; expected 'x' alone, or 'x_num' and/or 'x_cat'."
        )
    clash = [n for n in schema.feature_names if n in OUTPUT_NAMES or n.startswith(_PREFIX) or n.startswith("front/")]
    if clash:
        raise ModelFormatError(f"Feature columns {clash} clash with names the ONNX model reserves; rename them.")

    graph = _rename_core(core)
    nodes: list[onnx.NodeProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    num_cols: list[str] = []
    cat_codes: list[str] = []
    for col in schema.features:
        if col.kind == "numeric":
            inputs.append(helper.make_tensor_value_info(col.name, TensorProto.FLOAT, ["N", 1]))
            num_cols.append(col.name)
        else:
            inputs.append(helper.make_tensor_value_info(col.name, TensorProto.STRING, ["N", 1]))
            code = f"front/code/{col.name}"
            keys = list(col.categories) or [""]
            values = list(range(1, len(col.categories) + 1)) or [0]
            nodes.append(
                helper.make_node(
                    "LabelEncoder", [col.name], [code], domain=_ML_DOMAIN, name=f"front/encode/{col.name}",
                    keys_strings=keys, values_int64s=values, default_int64=0,
                )
            )
            cat_codes.append(code)

    def concat(parts: list[str], out: str) -> None:
        if len(parts) == 1:
            nodes.append(helper.make_node("Identity", parts, [out], name=f"front/{out}"))
        else:
            nodes.append(helper.make_node("Concat", parts, [out], axis=1, name=f"front/{out}"))

    if "x" in core_inputs:
        parts = list(num_cols)
        if cat_codes:
            concat(cat_codes, "front/x_cat")
            nodes.append(helper.make_node("Cast", ["front/x_cat"], ["front/x_cat_f"], to=TensorProto.FLOAT))
            parts.append("front/x_cat_f")
        concat(parts, _PREFIX + "x")
    if "x_num" in core_inputs:
        if not num_cols:
            raise ModelFormatError("Core graph takes 'x_num' but the schema has no numeric feature.")
        concat(num_cols, _PREFIX + "x_num")
    if "x_cat" in core_inputs:
        if not cat_codes:
            raise ModelFormatError("Core graph takes 'x_cat' but the schema has no categorical feature.")
        concat(cat_codes, _PREFIX + "x_cat")

    del graph.input[:]
    graph.input.extend(inputs)
    front_and_core = nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(front_and_core)
    graph.name = "modelyard"
    graph.doc_string = doc

    opsets: dict[str, int] = {}
    for op in core.opset_import:
        opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    opsets[_ML_DOMAIN] = max(opsets.get(_ML_DOMAIN, 0), _ML_OPSET)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        producer_name="modelyard",
    )
    model.ir_version = core.ir_version
    helper.set_model_props(model, {SCHEMA_KEY: json.dumps(schema.to_dict(), sort_keys=True)})
    onnx.checker.check_model(model)
    return model
