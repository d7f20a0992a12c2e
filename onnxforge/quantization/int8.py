"""int8: dynamic or static (QDQ) with onnxruntime.quantization, or per-token activations (per_token.py); optional
smoothing and GPTQ weight rounding (gptq.py); chosen nodes kept apart.

MiniLM-L6, 1,412 held-out sentences (R@10 = recall@10 of fp32's neighbours): per-tensor dynamic, smoothing 0.7:
mean cosine 0.995, R@10 0.91; + GPTQ: about the same (activation error dominates); per-token + GPTQ, smoothing
0.7: 0.9994 / 0.969; + the unsigned grid for ~non-negative inputs, smoothing 0.6: 0.9996 / 0.976 at ~1.75× fp32.

Fused graphs carry contrib ops (MultiHeadAttention, SkipLayerNormalization…) that ONNX shape inference cannot
type, which makes ``quantize_dynamic`` fail with "Unable to find data type". onnxruntime's symbolic shape
inference (``quant_pre_process``) types them first, so the fused graph quantizes.

Nodes in ``keep`` are not given int8 activations: ``keep_as="fp32"`` leaves them in float,
``keep_as="int8-block"`` makes them MatMulNBits with 8-bit weights (blocks of 128 along K) and accuracy level
4, i.e. activations quantized per row and block at run time — nearly float fidelity, smaller than fp32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..export.graph import save
from .calibration import activation_absmax, activation_gram, activation_range
from .gptq import gptq_int8
from .per_token import LEVELS_SUFFIX, SHIFT_SUFFIX, per_token_int8, unsigned_shift
from .saturation import PAIR_WEIGHT_LIMIT, REDUCED_LEVELS, column_levels, refuse_saturating
from .smooth import smooth, weight_matmuls
from .tables import int8_rows

ACTIVATIONS = ("dynamic", "static", "per-token")
CALIBRATIONS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy}  # fmt: skip
KEEP_AS = ("fp32", "int8-block")
WEIGHT_ROUNDING = ("nearest", "gptq")


@dataclass(frozen=True)
class Int8Config:
    """How to quantize. ``max_keep > 0`` lets the gate search keep up to that many sensitive nodes apart."""

    # quantized at run time per tensor; "static": QDQ, calibrated ranges; "per-token": at run time per row (per_token.py)
    activations: str = "dynamic"
    calibration: str = "minmax"  # static only
    op_types: tuple[str, ...] = ("MatMul",)
    per_channel: bool = True
    symmetric_weights: bool = True
    smooth_alpha: float | None = None
    weight_rounding: str = "nearest"  # or "gptq": error-compensating rounding on calibration inputs (gptq.py)
    keep: tuple[str, ...] = ()
    keep_as: str = "int8-block"
    max_keep: int = 0
    search_margin: float = 0.0  # the search's gate: each minimum this share of the way to 1 (Gate.tightened)
    calibration_texts: int = 256
    embedding_rows: bool = True  # vocabulary tables stored as int8 rows (tables.py): 4x smaller on disk

    def __post_init__(self) -> None:
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"int8 activations {self.activations!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration {self.calibration!r}; supported: {', '.join(CALIBRATIONS)}")
        if self.weight_rounding not in WEIGHT_ROUNDING:
            raise ValueError(f"weight_rounding {self.weight_rounding!r}; supported: {', '.join(WEIGHT_ROUNDING)}")
        on_grid = self.weight_rounding == "gptq" or self.activations == "per-token"
        if on_grid and not (self.per_channel and self.symmetric_weights):
            raise ValueError("gptq and per-token use symmetric per-channel weights: they need per_channel and "
                             "symmetric_weights")
        if self.keep_as not in KEEP_AS:
            raise ValueError(f"keep_as {self.keep_as!r}; supported: {', '.join(KEEP_AS)}")
        if not 0 <= self.search_margin < 1:
            raise ValueError(f"search_margin must be in [0, 1), got {self.search_margin}")
        if self.smooth_alpha is not None and not 0 < self.smooth_alpha < 1:
            raise ValueError(f"smooth_alpha must be in (0, 1), got {self.smooth_alpha}")

    def describe(self) -> dict[str, object]:
        record = {k: v for k, v in asdict(self).items() if k not in ("keep", "activations")}
        activations = {"dynamic": "uint8-dynamic", "per-token": "uint8-per-token"}.get(
            self.activations, f"uint8-static-{self.calibration}")
        return {"weights": "int8", "activations": activations, **record, "weight_pair_limit": PAIR_WEIGHT_LIMIT,
                "kept": list(self.keep)}


def prepare(src: Path, dst: Path, config: Int8Config, feeds: list[dict[str, np.ndarray]]) -> Path:
    """The float graph quantization starts from: typed by symbolic shape inference, smoothed if asked, weights
    moved onto their int8 grid by GPTQ if asked (the quantizers then keep exactly those integers), and for
    per-token activations the calibrated shifts stored beside the weights (initializers ``…/per_token_shift``)."""
    quant_pre_process(str(src), str(dst), skip_optimization=True, skip_onnx_shape=False)
    model = onnx.load(str(dst))
    inputs = sorted(weight_matmuls(model))
    if config.smooth_alpha is not None:
        smooth(model, activation_absmax(dst, inputs, feeds), config.smooth_alpha)
        save(model, dst)
        inputs = sorted(weight_matmuls(model))
    per_token = config.activations == "per-token"
    grams = activation_gram(dst, inputs, feeds) if config.weight_rounding == "gptq" else {}
    if per_token or grams:  # else onnxruntime's quantizer rounds every weight on its reduce_range grid
        initializers = {t.name: t for t in model.graph.initializer}
        for activation, group in weight_matmuls(model).items():
            for node in group:  # each column's steps: as many as its row pairs allow (per-token), or onnxruntime's 64
                weight = initializers[node.input[1]]
                values = numpy_helper.to_array(weight)
                levels = column_levels(values) if per_token else REDUCED_LEVELS
                if per_token:
                    model.graph.initializer.append(numpy_helper.from_array(levels, weight.name + LEVELS_SUFFIX))
                if grams:
                    rounded = gptq_int8(values, grams[activation], levels)
                    weight.CopyFrom(numpy_helper.from_array(rounded, weight.name))
    if per_token:
        for activation, (low, _, rows) in activation_range(dst, inputs, feeds).items():
            if (shift := unsigned_shift(low, rows)) is not None:
                model.graph.initializer.append(numpy_helper.from_array(shift, activation + SHIFT_SUFFIX))
    save(model, dst)
    return dst


def quantizable_nodes(prepared: Path) -> list[str]:
    """Names of the weight MatMuls of a prepared graph, in graph order: what ``keep`` may name."""
    return [node.name for group in weight_matmuls(onnx.load(str(prepared))).values() for node in group]


def finish(prepared: Path, dst: Path, config: Int8Config, feeds: list[dict[str, np.ndarray]],
           exclude: tuple[str, ...] = ()) -> None:  # fmt: skip
    """Quantize a prepared graph into ``dst``; ``exclude`` stays float on top of ``config.keep``."""
    excluded = list(config.keep) + list(exclude)
    options = {"MatMulConstBOnly": True, "WeightSymmetric": config.symmetric_weights}
    if config.activations == "per-token":
        model = onnx.load(str(prepared))
        shifts = {t.name[: -len(SHIFT_SUFFIX)]: numpy_helper.to_array(t) for t in model.graph.initializer
                  if t.name.endswith(SHIFT_SUFFIX)}  # fmt: skip
        nodes = {node.name for group in weight_matmuls(model).values() for node in group}
        per_token_int8(model, nodes - set(excluded), shifts)
        save(model, dst)
    elif config.activations == "dynamic":
        quantize_dynamic(
            str(prepared), str(dst), per_channel=config.per_channel, reduce_range=True,
            weight_type=QuantType.QInt8, op_types_to_quantize=list(config.op_types), nodes_to_exclude=excluded,
            extra_options=options,
        )  # fmt: skip
    else:
        quantize_static(
            str(prepared), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            op_types_to_quantize=list(config.op_types), nodes_to_exclude=excluded,
            calibrate_method=CALIBRATIONS[config.calibration], extra_options=options,
        )  # fmt: skip
    if config.keep and config.keep_as == "int8-block":
        _block_int8(dst, set(config.keep))
    model = onnx.load(str(dst))
    if config.embedding_rows and int8_rows(model):
        save(model, dst)
    refuse_saturating(model, dst)


def _block_int8(path: Path, names: set[str]) -> None:
    """The kept MatMuls (still float after the pass above) → MatMulNBits, 8-bit, block 128, accuracy level 4."""
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    quantizer = nbits.MatMulNBitsQuantizer(
        onnx.load(str(path)), bits=8, block_size=128, is_symmetric=True, accuracy_level=4,
        nodes_to_include=sorted(names),
    )  # fmt: skip
    quantizer.process()
    save(quantizer.model.model, path)


class _Reader(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)
