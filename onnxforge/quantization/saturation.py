"""The one rule that makes int8 artifacts give the same integers on every x86 CPU, and a graph audit for it.

onnxruntime's u8·s8 kernels on CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply with ``VPMADDUBSW``: the
products of K rows ``2i`` and ``2i + 1`` are added in a signed 16-bit lane that saturates at 32,767. VNNI
(``VPDPBUSD``) and AMX add in 32 bits and never saturate. So ``a · W`` is exact on every kernel iff
``max(a) · (|w₂ᵢ| + |w₂ᵢ₊₁|) ≤ 32,767`` for every pair of rows in every column, with ``a`` the *stored* uint8
activation (zero point included) and ``w`` the stored int8 weight. With activations up to 255, that is
``|w₂ᵢ| + |w₂ᵢ₊₁| ≤ 128``. :func:`column_levels` gives each weight column the most steps (64 to 127) whose rounded
pairs stay within it; a column without two large neighbours keeps all 127. onnxruntime's own quantizer (dynamic,
static) sets one scale rule for every column: there, its ``reduce_range`` (±64) meets the rule.
Checked on onnxruntime's real AVX2 kernel (qemu ``-cpu EPYC-Rome``, 1 to 33 rows): pair sums of 128 at a = 255 are
exact, 129 saturate, and rows pair as (2i, 2i + 1).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..export.graph import graphs

PAIR_LIMIT = 32767  # a signed 16-bit lane holds the sum of two u8·s8 products
UINT8_MAX = 255
SYMMETRIC_INT8_MAX = 127  # MatMulNBits' activations at accuracy level 4
QMAX = 127  # symmetric int8 weights
PAIR_WEIGHT_LIMIT = PAIR_LIMIT // UINT8_MAX  # 128: |w₂ᵢ| + |w₂ᵢ₊₁| for activations up to 255
REDUCED_LEVELS = PAIR_WEIGHT_LIMIT // 2  # 64: any pair fits (onnxruntime's reduce_range for int8 weights)


def exact_everywhere(activation_max: int, pair_peak: int) -> bool:
    """Whether u8 activations up to ``activation_max`` times int8 weights whose row pairs add up to at most
    ``pair_peak`` in magnitude never saturate a 16-bit pair sum."""
    return activation_max * pair_peak <= PAIR_LIMIT


def pair_peak(q: np.ndarray) -> int:
    """Largest ``|w₂ᵢ| + |w₂ᵢ₊₁|`` over the row pairs of an integer weight (K × N)."""
    return int(np.abs(_pairs(q.astype(np.int64))).sum(axis=1).max()) if q.size else 0


def column_levels(weight: np.ndarray) -> np.ndarray:
    """Steps per column (``REDUCED_LEVELS`` to ``QMAX``) such that rounding ``weight`` (K × N, float) on
    ``max|w| / levels`` keeps every row pair within ``PAIR_WEIGHT_LIMIT`` (each rounding adds at most half a step)."""
    magnitude = np.abs(_pairs(weight)).sum(axis=1).max(axis=0)
    # 1 (one large weight) to 2 (two); an all-zero column (say, a channel zeroed upstream) counts as 1
    relative = np.maximum(magnitude / np.maximum(np.abs(weight).max(axis=0), 1e-12), 1.0)
    return np.clip(np.floor((PAIR_WEIGHT_LIMIT - 1) / relative), REDUCED_LEVELS, QMAX).astype(np.int64)


def _pairs(w: np.ndarray) -> np.ndarray:
    """K × N values as (K/2) × 2 × N row pairs, an odd last row paired with zero (as the kernels pad K)."""
    if len(w) % 2:
        w = np.concatenate([w, np.zeros((1, *w.shape[1:]), w.dtype)])
    return w.reshape(len(w) // 2, 2, *w.shape[1:])


def limit_pairs(q: np.ndarray, limit: int = PAIR_WEIGHT_LIMIT) -> np.ndarray:
    """Nearest integers within the rule: in each row pair over ``limit``, the smaller magnitude gives way."""
    pairs = _pairs(q.astype(np.int64))
    magnitude = np.abs(pairs)
    larger = magnitude.max(axis=1, keepdims=True)
    smaller = magnitude == magnitude.min(axis=1, keepdims=True)
    smaller[:, 1] &= ~smaller[:, 0]  # a tie: the first row gives way
    room = np.minimum(magnitude, limit - larger)
    fixed = np.where(smaller, np.sign(pairs) * room, pairs).reshape(-1, *q.shape[1:])[: len(q)]
    return fixed.astype(q.dtype)


def integer_products(model: onnx.ModelProto) -> list[tuple[str, int, int]]:
    """(node, largest stored activation, :func:`pair_peak` of its weight) of every integer product with a constant
    int8 weight, in each form onnxruntime runs on u8·s8 kernels or onnxforge emits:

    - MatMulInteger, MatMulIntegerToFloat, DynamicQuantizeMatMul (dynamic and per-token int8);
    - static QDQ: a MatMul reading DequantizeLinear of a uint8 activation and of an int8 weight (onnxruntime fuses it
      into QLinearMatMul), and QLinearMatMul itself;
    - 8-bit MatMulNBits at accuracy level 4 (int8-block): activations quantized per block to symmetric int8 (≤ 127),
      weights the stored bytes less their zero point.

    The activation bound is what its quantizer can write: ``zero point + 1/step`` for onnxforge's per-token
    quantizers (inputs divided by their row's peak), 127 for MatMulNBits' own, 255 for any other uint8 activation.
    Subgraphs (an ``If``'s branches) are searched too, and a weight may be a Transpose of a stored one (folded at
    load)."""
    every = list(graphs(model.graph))
    constants = {t.name: t for graph in every for t in graph.initializer}
    producers = {out: node for graph in every for node in graph.node for out in node.output}
    found = []
    for node in (node for graph in every for node in graph.node):
        if node.op_type == "MatMulNBits":
            if (weight := _nbits_weight(node, constants)) is not None:
                found.append((node.name, SYMMETRIC_INT8_MAX, pair_peak(weight)))
            continue
        activation, weight_name = _integer_operands(node, producers)
        weight = _stored(weight_name, producers, constants)
        if weight is not None and weight.dtype == np.int8:  # u8·u8 runs on exact 16-bit widening kernels
            found.append((node.name, _activation_max(activation, producers, constants), pair_peak(weight)))
    return found


def _integer_operands(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> tuple[str, str]:
    """The stored activation and weight an integer product reads ('' when the node is none)."""
    if node.op_type in ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"):
        return node.input[0], node.input[1]
    if node.op_type == "QLinearMatMul":
        return node.input[0], node.input[3]
    if node.op_type == "MatMul":
        dq = [producers.get(name) for name in node.input[:2]]
        if all(d is not None and d.op_type == "DequantizeLinear" for d in dq):
            return dq[0].input[0], dq[1].input[0]
    return "", ""


def _stored(name: str, producers: dict[str, onnx.NodeProto], constants: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The constant ``name`` holds: an initializer, or a Transpose of one; None for a computed value."""
    if name in constants:
        return numpy_helper.to_array(constants[name])
    node = producers.get(name)
    if node is None or node.op_type != "Transpose" or node.input[0] not in constants:
        return None
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    return numpy_helper.to_array(constants[node.input[0]]).transpose(perm)


def _nbits_weight(node: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """An 8-bit MatMulNBits' integer weight (K × N, zero point removed); None for other widths or levels."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("bits", 4) != 8 or attrs.get("accuracy_level", 0) != 4 or node.input[1] not in constants:
        return None
    k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
    stored = numpy_helper.to_array(constants[node.input[1]]).astype(np.int64).reshape(n, -1, block)
    zero = 128  # MatMulNBits' default zero point at 8 bits
    if len(node.input) > 3 and node.input[3] in constants:
        zero = numpy_helper.to_array(constants[node.input[3]]).astype(np.int64).reshape(n, -1, 1)
    return (stored - zero).reshape(n, -1)[:, :k].T


def saturating_products(model: onnx.ModelProto) -> list[str]:
    """Nodes whose integer products can saturate on a CPU without VNNI, each with its bounds; empty when the graph
    is exact on every x86 kernel."""
    return [f"{name} (activations ≤ {a}, weight pairs ≤ {w})" for name, a, w in integer_products(model)
            if not exact_everywhere(a, w)]  # fmt: skip


def refuse_saturating(model: onnx.ModelProto, path: object) -> None:
    """Raise, naming them, when ``model`` (written to ``path``) has products that would saturate without VNNI."""
    if saturating := saturating_products(model):
        raise RuntimeError(f"{path}: integer products that would saturate on CPUs without VNNI, so results would "
                           f"depend on the CPU: {', '.join(saturating)}")  # fmt: skip


def _activation_max(name: str, producers: dict[str, onnx.NodeProto], constants: dict[str, onnx.TensorProto]) -> int:
    node = producers.get(name)
    if node is None or node.op_type != "QuantizeLinear" or len(node.input) < 3:
        return UINT8_MAX
    step, zero = (constants.get(n) for n in node.input[1:3])
    unit = producers.get(node.input[0])
    if step is None or zero is None or unit is None or unit.op_type != "Div":
        return UINT8_MAX
    # per-token: the input divided by its row's peak lies in [-1, 1] (or [0, 1]): at most zero point + 1/step
    levels = round(1 / float(numpy_helper.to_array(step)))
    return min(UINT8_MAX, int(numpy_helper.to_array(zero)) + levels)
