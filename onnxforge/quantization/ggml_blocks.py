"""ggml's quantized block formats → integer codes, float scales, integer zero points and float offsets.

Every format here stores, per block of 16 or 32 weights along a row, ``w = scale · (code − zero_point) + offset``:
an integer zero point for the symmetric formats (Q4_0: 8, Q5_0: 16, Q8_0: 128 once its signed codes are shifted,
Q6_K: 32) and a float offset (the block minimum) for the others (Q4_1, Q5_1, and Q4_K/Q5_K's per-32 minimum under
a 256-wide super-block). ``Blocks.values()`` reproduces ggml's de-quantization bit for bit (tests compare it with
the ``gguf`` package's), so a graph built from these blocks computes with exactly the weights the file holds.
Layouts follow ggml-common.h (block_q4_0 … block_q6_K).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SUPER = 256  # QK_K: the k-quants' super-block


@dataclass(frozen=True)
class Blocks:
    """One tensor's rows in blocks: ``w = scales · (codes − zero_points) + offsets`` per block."""

    format: str
    codes: np.ndarray  # (rows, blocks, block) uint8
    scales: np.ndarray  # (rows, blocks) float32
    zero_points: np.ndarray  # (rows, blocks) uint8
    offsets: np.ndarray | None  # (rows, blocks) float32; None: every offset is zero
    bits: int  # the codes' width: 4 when every code (and zero point) is < 16, else 8

    @property
    def block(self) -> int:
        return self.codes.shape[-1]

    def values(self) -> np.ndarray:
        """The de-quantized rows (rows, columns), float32, computed as ggml does."""
        centred = (self.codes.astype(np.int16) - self.zero_points[..., None]).astype(np.float32)
        w = self.scales[..., None] * centred
        if self.offsets is not None:
            w = w + self.offsets[..., None]
        return w.reshape(len(self.codes), -1)

    def centred(self) -> Blocks:
        """The same weights with each float offset moved onto the nearest integer zero point: ``scale · code + m`` =
        ``scale · (code − z) + (m + scale · z)``, z = round(−m / scale). Kernels that round activations to int8
        per block then err as much as they would on the centred weights, not on ``scale · code`` (about twice
        as large); the small remainder ``m + scale · z`` stays a float offset. Exact: ``scale · z`` and the sum
        are exact in float32 for ggml's fp16 scales, and :meth:`values` does not change (checked)."""
        if self.offsets is None:
            return self
        with np.errstate(divide="ignore", invalid="ignore"):
            zero = np.clip(np.round(-self.offsets / self.scales), 0, (1 << self.bits) - 1)
        zero = np.where(np.isfinite(zero), zero, 0).astype(np.uint8)
        moved = Blocks(self.format, self.codes, self.scales, zero,
                       (self.offsets + self.scales * zero).astype(np.float32), self.bits)  # fmt: skip
        return moved if np.array_equal(moved.values(), self.values()) else self

    def rows(self, index: np.ndarray) -> Blocks:
        pick = (lambda a: None if a is None else a[index])
        return Blocks(self.format, self.codes[index], self.scales[index], self.zero_points[index],
                      pick(self.offsets), self.bits)  # fmt: skip

    def split(self, block: int) -> Blocks:
        """The same weights in blocks of ``block`` (a divisor of this block size): scales and offsets repeated."""
        if block == self.block:
            return self
        times = self.block // block
        spread = (lambda a: None if a is None else np.repeat(a, times, axis=1))
        rows, count = self.codes.shape[:2]
        return Blocks(self.format, self.codes.reshape(rows, count * times, block), spread(self.scales),
                      spread(self.zero_points), spread(self.offsets), self.bits)  # fmt: skip


def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian fp16 in the last axis's byte pairs → float32."""
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)[..., 0]


def _nibbles(raw: np.ndarray) -> np.ndarray:
    """(…, n) bytes → (…, 2n) 4-bit codes: all low nibbles first, then all high nibbles (ggml's q4 order)."""
    return np.concatenate([raw & 0x0F, raw >> 4], axis=-1)


def _high_bits(raw: np.ndarray, count: int) -> np.ndarray:
    """(…, 4) bytes holding one bit per code (little-endian uint32) → (…, 32) bits as uint8 shifted to bit 4."""
    word = np.ascontiguousarray(raw).view(np.uint32)
    return (((word >> np.arange(count, dtype=np.uint32)) & 1) << 4).astype(np.uint8)


def _q4_0(raw: np.ndarray) -> tuple:
    return _nibbles(raw[..., 2:18]), _f16(raw[..., 0:2]), 8, None


def _q4_1(raw: np.ndarray) -> tuple:
    return _nibbles(raw[..., 4:20]), _f16(raw[..., 0:2]), 0, _f16(raw[..., 2:4])


def _q5_0(raw: np.ndarray) -> tuple:
    return _nibbles(raw[..., 6:22]) | _high_bits(raw[..., 2:6], 32), _f16(raw[..., 0:2]), 16, None


def _q5_1(raw: np.ndarray) -> tuple:
    return _nibbles(raw[..., 8:24]) | _high_bits(raw[..., 4:8], 32), _f16(raw[..., 0:2]), 0, _f16(raw[..., 2:4])


def _q8_0(raw: np.ndarray) -> tuple:
    return (raw[..., 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8), _f16(raw[..., 0:2]), 128, None


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes → eight 6-bit scales and eight 6-bit minimums (ggml's get_scale_min_k4)."""
    low, high, mixed = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    scales = np.concatenate([low & 0x3F, (mixed & 0x0F) | ((low >> 2) & 0x30)], axis=-1)
    minimums = np.concatenate([high & 0x3F, (mixed >> 4) | ((high >> 2) & 0x30)], axis=-1)
    return scales.astype(np.float32), minimums.astype(np.float32)


def _k_quant(raw: np.ndarray, high: np.ndarray | None) -> tuple:
    """Q4_K / Q5_K super-blocks (…, bytes) → eight blocks of 32: codes, scale d·sc, offset −dmin·m."""
    d, dmin = _f16(raw[..., 0:2])[..., None], _f16(raw[..., 2:4])[..., None]
    sc, m = _k_scales(raw[..., 4:16])
    qs = raw[..., -128:].reshape(*raw.shape[:-1], 4, 32)  # four groups of 32 bytes: low nibbles, then high
    codes = np.stack([qs & 0x0F, qs >> 4], axis=-2).reshape(*raw.shape[:-1], 8, 32)
    if high is not None:  # Q5_K: bit i of the 32 qh bytes is the fifth bit of block i
        codes = codes | (((high[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1) << 4)
    return codes, d * sc, 0, -(dmin * m)


def _q4_k(raw: np.ndarray) -> tuple:
    return _k_quant(raw, None)


def _q5_k(raw: np.ndarray) -> tuple:
    return _k_quant(raw, raw[..., 16:48])


def _q6_k(raw: np.ndarray) -> tuple:
    """Q6_K super-blocks: 6-bit codes (4 low bits in ql, 2 high in qh), sixteen int8 scales of 16 weights, d."""
    lead = raw.shape[:-1]
    ql = raw[..., 0:128].reshape(*lead, 2, 1, 64)
    qh = raw[..., 128:192].reshape(*lead, 2, 1, 32)
    low = ((ql >> np.array([0, 4], np.uint8).reshape(2, 1)) & 0x0F).reshape(*lead, 8, 32)
    top = ((qh >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)) & 0x03).reshape(*lead, 8, 32)
    codes = (low | (top << 4)).reshape(*lead, 16, 16)
    scales = raw[..., 192:208].view(np.int8).astype(np.float32) * _f16(raw[..., 208:210])[..., None]
    return codes, scales, 32, None


@dataclass(frozen=True)
class Format:
    block: int  # weights per stored block (a super-block for the k-quants)
    bytes: int  # bytes per stored block
    decode: Callable[[np.ndarray], tuple]  # (…, bytes) → codes, scales, zero point, offsets
    bits: int  # code width as MatMulNBits holds it


FORMATS: dict[str, Format] = {
    "Q4_0": Format(32, 18, _q4_0, 4),
    "Q4_1": Format(32, 20, _q4_1, 4),
    "Q5_0": Format(32, 22, _q5_0, 8),
    "Q5_1": Format(32, 24, _q5_1, 8),
    "Q8_0": Format(32, 34, _q8_0, 8),
    "Q4_K": Format(SUPER, 144, _q4_k, 4),
    "Q5_K": Format(SUPER, 176, _q5_k, 8),
    "Q6_K": Format(SUPER, 210, _q6_k, 8),
}


def decode(format_name: str, raw: np.ndarray) -> Blocks:
    """A tensor's raw bytes (rows, bytes per row) in ``format_name`` → :class:`Blocks` (rows, blocks, block)."""
    if format_name not in FORMATS:
        raise ValueError(f"GGUF block format {format_name!r} is not supported; supported: {', '.join(FORMATS)}")
    fmt = FORMATS[format_name]
    rows = raw.shape[0]
    if raw.shape[-1] % fmt.bytes:
        raise ValueError(f"{format_name} rows hold {raw.shape[-1]} bytes, not a multiple of {fmt.bytes}")
    stored = raw.reshape(rows, -1, fmt.bytes)
    codes, scales, zero_point, offsets = fmt.decode(stored)
    block = codes.shape[-1]
    codes = codes.reshape(rows, -1, block).astype(np.uint8)
    scales = np.asarray(scales, np.float32).reshape(rows, -1)
    zeros = np.full(scales.shape, zero_point, np.uint8)
    offsets = None if offsets is None else np.asarray(offsets, np.float32).reshape(rows, -1)
    return Blocks(format_name, codes, scales, zeros, offsets, fmt.bits)
