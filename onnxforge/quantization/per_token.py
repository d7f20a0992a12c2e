"""int8 MatMuls whose activations get one scale per token (row), not one per tensor.

onnxruntime's dynamic int8 gives a whole activation tensor (every token of every sentence in the batch) one scale:
a single outlier token coarsens every other token's grid. Here each row gets its own scale, and the product runs on
the CPU's fast u8·s8 kernels (MatMulIntegerToFloat, per-column int8 weight scales); the row scale multiplies the
float result afterwards.

- Signed inputs: ``s = max|x_row| / 127``, ``round(x / s)`` in [-127, 127], stored as uint8 with zero point 128.
- Inputs that calibration shows to be (nearly) non-negative, such as GELU outputs (≥ -0.17): shifted by a
  per-channel constant ``c`` to be ≥ 0, then ``s = max(x_row + c) / 255``, uint8 with zero point 0 — twice the
  resolution of the signed grid. The shift's product ``c·W`` is a constant, subtracted from the result.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
Shift = np.ndarray  # per input channel, added before quantizing (unsigned grid)
SHIFT_SUFFIX = "/per_token_shift"  # where prepare() stores an input's shift: an initializer named input + suffix


def unsigned_shift(low: np.ndarray, high: np.ndarray, margin: float = 1.25) -> Shift | None:
    """The shift that makes an input non-negative, when the unsigned grid is finer than the signed one."""
    shift = np.maximum(-low, 0.0) * margin
    signed_step = max(float(np.abs(low).max()), float(np.abs(high).max())) / 127
    unsigned_step = float((high + shift).max()) / 255
    return shift.astype(np.float32) if unsigned_step < signed_step else None


def per_token_int8(model: onnx.ModelProto, names: set[str], shifts: dict[str, Shift] | None = None) -> None:
    """Rewrite the float weight MatMuls named in ``names`` in place; ``shifts`` by MatMul input name (see module)."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    found = {n.name for n in graph.node if n.op_type == "MatMul" and n.name in names and n.input[1] in initializers}
    if missing := names - found:
        raise ValueError(f"not float weight MatMuls of this graph: {', '.join(sorted(missing))}")
    shared = {"one": np.array(1.0, np.float32), "zero_point_signed": np.array(128, np.uint8),
              "zero_point_unsigned": np.array(0, np.uint8), "inv127": np.array(1 / 127, np.float32),
              "inv255": np.array(1 / 255, np.float32), "tiny": np.array(1e-30, np.float32),
              "last_axis": np.array([-1], np.int64)}  # fmt: skip
    graph.initializer.extend(numpy_helper.from_array(v, f"per_token/{k}") for k, v in shared.items())
    reduce = ({"inputs": ["per_token/last_axis"], "attrs": {"keepdims": 1}} if _opset(model) >= 18
              else {"inputs": [], "attrs": {"keepdims": 1, "axes": [-1]}})  # fmt: skip
    nodes = []
    for node in graph.node:
        if node.name in found:
            shift = (shifts or {}).get(node.input[0])
            nodes.extend(_rewrite(node, numpy_helper.to_array(initializers[node.input[1]]), shift, graph, reduce))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _rewrite(node: onnx.NodeProto, weight: np.ndarray, shift: Shift | None, graph: onnx.GraphProto,
             reduce: dict) -> list[onnx.NodeProto]:  # fmt: skip
    weight = weight.astype(np.float32)
    scale = np.maximum(np.abs(weight).max(axis=0), 1e-12) / 127.0
    q = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
    name, x, y = node.name, node.input[0], node.output[0]
    constants = {"weight_int8": q, "weight_scale": scale.astype(np.float32)}
    if shift is not None:
        constants["shift"] = shift
        constants["shift_product"] = (shift.astype(np.float64) @ (q * scale.astype(np.float64))).astype(np.float32)
    graph.initializer.extend(numpy_helper.from_array(v, f"{name}/{k}") for k, v in constants.items())

    def op(op_type: str, inputs: list[str], out: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op_type, inputs, [out], name=f"{name}/{out.rsplit('/', 1)[-1]}", **attrs)

    if shift is None:
        source, steps, zero_point = f"{name}/abs", "per_token/inv127", "per_token/zero_point_signed"
        first = [op("Abs", [x], source)]
        peak_of = source
        quantized_from = x
    else:
        source, steps, zero_point = f"{name}/shifted", "per_token/inv255", "per_token/zero_point_unsigned"
        first = [op("Add", [x, f"{name}/shift"], source)]
        peak_of = quantized_from = source
    product = f"{name}/scaled_product" if shift is not None else y
    nodes = [
        *first,
        op("ReduceMax", [peak_of, *reduce["inputs"]], f"{name}/peak", **reduce["attrs"]),
        op("Mul", [f"{name}/peak", steps], f"{name}/raw_scale"),
        op("Max", [f"{name}/raw_scale", "per_token/tiny"], f"{name}/row_scale"),
        op("Div", [quantized_from, f"{name}/row_scale"], f"{name}/steps"),
        op("QuantizeLinear", [f"{name}/steps", "per_token/one", zero_point], f"{name}/quantized"),
        helper.make_node("MatMulIntegerToFloat", [f"{name}/quantized", f"{name}/weight_int8", "per_token/one",
                         f"{name}/weight_scale", zero_point], [f"{name}/product"], name=f"{name}/matmul",
                         domain=MS_DOMAIN),
        helper.make_node("Mul", [f"{name}/product", f"{name}/row_scale"], [product], name=f"{name}/rescale"),
    ]  # fmt: skip
    if shift is not None:
        nodes.append(helper.make_node("Sub", [product, f"{name}/shift_product"], [y], name=name))
    return nodes
