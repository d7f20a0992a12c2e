"""int8 with onnxruntime.quantization: dynamic or static (QDQ), optional smoothing, chosen nodes kept apart.

Fused graphs carry contrib ops (MultiHeadAttention, SkipLayerNormalization…) that ONNX shape inference cannot
type, which makes ``quantize_dynamic`` fail with "Unable to find data type". onnxruntime's symbolic shape
inference (``quant_pre_process``) types them first, so the fused graph quantizes.

Nodes in ``keep`` are not given per-tensor int8 activations: ``keep_as="fp32"`` leaves them in float,
``keep_as="int8-block"`` makes them MatMulNBits with 8-bit weights (blocks of 128 along K) and accuracy level
4, i.e. activations quantized per row and block at run time — nearly float fidelity, smaller than fp32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from .calibration import activation_absmax
from .smooth import smooth, weight_matmuls

ACTIVATIONS = ("dynamic", "static")
CALIBRATIONS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy}  # fmt: skip
KEEP_AS = ("fp32", "int8-block")


@dataclass(frozen=True)
class Int8Config:
    """How to quantize. ``max_keep > 0`` lets the gate search keep up to that many sensitive nodes apart."""

    activations: str = "dynamic"  # quantized at run time per tensor, or "static" (QDQ, calibrated ranges)
    calibration: str = "minmax"  # static only
    op_types: tuple[str, ...] = ("MatMul",)
    per_channel: bool = True
    reduce_range: bool = False
    symmetric_weights: bool = True
    smooth_alpha: float | None = None
    keep: tuple[str, ...] = ()
    keep_as: str = "int8-block"
    max_keep: int = 0
    search_margin: float = 0.0  # the search's gate: each minimum this share of the way to 1 (Gate.tightened)
    calibration_texts: int = 256

    def __post_init__(self) -> None:
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"int8 activations {self.activations!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration {self.calibration!r}; supported: {', '.join(CALIBRATIONS)}")
        if self.keep_as not in KEEP_AS:
            raise ValueError(f"keep_as {self.keep_as!r}; supported: {', '.join(KEEP_AS)}")
        if not 0 <= self.search_margin < 1:
            raise ValueError(f"search_margin must be in [0, 1), got {self.search_margin}")
        if self.smooth_alpha is not None and not 0 < self.smooth_alpha < 1:
            raise ValueError(f"smooth_alpha must be in (0, 1), got {self.smooth_alpha}")

    def describe(self) -> dict[str, object]:
        record = {k: v for k, v in asdict(self).items() if k not in ("keep", "activations")}
        activations = "uint8-dynamic" if self.activations == "dynamic" else f"uint8-static-{self.calibration}"
        return {"weights": "int8", "activations": activations, **record, "kept": list(self.keep)}


def prepare(src: Path, dst: Path, config: Int8Config, feeds: list[dict[str, np.ndarray]]) -> Path:
    """The float graph quantization starts from: typed by symbolic shape inference, smoothed if asked."""
    quant_pre_process(str(src), str(dst), skip_optimization=True, skip_onnx_shape=False)
    if config.smooth_alpha is not None:
        model = onnx.load(str(dst))
        absmax = activation_absmax(dst, sorted(weight_matmuls(model)), feeds)
        onnx.save(smooth(model, absmax, config.smooth_alpha), str(dst))
    return dst


def quantizable_nodes(prepared: Path) -> list[str]:
    """Names of the weight MatMuls of a prepared graph, in graph order: what ``keep`` may name."""
    return [node.name for group in weight_matmuls(onnx.load(str(prepared))).values() for node in group]


def finish(prepared: Path, dst: Path, config: Int8Config, feeds: list[dict[str, np.ndarray]],
           exclude: tuple[str, ...] = ()) -> None:  # fmt: skip
    """Quantize a prepared graph into ``dst``; ``exclude`` stays float on top of ``config.keep``."""
    excluded = list(config.keep) + list(exclude)
    options = {"MatMulConstBOnly": True, "WeightSymmetric": config.symmetric_weights}
    if config.activations == "dynamic":
        quantize_dynamic(
            str(prepared), str(dst), per_channel=config.per_channel, reduce_range=config.reduce_range,
            weight_type=QuantType.QInt8, op_types_to_quantize=list(config.op_types), nodes_to_exclude=excluded,
            extra_options=options,
        )  # fmt: skip
    else:
        quantize_static(
            str(prepared), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
            reduce_range=config.reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=list(config.op_types), nodes_to_exclude=excluded,
            calibrate_method=CALIBRATIONS[config.calibration], extra_options=options,
        )  # fmt: skip
    if config.keep and config.keep_as == "int8-block":
        _block_int8(dst, set(config.keep))


def _block_int8(path: Path, names: set[str]) -> None:
    """The kept MatMuls (still float after the pass above) → MatMulNBits, 8-bit, block 128, accuracy level 4."""
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    quantizer = nbits.MatMulNBitsQuantizer(
        onnx.load(str(path)), bits=8, block_size=128, is_symmetric=True, accuracy_level=4,
        nodes_to_include=sorted(names),
    )  # fmt: skip
    quantizer.process()
    quantizer.model.save_model_to_file(str(path))


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)
