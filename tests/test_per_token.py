"""Per-token int8 activations (per_token.py) and GPTQ weight rounding (gptq.py), alone and inside quantize()."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from onnxforge import corpus
from onnxforge.export.graph import op_counts
from onnxforge.quantization import Gate, Int8Config, quantize
from onnxforge.quantization.gptq import column_scales, gptq_int8
from onnxforge.quantization.per_token import per_token_int8, unsigned_shift

EVAL = corpus.split(corpus.load()).evaluation[:200]
K, N = 64, 32


def _matmul_model(path, weight: np.ndarray, opset: int = 18) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="proj")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", N])], [numpy_helper.from_array(weight, "W")],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9), str(path))


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture()
def weight():
    return np.random.default_rng(0).normal(size=(K, N)).astype(np.float32)


def _per_token(tmp_path, weight, shift=None, opset=18):
    _matmul_model(tmp_path / "float.onnx", weight, opset)
    model = onnx.load(str(tmp_path / "float.onnx"))
    per_token_int8(model, {"proj"}, {"x": shift} if shift is not None else None)
    onnx.save(model, str(tmp_path / "token.onnx"))
    return tmp_path / "token.onnx"


def _relative_error(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMax takes axes as an attribute before 18, an input from 18
def test_one_outlier_token_coarsens_per_tensor_int8_but_not_per_token(tmp_path, weight, opset):
    x = np.random.default_rng(1).normal(size=(2, 16, K)).astype(np.float32)
    x[0, 3] *= 300.0  # one token (think [SEP]) far larger than the rest of the batch
    token = _per_token(tmp_path, weight, opset=opset)
    assert op_counts(token)["MatMulIntegerToFloat"] == 1 and "MatMul" not in op_counts(token)
    quantize_dynamic(str(tmp_path / "float.onnx"), str(tmp_path / "tensor.onnx"), per_channel=True,
                     weight_type=QuantType.QInt8, extra_options={"WeightSymmetric": True})  # fmt: skip
    want = _run(tmp_path / "float.onnx", x)
    others = np.ones(x.shape[:2], bool)
    others[0, 3] = False
    per_token = _relative_error(_run(token, x)[others], want[others])
    per_tensor = _relative_error(_run(tmp_path / "tensor.onnx", x)[others], want[others])
    assert per_token < 0.02 < per_tensor
    assert _relative_error(_run(token, x)[0, 3], want[0, 3]) < 0.02  # the outlier token itself stays right too


def test_non_negative_inputs_get_the_unsigned_grid_and_half_the_error(tmp_path, weight):
    weight = np.round(weight / column_scales(weight)) * column_scales(weight)  # on its grid: activation error only
    rng = np.random.default_rng(2)
    normal = rng.normal(size=(4, 32, K)).astype(np.float32)
    gelu_like = np.maximum(normal, -0.17) * 3.0  # ≥ -0.51, long positive tail
    low, high = gelu_like.reshape(-1, K).min(axis=0), gelu_like.reshape(-1, K).max(axis=0)
    shift = unsigned_shift(low, high)
    assert shift is not None and (shift >= 0).all()
    flat = normal.reshape(-1, K)
    assert unsigned_shift(flat.min(axis=0), flat.max(axis=0)) is None  # symmetric: the signed grid is as fine
    signed_model = _per_token(tmp_path, weight)
    want = _run(tmp_path / "float.onnx", gelu_like)
    signed = _relative_error(_run(signed_model, gelu_like), want)
    unsigned = _relative_error(_run(_per_token(tmp_path, weight, shift), gelu_like), want)
    assert unsigned < 0.7 * signed


def test_a_missing_node_is_named(tmp_path, weight):
    _matmul_model(tmp_path / "float.onnx", weight)
    with pytest.raises(ValueError, match="not float weight MatMuls of this graph: nope"):
        per_token_int8(onnx.load(str(tmp_path / "float.onnx")), {"nope"})


def test_gptq_stays_on_the_int8_grid_and_beats_round_to_nearest_on_correlated_inputs(weight):
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(K, K)) * 0.3 + np.eye(K)
    x = rng.normal(size=(2048, K)) @ mixing  # correlated channels, as real activations are
    rounded = gptq_int8(weight, x.T @ x)
    scale = column_scales(weight)
    steps = rounded / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert np.abs(np.round(steps)).max() <= 127
    np.testing.assert_allclose(column_scales(rounded), scale, rtol=1e-6)  # a quantizer recovers the same integers
    nearest = np.round(weight / scale) * scale
    error = lambda w: float(np.linalg.norm(x @ (w - weight)))
    assert error(rounded) < 0.8 * error(nearest)


def test_per_token_gptq_int8_artifact_passes_its_gate(outlier_artifact, tmp_path):
    config = Int8Config(activations="per-token", weight_rounding="gptq", smooth_alpha=0.6)
    manifest = quantize(outlier_artifact, tmp_path / "int8", config, Gate({"mean_cosine": 0.99}), texts=EVAL)
    assert manifest.precision["activations"] == "uint8-per-token" and manifest.precision["weight_rounding"] == "gptq"
    assert manifest.graph["fused_ops"].get("MatMulIntegerToFloat", 0) >= 12  # every weight MatMul of the 2 layers
    dynamic = quantize(outlier_artifact, tmp_path / "dynamic", Int8Config(smooth_alpha=0.6), Gate(), texts=EVAL)
    assert 1 - manifest.quality["mean_cosine"] < 1 - dynamic.quality["mean_cosine"]


def test_per_token_and_gptq_need_symmetric_per_channel_weights():
    with pytest.raises(ValueError, match="need per_channel, symmetric_weights and no reduce_range"):
        Int8Config(activations="per-token", per_channel=False)
    with pytest.raises(ValueError, match="need per_channel"):
        Int8Config(weight_rounding="gptq", symmetric_weights=False)
    with pytest.raises(ValueError, match="weight_rounding 'best'"):
        Int8Config(weight_rounding="best")
