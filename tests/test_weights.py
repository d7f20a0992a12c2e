"""Weight-only blockwise quantization: the least-squares 4-bit fit, its MatMulNBits packing, the exact int8 head."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxforge.quantization.weights import WeightOnlyConfig, fit_blocks, fit_symmetric_int8, quantize_weights

K, N, BLOCK = 96, 40, 32


def _matmul_model(path, weights: dict[str, np.ndarray]) -> None:
    """x → MatMul(body) → MatMul(head) → logits (a graph output, so the second is the output projection)."""
    nodes = [helper.make_node("MatMul", ["x", "body_w"], ["h"], name="body"),
             helper.make_node("MatMul", ["h", "head_w"], ["logits"], name="head")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, K])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, N])],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, str(path))


def _dequantized(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """(N, blocks, block) codes → the (K, N) weight they stand for."""
    values = scales[..., None] * (codes.astype(np.float32) - zeros[..., None].astype(np.float32))
    return values.reshape(values.shape[0], -1).T


def _round_to_nearest_error(weight: np.ndarray) -> float:
    """Squared error of plain asymmetric round-to-nearest over each block's [min, max]."""
    blocks = weight.T.reshape(-1, BLOCK)
    low, high = blocks.min(1, keepdims=True), blocks.max(1, keepdims=True)
    scale = (high - low) / 15
    zero = np.clip(np.round(-low / scale), 0, 15)
    codes = np.clip(np.round(blocks / scale) + zero, 0, 15)
    return float(((blocks - scale * (codes - zero)) ** 2).sum())


def test_the_fit_beats_round_to_nearest_and_stays_in_four_bits():
    weight = np.random.default_rng(0).standard_t(4, size=(K, N)).astype(np.float32)  # heavy tails, as trained weights
    codes, scales, zeros = fit_blocks(weight, BLOCK)
    assert codes.shape == (N, K // BLOCK, BLOCK) and scales.shape == zeros.shape == (N, K // BLOCK)
    assert codes.max() <= 15 and zeros.max() <= 15 and (scales > 0).all()
    error = float(((weight - _dequantized(codes, scales, zeros)) ** 2).sum())
    assert error < 0.95 * _round_to_nearest_error(weight)
    with pytest.raises(ValueError, match="multiple of the block size"):
        fit_blocks(weight[:80], BLOCK)


def test_gptq_blocks_leave_less_output_error_than_the_fit_on_correlated_inputs():
    """GPTQ's 4-bit blocks (the web variant's rounding): same layout and ranges as fit_blocks, and on inputs whose
    channels correlate, as a layer's do, clearly less error in X·W than rounding each block alone; with
    uncorrelated inputs there is nothing to feed forward, so no gain is claimed there."""
    from onnxforge.quantization.gptq import gptq_blocks

    rng = np.random.default_rng(1)
    weight = rng.standard_t(4, size=(K, N)).astype(np.float32)
    mixing = rng.standard_normal((K, K)) * 0.3 + np.eye(K)
    x = rng.standard_normal((2048, K)) @ mixing  # correlated channels
    codes, scales, zeros = gptq_blocks(weight, x.T @ x, BLOCK)
    assert codes.shape == (N, K // BLOCK, BLOCK) and scales.shape == zeros.shape == (N, K // BLOCK)
    assert codes.max() <= 15 and zeros.max() <= 15 and (scales > 0).all()
    error = lambda w: float(((x @ weight - x @ w) ** 2).sum())
    fitted = error(_dequantized(*fit_blocks(weight, BLOCK)))
    assert error(_dequantized(codes, scales, zeros)) < 0.7 * fitted
    with pytest.raises(ValueError, match="'gptq'"):
        WeightOnlyConfig(bits=8, weight_rounding="gptq")


def test_refit_int4_graph_computes_the_fitted_weights_and_the_int8_head_is_symmetric(tmp_path):
    rng = np.random.default_rng(1)
    body = rng.standard_normal((K, K)).astype(np.float32)
    head = (rng.integers(-127, 128, size=(K, N)) * 0.01).astype(np.float32)  # Q8_0-like: a scale times int8,
    head[::BLOCK] = 1.27  # and each block holding a 127, as Q8_0's scale is its block's largest magnitude / 127
    _matmul_model(tmp_path / "fp32.onnx", {"body_w": body, "head_w": head})
    quantize_weights(tmp_path / "fp32.onnx", tmp_path / "int4.onnx", WeightOnlyConfig(bits=4, accuracy_level=0))
    model = onnx.load(str(tmp_path / "int4.onnx"))
    ops = {n.name: n for n in model.graph.node}
    assert {n.op_type for n in model.graph.node} == {"MatMulNBits"}
    assert len(ops["head_Q8"].input) == 3, "the 8-bit head is symmetric: no zero points"
    x = rng.standard_normal((5, K)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "int4.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    codes, scales = fit_symmetric_int8(head, BLOCK)
    np.testing.assert_allclose(_dequantized(codes, scales, np.full(scales.shape, 128)), head, atol=1e-6)  # exact
    expected = x @ _dequantized(*fit_blocks(body, BLOCK)) @ head
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
