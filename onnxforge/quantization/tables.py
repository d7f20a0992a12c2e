"""Vocabulary tables stored as int8 or 4-bit rows: a word-embedding table is most of an encoder's bytes (47 of
MiniLM's 60 MB once its MatMuls are int8) and is only ever gathered from, a row per token.

int8: each row gets a symmetric scale (largest magnitude / 127). 4-bit: each block of 32 along a row gets an
asymmetric least-squares fit (weights.fit_blocks: codes 0…15, an integer zero point, an fp16 scale); two codes
share a byte (even column in the low nibble). Only the rows a batch needs are de-quantized, with standard ONNX
operators (Gather, BitwiseAnd, BitShift, Cast, Sub, Mul), so any onnxruntime build runs them, WASM included:
``Gather(table, ids)`` becomes ``Gather(codes, ids) · Gather(scales, ids)``. The fused EmbedLayerNormalization
takes a whole table, so it is given the batch's de-quantized rows as its table and positions 0…n−1 as its ids.
Nothing is folded at load (which cost ~70 ms of a cold start) and the table stays small in memory too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..export.graph import graphs

MIN_ROWS = 1024  # a vocabulary, not a small table such as position or token-type embeddings
BLOCK = 32  # 4-bit rows: values per scale and zero point
# Which input of which op gathers rows from a table (op type → (table input, ids input)).
GATHERED = {"Gather": (0, 1), "EmbedLayerNormalization": (2, 0)}


def int8_rows(model: onnx.ModelProto) -> list[str]:
    """Every float vocabulary table of ``model`` only gathered from → int8 rows (see :func:`quantized_rows`)."""
    return quantized_rows(model, 8)


def quantized_rows(model: onnx.ModelProto, bits: int = 8) -> list[str]:
    """Replace, in ``model``, every float vocabulary table that is only gathered from (in the graph or its
    subgraphs) with ``bits`` (8 or 4) rows de-quantized after the gather; returns the tables' names."""
    if bits not in (4, 8):
        raise ValueError(f"vocabulary rows are 8 or 4 bits, not {bits}")
    initializers = {t.name: t for t in model.graph.initializer}
    changed = [name for name in gathered_tables(model) if bits == 8 or initializers[name].dims[1] % BLOCK == 0]
    for name in changed:
        table = numpy_helper.to_array(initializers[name])
        model.graph.initializer.remove(initializers[name])
        model.graph.initializer.extend(_int8_codes(table, name) if bits == 8 else _int4_codes(table, name))
        width = table.shape[1]
        rows = (lambda flat, base, name=name: _int8_rows(name, flat, base)) if bits == 8 else (
            lambda flat, base, name=name, width=width: _int4_rows(name, flat, base, width, model))  # fmt: skip
        replace_gathers(model, name, width, rows, flat=bits == 4)  # 4-bit rows unpack as (n, width)
    return changed


def _readers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.GraphProto, onnx.NodeProto, int]]]:
    """Value name → (graph, node, input index) of every node reading it, in the graph and its subgraphs."""
    readers: dict[str, list[tuple[onnx.GraphProto, onnx.NodeProto, int]]] = {}
    for graph in graphs(model.graph):
        for node in graph.node:
            for index, name in enumerate(node.input):
                readers.setdefault(name, []).append((graph, node, index))
    return readers


def gathered_tables(model: onnx.ModelProto, min_rows: int = MIN_ROWS) -> list[str]:
    """The float tables of ``model``: 2-D initializers of at least ``min_rows`` rows that are only gathered from
    (rows, along axis 0)."""
    readers = _readers(model)
    return [tensor.name for tensor in model.graph.initializer
            if tensor.data_type == TensorProto.FLOAT and len(tensor.dims) == 2 and tensor.dims[0] >= min_rows
            and (uses := readers.get(tensor.name)) and all(GATHERED.get(node.op_type, (None,))[0] == index
                                                           and _axis0(node) for _, node, index in uses)]  # fmt: skip


def replace_gathers(model: onnx.ModelProto, table: str, width: int, rows: Callable[[str, str], list[onnx.NodeProto]],
                    flat: bool = True) -> None:  # fmt: skip
    """Rewire every node gathering from ``table`` to read ``rows(ids, base)``'s output ``{base}/rows`` (n, width)
    instead, inserted before it; ``flat``: the ids are flattened first (the rows come back in their shape)."""
    uses = _readers(model).get(table, [])  # held: protobuf keeps a node's Python object (its id) while referenced
    made: dict[int, tuple[onnx.GraphProto, dict[int, list[onnx.NodeProto]]]] = {}
    for graph, node, _ in uses:
        made.setdefault(id(graph), (graph, {}))[1][id(node)] = _rows_for(node, table, width, rows, flat, model)
    for graph, nodes_of in made.values():
        nodes = [new for node in graph.node for new in (*nodes_of.get(id(node), []), node)]
        del graph.node[:]
        graph.node.extend(nodes)


def _int8_codes(table: np.ndarray, name: str) -> list[onnx.TensorProto]:
    scales = np.abs(table).max(axis=1, keepdims=True) / 127
    scales[scales == 0] = 1.0
    codes = np.clip(np.round(table / scales), -127, 127).astype(np.int8)
    return [numpy_helper.from_array(codes, f"{name}_int8"), numpy_helper.from_array(scales.astype(np.float32), f"{name}_scale")]


def _int4_codes(table: np.ndarray, name: str) -> list[onnx.TensorProto]:
    from .weights import fit_blocks

    codes, scales, zeros = fit_blocks(table.T, BLOCK)  # blocks along each row: (rows, width/32, 32)
    flat = codes.reshape(len(table), -1)
    packed = (flat[:, 0::2] | (flat[:, 1::2] << 4)).astype(np.uint8)
    return [numpy_helper.from_array(packed, f"{name}_int4"), numpy_helper.from_array(scales.astype(np.float16), f"{name}_scale"),
            numpy_helper.from_array(zeros, f"{name}_zero")]  # fmt: skip


def _rows_for(node: onnx.NodeProto, table: str, width: int, rows_of: Callable[[str, str], list[onnx.NodeProto]],
             flat_ids: bool, model: onnx.ModelProto) -> list[onnx.NodeProto]:  # fmt: skip
    """Nodes that de-quantize the rows ``node`` gathers from ``table``, rewiring ``node`` to read them."""
    table_input, ids_input = GATHERED[node.op_type]
    ids, base = node.input[ids_input], f"{node.name or table}/rows"
    flat = ids if node.op_type == "Gather" and not flat_ids else f"{base}/flat_ids"  # blocks unpack as (n, width)
    made = [] if flat == ids else [
        helper.make_node("Reshape", [ids, constant(model, "rows_flat", np.array([-1], np.int64))], [flat],
                         name=f"{base}/Flatten")]  # fmt: skip
    made += rows_of(flat, base)
    if node.op_type == "Gather":  # rows in the gather's own shape: (ids…, width)
        rows = f"{base}/rows"
        if flat != ids:
            width_tensor = constant(model, f"rows_width_{width}", np.array([width], np.int64))
            made += [
                helper.make_node("Shape", [ids], [f"{base}/ids_shape"], name=f"{base}/IdsShape"),
                helper.make_node("Concat", [f"{base}/ids_shape", width_tensor], [f"{base}/shape"], axis=0,
                                 name=f"{base}/Shape"),
                helper.make_node("Reshape", [rows, f"{base}/shape"], [f"{base}/shaped"], name=f"{base}/Unflatten"),
            ]  # fmt: skip
            rows = f"{base}/shaped"
        node.op_type, node.input[:] = "Identity", [rows]
        del node.attribute[:]
        return made
    # EmbedLayerNormalization: the batch's rows are its table, positions 0…n−1 its ids (in the ids' shape and type)
    made += [
        helper.make_node("Shape", [flat], [f"{base}/count"], name=f"{base}/Count"),
        helper.make_node("Squeeze", [f"{base}/count"], [f"{base}/n"], name=f"{base}/N"),
        helper.make_node("Range", [constant(model, "rows_zero", np.array(0, np.int64)), f"{base}/n",
                                   constant(model, "rows_one", np.array(1, np.int64))], [f"{base}/positions"],
                         name=f"{base}/Range"),
        helper.make_node("Shape", [ids], [f"{base}/ids_shape"], name=f"{base}/IdsShape"),
        helper.make_node("Reshape", [f"{base}/positions", f"{base}/ids_shape"], [f"{base}/positions2d"],
                         name=f"{base}/Positions"),
        helper.make_node("Cast", [f"{base}/positions2d"], [f"{base}/row_ids"], to=_elem_type(model, ids),
                         name=f"{base}/RowIds"),
    ]  # fmt: skip
    node.input[table_input], node.input[ids_input] = f"{base}/rows", f"{base}/row_ids"
    return made


def _int8_rows(table: str, flat: str, base: str) -> list[onnx.NodeProto]:
    """(n,) ids → ``{base}/rows`` (n, width): int8 codes times each row's scale."""
    return [
        helper.make_node("Gather", [f"{table}_int8", flat], [f"{base}/codes"], name=f"{base}/GatherCodes"),
        helper.make_node("Cast", [f"{base}/codes"], [f"{base}/float"], to=TensorProto.FLOAT, name=f"{base}/Cast"),
        helper.make_node("Gather", [f"{table}_scale", flat], [f"{base}/scales"], name=f"{base}/GatherScales"),
        helper.make_node("Mul", [f"{base}/float", f"{base}/scales"], [f"{base}/rows"], name=f"{base}/Scale"),
    ]  # fmt: skip


def _int4_rows(table: str, flat: str, base: str, width: int, model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """(n,) ids → ``{base}/rows`` (n, width): nibbles unpacked, (code − zero) · scale per block of 32."""
    low = constant(model, "rows_low_nibble", np.array(15, np.uint8))
    four = constant(model, "rows_four", np.array(4, np.uint8))
    last = constant(model, "rows_last_axis", np.array([-1], np.int64))
    blocks = constant(model, f"rows_blocks_{width}", np.array([-1, width // BLOCK, BLOCK], np.int64))
    rows = constant(model, f"rows_width_2d_{width}", np.array([-1, width], np.int64))
    n = lambda op, inputs, out, **kw: helper.make_node(op, inputs, [f"{base}/{out}"], name=f"{base}/{out}", **kw)
    return [
        n("Gather", [f"{table}_int4", flat], "packed"),
        n("BitwiseAnd", [f"{base}/packed", low], "even"),
        n("BitShift", [f"{base}/packed", four], "odd", direction="RIGHT"),
        n("Unsqueeze", [f"{base}/even", last], "even1"),
        n("Unsqueeze", [f"{base}/odd", last], "odd1"),
        n("Concat", [f"{base}/even1", f"{base}/odd1"], "pairs", axis=-1),
        n("Reshape", [f"{base}/pairs", blocks], "codes"),
        n("Gather", [f"{table}_zero", flat], "zeros"),
        n("Unsqueeze", [f"{base}/zeros", last], "zeros1"),
        n("Cast", [f"{base}/codes"], "codes_f", to=TensorProto.FLOAT),
        n("Cast", [f"{base}/zeros1"], "zeros_f", to=TensorProto.FLOAT),
        n("Sub", [f"{base}/codes_f", f"{base}/zeros_f"], "centred"),
        n("Gather", [f"{table}_scale", flat], "scales16"),
        n("Cast", [f"{base}/scales16"], "scales", to=TensorProto.FLOAT),
        n("Unsqueeze", [f"{base}/scales", last], "scales1"),
        n("Mul", [f"{base}/centred", f"{base}/scales1"], "scaled"),
        n("Reshape", [f"{base}/scaled", rows], "rows"),
    ]


def constant(model: onnx.ModelProto, name: str, value: np.ndarray) -> str:
    """An initializer ``name`` holding ``value`` (added once)."""
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
