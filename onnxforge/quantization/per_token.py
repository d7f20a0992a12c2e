"""int8 MatMuls whose activations get one scale per token (row), not one per tensor.

onnxruntime's dynamic int8 gives a whole activation tensor (every token of every sentence in the batch) one scale:
a single outlier token coarsens every other token's grid. Here each row gets its own scale, and the product runs on
the CPU's fast u8·s8 kernels (MatMulIntegerToFloat, per-column int8 weight scales).

- Signed inputs: ``q = round(S · x / max|x_row|)`` in [-S, S], stored as uint8 with zero point S + 1.
- Inputs that calibration shows to be (nearly) non-negative, such as GELU outputs (≥ -0.17): shifted per channel
  by a constant ``c ≥ 0`` (the calibrated minimum, with a margin; values beyond it saturate), then
  ``q = round(U · r / max(r_row))`` with ``r = x + c``, uint8 with zero point 0: twice the signed resolution.
  The constant ``c·W`` is folded into the bias the next node adds (SkipLayerNormalization, BiasGelu,
  MultiHeadAttention, an Add of a constant), else subtracted. The shift is used only where its grid is finer on
  calibration rows (:func:`unsigned_shift`): a channel's negative outlier would raise every row's peak.

S = 127 and U = 255: stored activations up to 255, so weights keep their row pairs within 128, each column with
its own steps (saturation.py), and the products are exact on every x86 kernel. The row's peak multiplies the
product afterwards (1/S or 1/U is folded into the weight scales).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..export.graph import graphs, onnx_opset
from .gptq import column_scales
from .saturation import QMAX, UINT8_MAX, column_levels, limit_pairs

MS_DOMAIN = "com.microsoft"
SHIFT_SUFFIX = "/per_token_shift"  # where prepare() stores an input's shift: an initializer named input + suffix
LEVELS_SUFFIX = "/per_token_levels"  # and a weight's steps per column (saturation.column_levels), named weight + suffix
# Consumers that add a constant bias to a MatMul output: op → (bias input index, whether the bias packs q, k, v);
# None: the other input (a plain Add of a constant vector)
BIAS_OF: dict[str, tuple[int | None, bool]] = {"SkipLayerNormalization": (4, False), "BiasGelu": (1, False),
                                              "MultiHeadAttention": (3, True), "Add": (None, False)}


def unsigned_shift(low: np.ndarray, rows: np.ndarray, margin: float = 1.5) -> np.ndarray | None:
    """The per-channel shift making an input with calibrated minima ``low`` non-negative, when its grid is finer
    than the signed one on the calibration ``rows`` (each row's own step, on average); else None."""
    shift = np.maximum(-low, 0.0) * margin + 1e-6  # + a hair: no row is all zeros (a zero scale)
    signed_step = float(np.abs(rows).max(axis=1).mean()) / 127
    unsigned_step = float((rows + shift).max(axis=1).mean()) / 255
    return shift.astype(np.float32) if unsigned_step < signed_step else None


def per_token_int8(model: onnx.ModelProto, names: set[str], shifts: dict[str, np.ndarray] | None = None) -> None:
    """Rewrite the float weight MatMuls named in ``names`` in place, in the graph or its subgraphs (a merged
    decoder's ``If``; the weights are the main graph's); ``shifts`` by MatMul input name (:func:`unsigned_shift`),
    the others signed."""
    top = model.graph
    initializers = {t.name: t for t in top.initializer}
    found = {n.name for g in graphs(top) for n in g.node
             if n.op_type == "MatMul" and n.name in names and n.input[1] in initializers}  # fmt: skip
    if missing := names - found:
        raise ValueError(f"not float weight MatMuls of this graph: {', '.join(sorted(missing))}")
    shared = {"step_unsigned": np.array(1 / UINT8_MAX, np.float32), "zero_point_unsigned": np.array(0, np.uint8),
              "step_signed": np.array(1 / QMAX, np.float32), "zero_point_signed": np.array(QMAX + 1, np.uint8),
              "tiny": np.array(1e-30, np.float32), "last_axis": np.array([-1], np.int64),
              "one": np.array(1.0, np.float32)}  # fmt: skip
    top.initializer.extend(numpy_helper.from_array(v, f"per_token/{k}") for k, v in shared.items())
    reduce = ({"inputs": ["per_token/last_axis"], "attrs": {"keepdims": 1}} if onnx_opset(model) >= 18
              else {"inputs": [], "attrs": {"keepdims": 1, "axes": [-1]}})  # fmt: skip
    for graph in reversed(list(graphs(top))):  # subgraphs before the graph holding them (rewriting copies nodes)
        readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for index, name in enumerate(node.input):
                readers.setdefault(name, []).append((node, index))
        nodes = []
        for node in graph.node:
            if node.name not in found:
                nodes.append(node)
                continue
            weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
            stored = initializers.get(node.input[1] + LEVELS_SUFFIX)
            levels = column_levels(weight) if stored is None else numpy_helper.to_array(stored)
            shift = (shifts or {}).get(node.input[0])
            rewritten, offset = _rewrite(node, weight, levels, shift, top, reduce)
            nodes.extend(rewritten)
            if offset is not None and not _fold_into_bias(node.output[0], readers, offset, initializers):
                top.initializer.append(numpy_helper.from_array(offset, f"{node.name}/shift_product"))
                rewritten[-1].output[0] = f"{node.name}/rescaled"
                nodes.append(helper.make_node("Sub", [f"{node.name}/rescaled", f"{node.name}/shift_product"],
                                              [node.output[0]], name=f"{node.name}/unshift"))  # fmt: skip
        del graph.node[:]
        graph.node.extend(nodes)
    used = {i for g in graphs(top) for n in g.node for i in n.input} | {o.name for o in top.output}
    kept = [t for t in top.initializer if t.name in used]
    del top.initializer[:]
    top.initializer.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _rewrite(node: onnx.NodeProto, weight: np.ndarray, levels: np.ndarray, shift: np.ndarray | None,
             graph: onnx.GraphProto, reduce: dict) -> tuple[list[onnx.NodeProto], np.ndarray | None]:  # fmt: skip
    """The per-token nodes replacing ``node`` (the last writes its output) and the constant ``c·Ŵ`` to remove."""
    scale = column_scales(weight, levels)
    q = limit_pairs(np.clip(np.round(weight / scale), -levels, levels)).astype(np.int8)  # GPTQ's integers: unchanged
    name, x = node.name, node.input[0]
    kind = "signed" if shift is None else "unsigned"
    steps = QMAX if shift is None else UINT8_MAX
    graph.initializer.extend([numpy_helper.from_array(q, f"{name}/weight_int8"),
                              numpy_helper.from_array((scale / steps).astype(np.float32), f"{name}/weight_scale")])

    def op(op_type: str, inputs: list[str], out: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op_type, inputs, [f"{name}/{out}"], name=f"{name}/{out}", **attrs)

    if shift is None:  # peak = max |x|, kept above zero
        source, offset = x, None
        head = [op("Abs", [x], "magnitude"),
                op("ReduceMax", [f"{name}/magnitude", *reduce["inputs"]], "raw_peak", **reduce["attrs"]),
                op("Max", [f"{name}/raw_peak", "per_token/tiny"], "peak")]  # fmt: skip
    else:  # peak = max (x + c) > 0 by the shift's hair
        graph.initializer.append(numpy_helper.from_array(shift, f"{name}/shift"))
        source = f"{name}/shifted"
        offset = (shift.astype(np.float64) @ (q * scale.astype(np.float64))).astype(np.float32)
        head = [op("Add", [x, f"{name}/shift"], "shifted"),
                op("ReduceMax", [source, *reduce["inputs"]], "peak", **reduce["attrs"])]  # fmt: skip
    nodes = [
        *head,
        op("Div", [source, f"{name}/peak"], "unit"),
        op("QuantizeLinear", [f"{name}/unit", f"per_token/step_{kind}", f"per_token/zero_point_{kind}"], "quantized"),
        op("MatMulIntegerToFloat", [f"{name}/quantized", f"{name}/weight_int8", "per_token/one",
           f"{name}/weight_scale", f"per_token/zero_point_{kind}"], "product", domain=MS_DOMAIN),
        helper.make_node("Mul", [f"{name}/product", f"{name}/peak"], [node.output[0]], name=name),
    ]  # fmt: skip
    return nodes, offset


def _fold_into_bias(output: str, readers: dict[str, list[tuple[onnx.NodeProto, int]]], offset: np.ndarray,
                    initializers: dict[str, onnx.TensorProto]) -> bool:  # fmt: skip
    """Subtract ``offset`` from the constant bias of ``output``'s one reader, if it has one of its own; whether it
    did."""
    if len(readers.get(output, [])) != 1 or readers[output][0][0].op_type not in BIAS_OF:
        return False
    reader, index = readers[output][0]
    bias_index, packed = BIAS_OF[reader.op_type]
    bias_index = 1 - index if bias_index is None else bias_index
    if len(reader.input) <= bias_index or (packed and index > 2):
        return False
    bias_name = reader.input[bias_index]
    if bias_name not in initializers or len(readers[bias_name]) != 1:  # absent, computed, or shared
        return False
    tensor = initializers[bias_name]
    bias = numpy_helper.to_array(tensor).astype(np.float32).copy()
    start = index * len(offset) if packed else 0
    if bias.shape != ((3 if packed else 1) * len(offset),):
        return False
    bias[start : start + len(offset)] -= offset
    tensor.CopyFrom(numpy_helper.from_array(bias, tensor.name))
    return True
