"""SmoothQuant-style migration of activation outliers into weights, ahead of int8 (Xiao et al., 2023).

For each activation X feeding weight MatMuls, ``X·W = (X·diag(1/s))·(diag(s)·W)`` with
``s_j = max|X_j|^α / max|W_j,:|^(1-α)``: channels with outliers shrink before the per-tensor activation
quantizer sees them, and the weights (quantized per output channel) absorb the scale. One ``Mul`` per
activation is inserted; the float graph computes the same function.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper


def weight_matmuls(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """MatMul nodes whose second input is a constant weight, grouped by the activation they read."""
    weights = {t.name for t in model.graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            groups[node.input[0]].append(node)
    return dict(groups)


def smooth(model: onnx.ModelProto, absmax: dict[str, np.ndarray], alpha: float) -> onnx.ModelProto:
    """Apply the migration in place to every weight-MatMul activation with a measured range; returns ``model``."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"smooth_alpha must be in (0, 1), got {alpha}")
    from onnxruntime.transformers.onnx_model import OnnxModel

    initializers = {t.name: t for t in model.graph.initializer}
    for activation, group in weight_matmuls(model).items():
        if activation not in absmax:
            continue
        weights = [numpy_helper.to_array(initializers[node.input[1]]) for node in group]
        weight_peak = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        scale = (np.maximum(absmax[activation], 1e-5) ** alpha / np.maximum(weight_peak, 1e-5) ** (1 - alpha))
        scale = scale.astype(np.float32)
        inverse, smoothed = f"{activation}/smooth_inverse", f"{activation}/smoothed"
        model.graph.initializer.append(numpy_helper.from_array(1.0 / scale, inverse))
        mul = helper.make_node("Mul", [activation, inverse], [smoothed], name=f"{activation}/smooth")
        model.graph.node.append(mul)
        for node, weight in zip(group, weights):
            node.input[0] = smoothed
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
    OnnxModel(model).topological_sort()  # each Mul must come before the MatMuls that now read it
    return model
