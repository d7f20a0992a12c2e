"""Vocabulary tables stored as int8 rows: a word-embedding table is most of an encoder's bytes (47 of MiniLM's
60 MB once its MatMuls are int8) and is only ever gathered from, a row per token.

Each row gets a symmetric scale (largest magnitude / 127), and only the rows a batch needs are de-quantized:
``Gather(table, ids)`` becomes ``Gather(codes, ids) · Gather(scales, ids)``. The fused EmbedLayerNormalization
takes a whole table, so it is given the batch's de-quantized rows as its table and positions 0…n−1 as its ids.
Nothing is folded at load (which cost ~70 ms of a cold start) and the table stays int8 in memory too.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..export.graph import graphs

MIN_ROWS = 1024  # a vocabulary, not a small table such as position or token-type embeddings
# Which input of which op gathers rows from a table (op type → (table input, ids input)).
GATHERED = {"Gather": (0, 1), "EmbedLayerNormalization": (2, 0)}


def int8_rows(model: onnx.ModelProto) -> list[str]:
    """Replace, in ``model``, every float vocabulary table that is only gathered from (in the graph or its
    subgraphs) with int8 rows and a scale per row, de-quantized after the gather; returns the tables' names."""
    readers: dict[str, list[tuple[onnx.GraphProto, onnx.NodeProto, int]]] = {}
    for graph in graphs(model.graph):
        for node in graph.node:
            for index, name in enumerate(node.input):
                readers.setdefault(name, []).append((graph, node, index))
    changed, before = [], {}
    for tensor in list(model.graph.initializer):
        uses = readers.get(tensor.name, [])
        if (tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2 or tensor.dims[0] < MIN_ROWS or not uses
                or not all(GATHERED.get(node.op_type, (None,))[0] == index and _axis0(node) for _, node, index in uses)):  # fmt: skip
            continue
        table = numpy_helper.to_array(tensor)
        scales = np.abs(table).max(axis=1, keepdims=True) / 127
        scales[scales == 0] = 1.0
        codes = np.clip(np.round(table / scales), -127, 127).astype(np.int8)
        model.graph.initializer.remove(tensor)
        model.graph.initializer.extend([numpy_helper.from_array(codes, f"{tensor.name}_int8"),
                                        numpy_helper.from_array(scales.astype(np.float32), f"{tensor.name}_scale")])  # fmt: skip
        for graph, node, _ in uses:
            before.setdefault(id(graph), (graph, {}))[1][id(node)] = _rows_for(node, tensor.name, model)
        changed.append(tensor.name)
    for graph, made in before.values():
        nodes = [new for node in graph.node for new in (*made.get(id(node), []), node)]
        del graph.node[:]
        graph.node.extend(nodes)
    return changed


def _rows_for(node: onnx.NodeProto, table: str, model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes that de-quantize the rows ``node`` gathers from ``table``, rewiring ``node`` to read them."""
    table_input, ids_input = GATHERED[node.op_type]
    ids, base = node.input[ids_input], f"{node.name or table}/int8_rows"
    flat = ids if node.op_type == "Gather" else f"{base}/flat_ids"
    made = [] if node.op_type == "Gather" else [
        helper.make_node("Reshape", [ids, _constant(model, "int8_rows_flat", np.array([-1], np.int64))], [flat],
                         name=f"{base}/Flatten")]  # fmt: skip
    made += [
        helper.make_node("Gather", [f"{table}_int8", flat], [f"{base}/codes"], name=f"{base}/GatherCodes"),
        helper.make_node("Cast", [f"{base}/codes"], [f"{base}/float"], to=TensorProto.FLOAT, name=f"{base}/Cast"),
        helper.make_node("Gather", [f"{table}_scale", flat], [f"{base}/scales"], name=f"{base}/GatherScales"),
        helper.make_node("Mul", [f"{base}/float", f"{base}/scales"], [f"{base}/rows"], name=f"{base}/Scale"),
    ]  # fmt: skip
    if node.op_type == "Gather":  # rows in the gather's own shape: (ids…, width)
        node.op_type, node.input[:] = "Identity", [f"{base}/rows"]
        del node.attribute[:]
        return made
    # EmbedLayerNormalization: the batch's rows are its table, positions 0…n−1 its ids (in the ids' shape and type)
    made += [
        helper.make_node("Shape", [flat], [f"{base}/count"], name=f"{base}/Count"),
        helper.make_node("Squeeze", [f"{base}/count"], [f"{base}/n"], name=f"{base}/N"),
        helper.make_node("Range", [_constant(model, "int8_rows_zero", np.array(0, np.int64)), f"{base}/n",
                                   _constant(model, "int8_rows_one", np.array(1, np.int64))], [f"{base}/positions"],
                         name=f"{base}/Range"),
        helper.make_node("Shape", [ids], [f"{base}/ids_shape"], name=f"{base}/IdsShape"),
        helper.make_node("Reshape", [f"{base}/positions", f"{base}/ids_shape"], [f"{base}/positions2d"],
                         name=f"{base}/Positions"),
        helper.make_node("Cast", [f"{base}/positions2d"], [f"{base}/row_ids"], to=_elem_type(model, ids),
                         name=f"{base}/RowIds"),
    ]  # fmt: skip
    node.input[table_input], node.input[ids_input] = f"{base}/rows", f"{base}/row_ids"
    return made


def _constant(model: onnx.ModelProto, name: str, value: np.ndarray) -> str:
    if all(t.name != name for t in model.graph.initializer):
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _elem_type(model: onnx.ModelProto, name: str) -> int:
    """The element type of ``name`` (a graph input or a Cast's output), int32 by default as fused graphs use."""
    for value in model.graph.input:
        if value.name == name:
            return value.type.tensor_type.elem_type
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] == name:
            return next(a.i for a in node.attribute if a.name == "to")
    return TensorProto.INT32


def _axis0(node: onnx.NodeProto) -> bool:
    return node.op_type != "Gather" or next((a.i for a in node.attribute if a.name == "axis"), 0) == 0
