"""Small helpers over ONNX graphs shared by the export and quantization stages."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx

from ..artifact import TensorSpec

FUSED_OPS = (
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "LayerNormalization", "BiasGelu", "FastGelu",
    "Gelu", "RotaryEmbedding", "QAttention", "QEmbedLayerNormalization", "MatMulNBits", "MatMulIntegerToFloat",
)  # fmt: skip


def tensor_specs(values: list[onnx.ValueInfoProto]) -> list[TensorSpec]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        specs.append(TensorSpec(name=value.name, dtype=dtype, shape=shape))
    return specs


def signature(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of the graph in ``path`` (its weights are not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    return tensor_specs(list(model.graph.input)), tensor_specs(list(model.graph.output))


def op_counts(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def fused_ops(counts: dict[str, int]) -> dict[str, int]:
    """The fused (contrib) operators among an op histogram."""
    return {op: n for op, n in counts.items() if op in FUSED_OPS}
