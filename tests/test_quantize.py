"""int8 quantization of a fused graph, and the quality gate's pass and fail paths (tiny model)."""

from __future__ import annotations

import onnx
import pytest
from onnxruntime.quantization import quantize_dynamic

from onnxforge import corpus
from onnxforge.artifact import verify
from onnxforge.export.graph import op_counts
from onnxforge.quantization import Gate, Int8Config, quantize
from onnxforge.quantization.metrics import recall_at_k, row_cosines

EVAL = corpus.split(corpus.load()).evaluation[:120]


def test_plain_quantize_dynamic_fails_on_fused_graph(tiny_artifact, tmp_path):
    """Why quantize_int8 runs symbolic shape inference first: without it onnxruntime cannot type contrib ops."""
    with pytest.raises(RuntimeError, match="Unable to find data type"):
        quantize_dynamic(str(tiny_artifact / "model.onnx"), str(tmp_path / "q.onnx"), per_channel=True)


def test_fused_graph_quantizes_to_integer_kernels(tiny_artifact, tmp_path):
    manifest = quantize(tiny_artifact, tmp_path / "int8", Int8Config(), Gate({"mean_cosine": 0.9}), texts=EVAL)
    ops = op_counts(tmp_path / "int8" / "model.onnx")
    assert ops.get("QAttention") == 2 and ops.get("MatMulInteger", 0) >= 4 and "Attention" not in ops
    assert manifest.graph["fused_ops"]["QAttention"] == 2
    assert manifest.precision["per_channel"] is True and manifest.precision["weights"] == "int8"
    assert manifest.quality["passed"] is True and manifest.quality["texts"] == len(EVAL)
    assert 0.9 <= manifest.quality["mean_cosine"] < 1.0  # quantized: close, not identical
    assert verify(tmp_path / "int8").variant == "int8"


def test_quantized_weights_are_per_channel(tiny_artifact, tmp_path):
    quantize(tiny_artifact, tmp_path / "int8", texts=EVAL)
    model = onnx.load(str(tmp_path / "int8" / "model.onnx"))
    scales = [t for t in model.graph.initializer if t.name.endswith("_scale") and t.dims]
    assert scales and all(t.dims[0] > 1 for t in scales)


def test_gate_with_unknown_figure_is_an_error(tiny_artifact, tmp_path):
    with pytest.raises(ValueError, match=r"gate names unknown figures \['accuracy'\]"):
        quantize(tiny_artifact, tmp_path / "int8", gate=Gate({"accuracy": 0.9}), texts=EVAL)


def test_metrics_on_known_values():
    import numpy as np

    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(row_cosines(a, np.array([[1.0, 0.0], [1.0, 1.0]])), [1.0, 2**-0.5])
    rng = np.random.default_rng(0)
    points = rng.normal(size=(50, 8))
    assert recall_at_k(points, points, 10) == 1.0
    assert recall_at_k(points, rng.normal(size=(50, 8)), 10) < 0.5
    with pytest.raises(ValueError, match="needs more than 10 items"):
        recall_at_k(points[:10], points[:10], 10)
