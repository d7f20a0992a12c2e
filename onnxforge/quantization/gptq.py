"""Error-compensating rounding of int8 weights (GPTQ, Frantar et al., 2023), per output column, symmetric.

Round-to-nearest treats each weight alone. GPTQ rounds one input row of ``W`` (K × N, as ONNX MatMul holds it) at a
time and spreads that row's rounding error over the rows not yet rounded, weighted by the inverse Hessian
``H = Xᵀ X`` of the layer's calibration inputs, so the error left in ``X·W`` is smaller. The result is returned
dequantized (on the int8 grid, same column maxima), so onnxruntime's own quantizer recovers exactly these integers.
Each column has its own number of steps (``levels``, saturation.column_levels) and each pair of rows (2i, 2i + 1)
keeps ``|q₂ᵢ| + |q₂ᵢ₊₁| ≤ 128`` (saturation.py): the second row of a pair is rounded within what the first left,
and the error of that limit is fed forward like any rounding error.
"""

from __future__ import annotations

import numpy as np

from .saturation import PAIR_WEIGHT_LIMIT, QMAX, column_levels


def column_scales(weight: np.ndarray, levels: np.ndarray | int = QMAX) -> np.ndarray:
    """Symmetric per-column scales: max |w| / levels (onnxruntime's with 127, or 64 with reduce_range)."""
    return np.maximum(np.abs(weight).max(axis=0), 1e-12) / levels


def gptq_int8(weight: np.ndarray, gram: np.ndarray, levels: np.ndarray | int | None = None, damp: float = 0.01,
              block: int = 64) -> np.ndarray:  # fmt: skip
    """``weight`` (K × N) rounded onto its per-column grid of ±``levels`` steps (default: as many as its row pairs
    allow) with error feedback; ``gram`` is Xᵀ X (K × K)."""
    w = weight.astype(np.float64).copy()
    levels = column_levels(weight) if levels is None else levels
    levels = np.broadcast_to(np.asarray(levels, np.float64), (w.shape[1],))
    scale = column_scales(weight, levels).astype(np.float64)
    h = gram.astype(np.float64).copy()
    dead = np.diag(h) == 0  # inputs never seen: their rows cannot matter, round them plainly
    h[dead, dead] = 1.0
    h += np.eye(len(h)) * damp * float(np.mean(np.diag(h)))
    # Cholesky factor of H⁻¹, upper: row k holds how the rows after k absorb row k's error
    inverse = np.linalg.cholesky(np.linalg.inv(h)).T
    # each column's largest weight stays at ±levels steps, so the column's maximum (and scale) is unchanged
    peak_row = np.abs(weight).argmax(axis=0)
    peak = np.sign(weight[peak_row, np.arange(w.shape[1])]) * levels * scale
    out = np.empty_like(w)
    partner = np.zeros(w.shape[1])  # |integer| of the pair's first row, while rounding its second
    for start in range(0, len(w), block):  # lazy batches: rows beyond the block get its errors in one product
        end = min(start + block, len(w))
        errors = np.empty((end - start, w.shape[1]))
        for k in range(start, end):
            # the pair's room: what the first row left, or ±1 beside a column peak still to come
            room = PAIR_WEIGHT_LIMIT - partner if k % 2 else np.where(peak_row == k + 1, PAIR_WEIGHT_LIMIT - levels, levels)
            room = np.minimum(room, levels)
            steps = np.clip(np.round(w[k] / scale), -room, room)
            steps = np.where(peak_row == k, np.sign(peak) * levels, steps)
            partner = np.abs(steps)
            q = steps * scale
            out[k] = q
            errors[k - start] = (w[k] - q) / inverse[k, k]
            w[k + 1 : end] -= np.outer(inverse[k, k + 1 : end], errors[k - start])
        w[end:] -= inverse[start:end, end:].T @ errors
    return out.astype(weight.dtype)


def gptq_blocks(weight: np.ndarray, gram: np.ndarray, block_size: int, damp: float = 0.01) -> tuple[np.ndarray, ...]:
    """``weight`` (K × N) as asymmetric 4-bit blocks of ``block_size`` rows per column (MatMulNBits' layout), rounded
    with error feedback; ``gram`` is Xᵀ X (K × K). Each block's scale and zero point are fit (weights.fit_blocks) to
    the block's weights as the errors of the rows before it left them; its rows are then rounded on that grid one
    at a time. Returns codes (N, K/block, block), scales (N, K/block), zero points (N, K/block), as fit_blocks."""
    from .weights import fit_blocks  # weights.py imports this module

    k, n = weight.shape
    w = weight.astype(np.float64).copy()
    h = gram.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h += np.eye(k) * damp * float(np.mean(np.diag(h)))
    inverse = np.linalg.cholesky(np.linalg.inv(h)).T
    codes = np.empty((n, k // block_size, block_size), np.uint8)
    scales = np.empty((n, k // block_size), np.float32)
    zeros = np.empty((n, k // block_size), np.uint8)
    for b, start in enumerate(range(0, k, block_size)):
        end = start + block_size
        _, scale, zero = fit_blocks(w[start:end].astype(np.float32), block_size)  # (n, 1) each: this block's grid
        scale, zero = scale[:, 0].astype(np.float64), zero[:, 0].astype(np.float64)
        scales[:, b], zeros[:, b] = scale, zero
        errors = np.empty((block_size, n))
        for i, row in enumerate(range(start, end)):
            code = np.clip(np.round(w[row] / scale) + zero, 0, 15)
            codes[:, b, i] = code
            errors[i] = (w[row] - (code - zero) * scale) / inverse[row, row]
            w[row + 1 : end] -= np.outer(inverse[row, row + 1 : end], errors[i])
        w[end:] -= inverse[start:end, end:].T @ errors
    return codes, scales, zeros
