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
from onnxforge.quantization import Gate, GateError, Int8Config, quantize
from onnxforge.quantization.gptq import column_scales, gptq_int8
from onnxforge.quantization.per_token import per_token_int8, unsigned_shift
from onnxforge.quantization.saturation import PAIR_WEIGHT_LIMIT, column_levels, limit_pairs, pair_peak
from onnxforge.runtime import load
from tests.util import cosines

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


def _shifts(x):
    """The input's shift as prepare() calibrates it (on ``x`` itself), if the unsigned grid is finer."""
    rows = x.reshape(-1, K)
    shift = unsigned_shift(rows.min(axis=0), rows)
    return {} if shift is None else {"x": shift}


def _per_token(tmp_path, weight, x, opset=18):
    """The MatMul rewritten per token, calibrated on ``x`` itself."""
    _matmul_model(tmp_path / "float.onnx", weight, opset)
    model = onnx.load(str(tmp_path / "float.onnx"))
    per_token_int8(model, {"proj"}, _shifts(x))
    onnx.save(model, str(tmp_path / "token.onnx"))
    return tmp_path / "token.onnx"


def _relative_error(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMax takes axes as an attribute before 18, an input from 18
def test_one_outlier_token_coarsens_per_tensor_int8_but_not_per_token(tmp_path, weight, opset):
    x = np.random.default_rng(1).normal(size=(2, 16, K)).astype(np.float32)
    x[0, 3] *= 300.0  # one token (think [SEP]) far larger than the rest of the batch
    token = _per_token(tmp_path, weight, x, opset)
    assert op_counts(token)["MatMulIntegerToFloat"] == 1 and "MatMul" not in op_counts(token)
    quantize_dynamic(str(tmp_path / "float.onnx"), str(tmp_path / "tensor.onnx"), per_channel=True,
                     weight_type=QuantType.QInt8, extra_options={"WeightSymmetric": True})  # fmt: skip
    want = _run(tmp_path / "float.onnx", x)
    others = np.ones(x.shape[:2], bool)
    others[0, 3] = False
    per_token = _relative_error(_run(token, x)[others], want[others])
    per_tensor = _relative_error(_run(tmp_path / "tensor.onnx", x)[others], want[others])
    assert per_token < 0.03 < per_tensor
    assert _relative_error(_run(token, x)[0, 3], want[0, 3]) < 0.03  # the outlier token itself stays right too


def _stored_weight(path) -> tuple[np.ndarray, np.ndarray]:
    """The rewritten MatMul's int8 weight (K × N) and its per-column scales, read from the graph."""
    arrays = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    q = next(a for a in arrays if a.dtype == np.int8 and a.shape == (K, N))
    scale = next(a for a in arrays if a.dtype == np.float32 and a.shape == (N,))
    return q, scale


@pytest.mark.parametrize("magnitude", [1.0, 1e-3])  # small activations keep their own fine grid
def test_signed_tokens_are_rounded_on_their_own_127_steps_exactly(tmp_path, weight, magnitude):
    """Without a shift each token is rounded to max|x|/127 steps around 0: the graph's output is those integers,
    computed here in numpy, times the stored int8 weight and its scale (which holds the 1/127) times the token's
    max|x|, to float precision (not just "close to fp32")."""
    x = (np.random.default_rng(2).normal(size=(2, 8, K)) * magnitude).astype(np.float32)
    _matmul_model(tmp_path / "float.onnx", weight)
    model = onnx.load(str(tmp_path / "float.onnx"))
    per_token_int8(model, {"proj"}, {})
    onnx.save(model, str(tmp_path / "token.onnx"))
    q, scale = _stored_weight(tmp_path / "token.onnx")
    peak = np.abs(x).max(axis=-1, keepdims=True).astype(np.float64)
    want = (np.round(x / peak * 127) @ (q.astype(np.float64) * scale)) * peak
    np.testing.assert_allclose(_run(tmp_path / "token.onnx", x), want, rtol=1e-4, atol=1e-6 * magnitude)


def test_levels_stored_by_prepare_bound_the_weight_integers(tmp_path, weight):
    """prepare() stores each weight's steps per column (the pair rule's room); the rewrite rounds on those."""
    from onnxforge.quantization.per_token import LEVELS_SUFFIX

    _matmul_model(tmp_path / "float.onnx", weight)
    model = onnx.load(str(tmp_path / "float.onnx"))
    levels = np.where(np.arange(N) % 2 == 0, 64, 100).astype(np.int64)
    model.graph.initializer.append(numpy_helper.from_array(levels, "W" + LEVELS_SUFFIX))
    per_token_int8(model, {"proj"}, {})
    onnx.save(model, str(tmp_path / "token.onnx"))
    q, _ = _stored_weight(tmp_path / "token.onnx")
    np.testing.assert_array_equal(np.abs(q.astype(np.int64)).max(axis=0), levels)


@pytest.mark.parametrize("reader", ["BiasGelu", "Add"])
def test_the_shift_is_folded_into_the_next_bias_or_subtracted(tmp_path, weight, reader):
    """MatMul → BiasGelu, or → Add of a constant (a split SkipLayerNormalization's bias): c·W leaves through that
    bias, no extra node; a bare MatMul output gets a Sub."""
    x = np.maximum(np.random.default_rng(2).normal(size=(4, 32, K)), -0.17).astype(np.float32)  # GELU-like
    bias = np.random.default_rng(3).normal(size=N).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="proj"),
         helper.make_node(reader, ["h", "b"], ["y"], domain="com.microsoft" if reader == "BiasGelu" else "")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", N])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=9)  # fmt: skip
    onnx.save(model, str(tmp_path / "gelu.onnx"))
    assert _shifts(x)  # GELU-like: the unsigned grid
    per_token_int8(model, {"proj"}, _shifts(x))
    onnx.save(model, str(tmp_path / "gelu-token.onnx"))
    assert "Sub" not in op_counts(tmp_path / "gelu-token.onnx")
    assert _relative_error(_run(tmp_path / "gelu-token.onnx", x), _run(tmp_path / "gelu.onnx", x)) < 0.02
    bare = _per_token(tmp_path, weight, x)
    assert op_counts(bare)["Sub"] == 1
    assert _relative_error(_run(bare, x), _run(tmp_path / "float.onnx", x)) < 0.02


def test_the_unsigned_grid_is_chosen_only_where_it_is_finer(tmp_path, weight):
    weight = weight * 0.1  # one peak per column beside a zero, the rest small: every column keeps all 127 steps
    weight[0], weight[1] = 1.0, 0.0
    assert (column_levels(weight) == 127).all()
    weight = np.round(weight / column_scales(weight)) * column_scales(weight)  # on its grid: activation error only
    normal = np.random.default_rng(4).normal(size=(4, 32, K)).astype(np.float32)
    assert not _shifts(normal)  # symmetric: the signed grid is as fine
    outlier = normal.copy()
    outlier[0, 3] *= -300.0  # a negative outlier would stretch every row's shifted range
    assert not _shifts(outlier)
    gelu_like = np.maximum(normal, -0.17) * 3.0
    want = _run(_per_token(tmp_path, weight, gelu_like), gelu_like)
    model = onnx.load(str(tmp_path / "float.onnx"))
    per_token_int8(model, {"proj"})  # the same input forced onto the signed grid
    onnx.save(model, str(tmp_path / "signed.onnx"))
    exact = _run(tmp_path / "float.onnx", gelu_like)
    assert _relative_error(want, exact) < 0.7 * _relative_error(_run(tmp_path / "signed.onnx", gelu_like), exact)


def test_a_missing_node_is_named(tmp_path, weight):
    _matmul_model(tmp_path / "float.onnx", weight)
    with pytest.raises(ValueError, match="not float weight MatMuls of this graph: nope"):
        per_token_int8(onnx.load(str(tmp_path / "float.onnx")), {"nope"})


def test_gptq_stays_on_the_int8_grid_and_beats_round_to_nearest_on_correlated_inputs(weight):
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(K, K)) * 0.3 + np.eye(K)
    x = rng.normal(size=(2048, K)) @ mixing  # correlated channels, as real activations are
    rounded = gptq_int8(weight, x.T @ x)
    levels = column_levels(weight)
    scale = column_scales(weight, levels)
    steps = rounded / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert (np.abs(np.round(steps)) <= levels).all() and pair_peak(np.round(steps)) <= PAIR_WEIGHT_LIMIT
    np.testing.assert_allclose(column_scales(rounded, levels), scale, rtol=1e-6)  # the same integers come back
    nearest = limit_pairs(np.clip(np.round(weight / scale), -levels, levels)) * scale
    error = lambda w: float(np.linalg.norm(x @ (w - weight)))
    assert error(rounded) < 0.8 * error(nearest)


def test_per_token_gptq_int8_passes_a_gate_that_per_tensor_activations_miss(outlier_artifact, tmp_path):
    """On activation outliers a per-tensor activation scale costs ~10x the error of per-token scales (measured
    1 - cosine 2e-5 vs 2e-6): a gate between the two passes one and refuses the other. The vocabulary table stays
    float in both (its int8 rows cost ~1e-5 here, the size of the difference under test)."""
    gate = Gate({"mean_cosine": 0.99999})
    config = Int8Config(activations="per-token", weight_rounding="gptq", smooth_alpha=0.6, embedding_rows=False)
    manifest = quantize(outlier_artifact, tmp_path / "int8", config, gate, texts=EVAL)
    assert manifest.precision["activations"] == "uint8-per-token" and manifest.precision["weight_rounding"] == "gptq"
    assert manifest.graph["fused_ops"].get("MatMulIntegerToFloat", 0) >= 12  # every weight MatMul of the 2 layers
    reference = load(outlier_artifact, providers="cpu").embed(EVAL)
    assert cosines(reference, load(tmp_path / "int8", providers="cpu").embed(EVAL)).mean() >= 0.99999  # computed here
    with pytest.raises(GateError, match="mean_cosine"):
        quantize(outlier_artifact, tmp_path / "dynamic", Int8Config(smooth_alpha=0.6, embedding_rows=False), gate,
                 texts=EVAL)  # fmt: skip


def test_per_token_and_gptq_need_symmetric_per_channel_weights():
    with pytest.raises(ValueError, match="need per_channel and symmetric_weights"):
        Int8Config(activations="per-token", per_channel=False)
    with pytest.raises(ValueError, match="need per_channel"):
        Int8Config(weight_rounding="gptq", symmetric_weights=False)
    with pytest.raises(ValueError, match="weight_rounding 'best'"):
        Int8Config(weight_rounding="best")
