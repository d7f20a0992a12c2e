"""Hand-made graphs at the pair rule's boundary, one per integer-product operator onnxruntime runs on u8·s8 kernels.

Every stored activation is 255. The weight column holds one row pair summing to 128 (the rule's limit: exact on
every kernel) or 129 (one past it: a saturating 16-bit pair sum loses 128 of 32,895), or two large weights in rows
1 and 2 (254 in all, but in different pairs: exact only if the kernels pair rows as (2i, 2i + 1)). Each directory
holds the graph, its feeds and the exact output (``expected.npz``) for ``integer_reference.worst_errors``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

K, ROWS = 64, 4
CASES = {"pair 128": {0: 64, 1: 64}, "pair 129": {0: 64, 1: 65}, "rows 1 and 2 at 127": {1: 127, 2: 127}}
QLINEAR_OUTPUT_STEP = 129.0  # 255 × 129 lands on 255 exactly; a saturated pair sum one step below


def _weight(case: str) -> np.ndarray:
    w = np.zeros((K, 1), np.int8)
    for row, value in CASES[case].items():
        w[row, 0] = value
    return w


def _graph(form: str, w: np.ndarray) -> tuple[list, list, list, dict[str, np.ndarray], np.ndarray]:
    """Nodes, inputs, initializers, feeds and the exact output of one form over weight ``w``."""
    stored = np.full((ROWS, K), 255, np.uint8)
    exact = stored.astype(np.float64) @ w.astype(np.float64)
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    weight = numpy_helper.from_array(w, "w")
    u8_input = [helper.make_tensor_value_info("a", TensorProto.UINT8, [ROWS, K])]
    if form == "MatMulInteger":
        return [helper.make_node(form, ["a", "w"], ["y"])], u8_input, [weight], {"a": stored}, exact
    if form == "MatMulIntegerToFloat":
        node = helper.make_node(form, ["a", "w", "one", "one"], ["y"], domain="com.microsoft")
        return [node], u8_input, [weight, one], {"a": stored}, exact
    if form == "DynamicQuantizeMatMul":  # floats in [0, 1]: step 1/255, zero point 0, so 1.0 is stored as 255
        node = helper.make_node(form, ["x", "w", "one"], ["y"], domain="com.microsoft")
        x = np.ones((ROWS, K), np.float32)
        return [node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, K])], [weight, one], {"x": x}, \
            exact / 255
    # QLinearMatMul (what static QDQ int8 runs as): the output requantized with a step of 129
    zero_u8 = numpy_helper.from_array(np.array(0, np.uint8), "zero_u8")
    zero_s8 = numpy_helper.from_array(np.array(0, np.int8), "zero_s8")
    step = numpy_helper.from_array(np.array(QLINEAR_OUTPUT_STEP, np.float32), "step")
    node = helper.make_node(form, ["a", "one", "zero_u8", "w", "one", "zero_s8", "step", "zero_u8"], ["y"])
    return [node], u8_input, [weight, one, zero_u8, zero_s8, step], {"a": stored}, \
        np.clip(np.rint(exact / QLINEAR_OUTPUT_STEP), 0, 255)


FORMS = ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul")
OUTPUT_TYPE = {"MatMulInteger": TensorProto.INT32, "QLinearMatMul": TensorProto.UINT8}


def build(root: Path) -> dict[tuple[str, str], Path]:
    """One directory per (form, case), ready for ``integer_reference.worst_errors``."""
    made = {}
    for form in FORMS:
        for case in CASES:
            nodes, inputs, initializers, feeds, exact = _graph(form, _weight(case))
            output = helper.make_tensor_value_info("y", OUTPUT_TYPE.get(form, TensorProto.FLOAT), [ROWS, 1])
            graph = helper.make_graph(nodes, "boundary", inputs, [output], initializers)
            opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
            model = helper.make_model(graph, opset_imports=opsets, ir_version=9)
            directory = root / f"{form}-{case.replace(' ', '-')}"
            directory.mkdir(parents=True)
            (directory / "model.onnx").write_bytes(model.SerializeToString())
            np.savez(directory / "feeds.npz", **feeds)
            np.savez(directory / "constants.npz")
            np.savez(directory / "expected.npz", y=exact)
            (directory / "nodes.json").write_text('{"nodes": [], "constants": []}')
            made[form, case] = directory
    return made
