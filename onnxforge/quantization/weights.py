"""Weight-only blockwise quantization (MatMulNBits, GatherBlockQuantized): int4 and int8 for decoders.

Decoding one token at batch 1 reads every weight once and does little arithmetic with it: bytes per token set
the speed, so weights shrink and activations stay float. ``accuracy_level=4`` lets MatMulNBits quantize its
activations to int8 per block at run time and use the CPU's int8 dot-product instructions.

A decoder exported from a GGUF keeps the file's own blocks (:mod:`.gguf_blocks`): nothing is re-quantized. What
follows is for the rest (fp32/bf16 Hugging Face weights, or ``requantize=True``). Measured on SmolLM2-135M's
de-quantized weights (teacher-forced next-token agreement with fp32 on held-out text): int4 block 32 asymmetric
beats symmetric and larger blocks (block 64: 0.681 against 0.724, perplexity retention 0.763 against 0.847).
MatMulNBits' fast CPU path needs integer zero points, so each block is refit by least squares over candidate
scales (:func:`fit_blocks`): agreement 0.705 → 0.724, perplexity retention 0.813 → 0.847 over onnxruntime's
round-to-nearest. The output projection (the logits MatMul) stays 8-bit and symmetric, scale = largest
magnitude / 127: with no zero points it decodes ~10% faster than asymmetric 8-bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..export.graph import graphs, save
from .gguf_blocks import keep_file_blocks, pack_codes
from .gptq import gptq_blocks
from .tables import quantized_rows

BITS = (4, 8)


@dataclass(frozen=True)
class WeightOnlyConfig:
    bits: int = 4
    block_size: int = 32
    symmetric: bool = False
    embeddings: bool = True  # the token embedding table too (int4: GatherBlockQuantized or 4-bit rows; int8: int8 rows)
    head_bits: int | None = 8  # the output projection's bits; None: float, like every other weight at ``bits``
    accuracy_level: int = 4  # MatMulNBits' compute type: 4 = int8 activations, 0 = as the weights' float type
    requantize: bool = False  # from a GGUF source: re-quantize its de-quantized weights instead of keeping its blocks
    weight_rounding: str = "nearest"  # "gptq": 4-bit blocks rounded with error feedback on calibration inputs (encoders)
    calibration_texts: int = 1024  # texts whose MatMul inputs GPTQ weighs errors by

    def __post_init__(self) -> None:
        if self.bits not in BITS or self.head_bits not in (*BITS, None):
            raise ValueError(f"bits and head_bits must be one of {BITS} (head_bits: or None), got {self}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two >= 16, got {self.block_size!r}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy_level must be 0-4, got {self.accuracy_level!r}")
        if self.weight_rounding not in ("nearest", "gptq") or (self.weight_rounding == "gptq" and self.bits != 4):
            raise ValueError(f"weight_rounding is 'nearest' or, for 4-bit weights, 'gptq'; got {self.weight_rounding!r} "
                             f"with bits={self.bits}")  # fmt: skip

    def describe(self) -> dict[str, object]:
        return {"weights": f"int{self.bits}", "activations": "float32", "method": "weight-only blockwise",
                **asdict(self)}  # fmt: skip


def output_projections(model: onnx.ModelProto) -> list[str]:
    """Weight MatMuls that write a graph output directly: a language model's logits projection."""
    return [n.name for graph in graphs(model.graph) for n in graph.node
            if n.op_type == "MatMul" and n.output[0] in {o.name for o in graph.output}]  # fmt: skip


def quantize_weights(src: Path, dst: Path, config: WeightOnlyConfig, gguf: Path | None = None,
                     grams: dict[str, np.ndarray] | None = None) -> dict[str, str]:  # fmt: skip
    """Every weight MatMul (and the embedding Gather if asked) of ``src`` → blockwise ints, into ``dst``. With
    ``gguf``, weights that are rows of that file keep its blocks exactly (:func:`keep_file_blocks`); the rest get
    ``config.bits`` for the body, ``config.head_bits`` for the output projection, blocks refit (:func:`refit`),
    by GPTQ for the MatMul nodes ``grams`` names (Xᵀ X of each one's input, calibration.activation_gram).
    Returns {node: the GGUF format it kept}."""
    model = onnx.load(str(src))
    kept, added = keep_file_blocks(model, gguf, config.accuracy_level) if gguf else ({}, [])
    weights = {name: w for name, w in matmul_weights(model).items() if name not in added}
    head = [n for n in output_projections(model) if n in weights] if config.head_bits != config.bits else []
    # onnxruntime's quantizer gathers 4-bit blocks only: 8-bit tables become int8 rows with a scale each (tables.py)
    body_ops = ("MatMul", "Gather") if config.embeddings and config.bits == 4 else ("MatMul",)
    model = _blockwise(config, config.bits, body_ops, exclude=head + added, model=model)
    if config.embeddings:  # what the quantizer left float: 8-bit tables, or one a fused EmbedLayerNormalization reads
        quantized_rows(model, config.bits)
    if head and config.head_bits is not None:  # only the head is left as a float MatMul with a constant weight
        # symmetric: 8-bit blocks need no zero point, and a GGUF's Q8_0 head (scale · int8 per 32) maps exactly
        symmetric = config.symmetric or config.head_bits == 8
        model = _blockwise(replace(config, symmetric=symmetric), config.head_bits, ("MatMul",), exclude=added,
                           model=model)  # fmt: skip
    refit(model, weights, config.block_size, grams)
    save(model, dst)
    return kept


def fitting_block(model: onnx.ModelProto, block_size: int) -> int:
    """The largest power of two up to ``block_size`` (at least 16) that divides every weight MatMul's K."""
    initializers = _initializers(model)
    ks = [initializers[n.input[1]].dims[0] for graph in graphs(model.graph) for n in graph.node
          if n.op_type == "MatMul" and n.input[1] in initializers]  # fmt: skip
    while block_size > 16 and any(k % block_size for k in ks):
        block_size //= 2
    return block_size


def matmul_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Node name → float weight (K, N) of every MatMul with a constant second input."""
    initializers = _initializers(model)
    return {n.name: numpy_helper.to_array(initializers[n.input[1]]) for graph in graphs(model.graph)
            for n in graph.node if n.op_type == "MatMul" and n.input[1] in initializers}  # fmt: skip


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for graph in graphs(model.graph) for t in graph.initializer}


def refit(model: onnx.ModelProto, weights: dict[str, np.ndarray], block_size: int,
          grams: dict[str, np.ndarray] | None = None) -> None:  # fmt: skip
    """Re-derive the blocks of each MatMulNBits made from ``weights`` (ORT's quantizer made the graph): asymmetric
    4-bit by :func:`fit_blocks` (by GPTQ, gptq.gptq_blocks, for nodes in ``grams``), symmetric 8-bit by
    :func:`fit_symmetric_int8`."""
    initializers = _initializers(model)
    for node in (node for graph in graphs(model.graph) for node in graph.node):
        bits = next((a.i for a in node.attribute if a.name == "bits"), None)
        source = node.name.removesuffix(f"_Q{bits}")
        if node.op_type != "MatMulNBits" or source not in weights:
            continue
        if bits == 4 and len(node.input) >= 4:
            if source in (grams or {}):
                codes, scales, zeros = gptq_blocks(weights[source], grams[source], block_size)
            else:
                codes, scales, zeros = fit_blocks(weights[source], block_size)
            fitted = (pack_codes(codes, 4), scales, pack_codes(zeros, 4))
        elif bits == 8 and (len(node.input) < 4 or not node.input[3]):
            fitted = fit_symmetric_int8(weights[source], block_size)
        else:
            continue
        for name, value in zip(node.input[1:], fitted):
            dims = tuple(initializers[name].dims)
            initializers[name].CopyFrom(numpy_helper.from_array(value.reshape(dims), name))


def fit_symmetric_int8(weight: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit blocks along K of ``weight`` (K, N) with scale = largest magnitude / 127, as GGUF's Q8_0 (so
    a Q8_0 tensor comes back exactly; onnxruntime's quantizer divides by 128 instead). Codes are stored + 128,
    MatMulNBits' implicit zero point. Returns codes (N, K/block, block) uint8 and scales (N, K/block) float32."""
    blocks = _blocks(weight, block_size)
    scales = np.abs(blocks).max(-1) / 127
    codes = np.round(blocks / np.where(scales > 0, scales, 1)[..., None]) + 128
    return codes.astype(np.uint8), scales.astype(np.float32)


def _blocks(weight: np.ndarray, block_size: int) -> np.ndarray:
    """(K, N) → (N, K/block, block) float32: blocks run along K, one row of blocks per output column."""
    k, n = weight.shape
    if k % block_size:
        raise ValueError(f"K={k} is not a multiple of the block size {block_size}")
    return weight.T.reshape(n, k // block_size, block_size).astype(np.float32)


# Candidate scales range / (15 + d): d < 0 widens the grid past the block's extremes, d > 0 clips them.
_SCALE_STEPS = np.linspace(-1.0, 2.0, 13, dtype=np.float32)


def fit_blocks(weight: np.ndarray, block_size: int, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 4-bit blocks along K of ``weight`` (K, N), least squared error: for each candidate scale the
    integer zero point and codes follow by rounding, then the scale is refit to those codes by least squares;
    the best candidate wins. Returns codes (N, K/block, block) and zero points (N, K/block) as uint8, scales
    (N, K/block) float32. onnxruntime's round-to-nearest leaves 25-40% more squared error on SmolLM2's weights."""
    shaped = _blocks(weight, block_size)
    blocks = shaped.reshape(-1, block_size)
    codes = np.empty(blocks.shape, np.uint8)
    scales = np.empty(len(blocks), np.float32)
    zeros = np.empty(len(blocks), np.uint8)
    for start in range(0, len(blocks), chunk):
        x = blocks[start : start + chunk]
        low, span = x.min(1), np.maximum(x.max(1) - x.min(1), 1e-12)
        best = np.full(len(x), np.inf, np.float32)
        for step in _SCALE_STEPS:
            scale = span / (15 + step)
            zero = np.clip(np.round(-low / scale), 0, 15)
            code = np.clip(np.round(x / scale[:, None]) + zero[:, None], 0, 15)
            centred = code - zero[:, None]
            fitted = (x * centred).sum(1) / np.maximum((centred * centred).sum(1), 1e-12)
            fitted = np.where(fitted > 0, fitted, scale)
            error = ((x - fitted[:, None] * centred) ** 2).sum(1)
            better = error < best
            best[better] = error[better]
            rows = start + np.flatnonzero(better)
            codes[rows], scales[rows], zeros[rows] = code[better], fitted[better], zero[better]
    return codes.reshape(shaped.shape), scales.reshape(shaped.shape[:2]), zeros.reshape(shaped.shape[:2])


def _blockwise(config: WeightOnlyConfig, bits: int, op_types: tuple[str, ...], exclude: list[str],
               model: onnx.ModelProto) -> onnx.ModelProto:  # fmt: skip
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    algo = DefaultWeightOnlyQuantConfig(
        block_size=config.block_size, is_symmetric=config.symmetric, accuracy_level=config.accuracy_level,
        bits=bits, op_types_to_quantize=op_types, quant_axes=(("MatMul", 0), ("Gather", 1)),
    )  # fmt: skip
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=algo)
    quantizer.process()
    return quantizer.model.model
