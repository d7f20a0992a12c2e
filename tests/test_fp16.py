"""fp16 conversion: fp32 I/O kept, fragile ops kept fp32, no inf/NaN on large activations."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxforge import corpus
from onnxforge.quantization import Fp16Config, Gate, quantize
from onnxforge.quantization.fp16 import to_fp16
from onnxforge.runtime import load
from tests.util import cosines

EVAL = corpus.split(corpus.load()).evaluation[:120]


def _rms_norm_projection(path) -> None:
    """x → x / sqrt(mean(x²) + eps) → MatMul: the decomposed normalisation decoders export, fp32."""
    weight = numpy_helper.from_array(np.eye(8, dtype=np.float32) * 0.5, "W")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    eps = numpy_helper.from_array(np.array(1e-6, np.float32), "eps")
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["mse"]),
        helper.make_node("Sqrt", ["mse"], ["rms"]),
        helper.make_node("Div", ["x", "rms"], ["normed"]),
        helper.make_node("MatMul", ["normed", "W"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "rms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], [weight, two, eps],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_large_activations_stay_finite_only_with_the_block_list(tmp_path):
    _rms_norm_projection(tmp_path / "fp32.onnx")
    x = np.random.default_rng(0).normal(scale=2000.0, size=(4, 8)).astype(np.float32)  # x² ≫ 65,504
    reference = _run(tmp_path / "fp32.onnx", x)
    to_fp16(tmp_path / "fp32.onnx", tmp_path / "guarded.onnx")
    guarded = _run(tmp_path / "guarded.onnx", x)
    assert guarded.dtype == np.float32  # fp32 outputs kept
    assert np.isfinite(guarded).all()
    np.testing.assert_allclose(guarded, reference, rtol=2e-3, atol=2e-3)
    # onnxruntime's CPU provider quietly runs fp16 Pow/ReduceMean in fp32 (it has no fp16 kernels for them);
    # CUDA does not. onnx's reference evaluator computes in the graph's own types, as a GPU would:
    from onnx.reference import ReferenceEvaluator

    to_fp16(tmp_path / "fp32.onnx", tmp_path / "unguarded.onnx", block=())
    with np.errstate(over="ignore", invalid="ignore"):
        unguarded = ReferenceEvaluator(str(tmp_path / "unguarded.onnx")).run(None, {"x": x})[0]
        strict_guarded = ReferenceEvaluator(str(tmp_path / "guarded.onnx")).run(None, {"x": x})[0]
    # x² overflows to inf, so x / sqrt(inf) collapses to 0: what the block list prevents
    assert np.isinf(ReferenceEvaluator(str(tmp_path / "unguarded.onnx")).run(["sq"], {"x": x})[0]).any()
    assert np.abs(unguarded).max() < 1e-3 < np.abs(reference).max()
    np.testing.assert_allclose(strict_guarded, reference, rtol=2e-3, atol=2e-3)


@pytest.fixture(scope="module")
def large_activation_artifact(tmp_path_factory):
    """The tiny BERT with +3,000 on a few FFN output biases in every layer: residual sums far past fp16 squares."""
    import torch
    from transformers import AutoModel

    from onnxforge.export import ExportConfig, Tolerance, export
    from tests.tiny_models import make_encoder

    root = tmp_path_factory.mktemp("large")
    source = make_encoder(root / "source")
    model = AutoModel.from_pretrained(source)
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.output.dense.bias[:4] += 3000.0
    model.save_pretrained(source)
    out = root / "large" / "fp32"
    export(source, out, "embed", name="large", config=ExportConfig(tolerance=Tolerance(max_abs=1e-2)))
    return out


def test_fp16_artifact_of_a_model_with_large_activations(large_activation_artifact, tmp_path):
    manifest = quantize(large_activation_artifact, tmp_path / "fp16", Fp16Config(),
                        Gate({"mean_cosine": 0.9999, "min_cosine": 0.999}), texts=EVAL)  # fmt: skip
    assert manifest.precision["weights"] == "float16" and manifest.precision["io"] == "float32"
    assert manifest.outputs[0].dtype == "float32" and manifest.inputs[0].dtype == "int64"
    fp32, fp16 = (load(d, providers="cpu").embed(EVAL) for d in (large_activation_artifact, tmp_path / "fp16"))
    found = cosines(fp32, fp16)  # computed here, not by the gate
    assert found.mean() >= 0.9999 and found.min() >= 0.999
    weights = onnx.load(str(tmp_path / "fp16" / "model.onnx")).graph.initializer
    assert sum(t.data_type == TensorProto.FLOAT16 for t in weights) >= 12  # the MatMul weights


@pytest.mark.gpu
def test_fp16_on_cuda(large_activation_artifact, tmp_path):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu and a CUDA device")

    quantize(large_activation_artifact, tmp_path / "fp16", Fp16Config(), Gate(), texts=EVAL)
    cpu = load(large_activation_artifact, providers="cpu").embed(EVAL[:64])
    cuda = load(tmp_path / "fp16", providers="cuda").embed(EVAL[:64])
    assert np.isfinite(cuda).all()
    assert (cpu * cuda).sum(axis=1).min() > 0.999
