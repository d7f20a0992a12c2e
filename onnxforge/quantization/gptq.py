"""Error-compensating rounding of int8 weights (GPTQ, Frantar et al., 2023), per output column, symmetric.

Round-to-nearest treats each weight alone. GPTQ rounds one input row of ``W`` (K × N, as ONNX MatMul holds it) at a
time and spreads that row's rounding error over the rows not yet rounded, weighted by the inverse Hessian
``H = Xᵀ X`` of the layer's calibration inputs, so the error left in ``X·W`` is smaller. The result is returned
dequantized (on the int8 grid, same column maxima), so onnxruntime's own quantizer recovers exactly these integers.
"""

from __future__ import annotations

import numpy as np

QMAX = 127


def column_scales(weight: np.ndarray) -> np.ndarray:
    """Symmetric per-column scales as onnxruntime computes them: max |w| / 127."""
    return np.maximum(np.abs(weight).max(axis=0), 1e-12) / QMAX


def gptq_int8(weight: np.ndarray, gram: np.ndarray, damp: float = 0.01, block: int = 64) -> np.ndarray:
    """``weight`` (K × N) rounded onto its per-column int8 grid with error feedback; ``gram`` is Xᵀ X (K × K)."""
    w = weight.astype(np.float64).copy()
    scale = column_scales(weight).astype(np.float64)
    h = gram.astype(np.float64).copy()
    dead = np.diag(h) == 0  # inputs never seen: their rows cannot matter, round them plainly
    h[dead, dead] = 1.0
    h += np.eye(len(h)) * damp * float(np.mean(np.diag(h)))
    # Cholesky factor of H⁻¹, upper: row k holds how the rows after k absorb row k's error
    inverse = np.linalg.cholesky(np.linalg.inv(h)).T
    # each column's largest weight stays at ±127 steps, so the column's maximum (and scale) is unchanged
    peak_row = np.abs(weight).argmax(axis=0)
    peak = np.sign(weight[peak_row, np.arange(w.shape[1])]) * QMAX * scale
    out = np.empty_like(w)
    for start in range(0, len(w), block):  # lazy batches: rows beyond the block get its errors in one product
        end = min(start + block, len(w))
        errors = np.empty((end - start, w.shape[1]))
        for k in range(start, end):
            q = np.clip(np.round(w[k] / scale), -QMAX, QMAX) * scale
            q = np.where(peak_row == k, peak, q)
            out[k] = q
            errors[k - start] = (w[k] - q) / inverse[k, k]
            w[k + 1 : end] -= np.outer(inverse[k, k + 1 : end], errors[k - start])
        w[end:] -= inverse[start:end, end:].T @ errors
    return out.astype(weight.dtype)
