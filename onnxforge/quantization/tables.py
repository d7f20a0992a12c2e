"""Vocabulary tables stored as int8 rows: a word-embedding table is most of an encoder's bytes (47 of MiniLM's
60 MB once its MatMuls are int8) and is only ever gathered from, a row per token.

Each row gets a symmetric scale (largest magnitude / 127). The graph keeps its float table as
``Mul(Cast(codes), scales)`` under the table's old name, so every consumer (Gather, the fused
EmbedLayerNormalization) is untouched; onnxruntime folds the two constant nodes once at load. Disk, download and
hashing shrink 4×; memory at run time does not (the folded table is float again).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_ROWS = 1024  # a vocabulary, not a small table such as position or token-type embeddings
# Which inputs of which ops gather rows from a table (op type → input indices).
GATHERED = {"Gather": (0,), "EmbedLayerNormalization": (2,)}


def int8_rows(model: onnx.ModelProto) -> list[str]:
    """Replace, in ``model``, every float vocabulary table that is only gathered from with int8 rows and a scale
    per row; returns the tables' names."""
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, index))
    changed, added = [], []
    for tensor in list(model.graph.initializer):
        uses = readers.get(tensor.name, [])
        if (tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2 or tensor.dims[0] < MIN_ROWS or not uses
                or not all(index in GATHERED.get(node.op_type, ()) and _axis0(node) for node, index in uses)):  # fmt: skip
            continue
        table = numpy_helper.to_array(tensor)
        scales = np.abs(table).max(axis=1, keepdims=True) / 127
        scales[scales == 0] = 1.0
        codes = np.clip(np.round(table / scales), -127, 127).astype(np.int8)
        model.graph.initializer.remove(tensor)
        model.graph.initializer.extend([numpy_helper.from_array(codes, f"{tensor.name}_int8"),
                                        numpy_helper.from_array(scales.astype(np.float32), f"{tensor.name}_scale")])  # fmt: skip
        added += [helper.make_node("Cast", [f"{tensor.name}_int8"], [f"{tensor.name}_float"], to=TensorProto.FLOAT,
                                   name=f"{tensor.name}/Cast"),
                  helper.make_node("Mul", [f"{tensor.name}_float", f"{tensor.name}_scale"], [tensor.name],
                                   name=f"{tensor.name}/Scale")]  # fmt: skip
        changed.append(tensor.name)
    if added:
        nodes = added + list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return changed


def _axis0(node: onnx.NodeProto) -> bool:
    return node.op_type != "Gather" or next((a.i for a in node.attribute if a.name == "axis"), 0) == 0
