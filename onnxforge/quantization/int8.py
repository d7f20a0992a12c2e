"""int8 with onnxruntime.quantization: dynamic (weights int8 per channel, activations quantized at run time).

Fused graphs (Attention, SkipLayerNormalization…) carry contrib ops that ONNX shape inference cannot type,
which makes ``quantize_dynamic`` fail with "Unable to find data type". Running onnxruntime's symbolic shape
inference first (``quant_pre_process``) types them, so the fused graph quantizes and Attention becomes QAttention.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process


@dataclass(frozen=True)
class Int8Config:
    """How to quantize; ``op_types`` are those onnxruntime.quantization may turn into integer kernels."""

    op_types: tuple[str, ...] = ("MatMul", "Attention")
    per_channel: bool = True
    reduce_range: bool = False
    symmetric_weights: bool = True
    exclude_nodes: tuple[str, ...] = ()

    def describe(self) -> dict[str, object]:
        return {
            "weights": "int8", "activations": "uint8-dynamic", "per_channel": self.per_channel,
            "op_types": list(self.op_types), "reduce_range": self.reduce_range, "kept_fp32": list(self.exclude_nodes),
        }  # fmt: skip


def quantize_int8(src: Path, dst: Path, config: Int8Config = Int8Config()) -> None:
    """Dynamic int8 of the (fused or unfused) graph at ``src`` into ``dst``."""
    with tempfile.TemporaryDirectory(prefix="onnxforge-int8-") as tmp:
        typed = Path(tmp) / "typed.onnx"
        quant_pre_process(str(src), str(typed), skip_optimization=True, skip_onnx_shape=False)
        quantize_dynamic(
            str(typed), str(dst), per_channel=config.per_channel, reduce_range=config.reduce_range,
            weight_type=QuantType.QInt8, op_types_to_quantize=list(config.op_types),
            nodes_to_exclude=list(config.exclude_nodes),
            extra_options={"MatMulConstBOnly": True, "WeightSymmetric": config.symmetric_weights},
        )  # fmt: skip
