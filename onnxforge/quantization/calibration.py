"""Text → feeds for calibration and search, and per-channel activation ranges of chosen tensors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..runtime.base import Loaded
from ..runtime.text import MAX_PADDING, length_sorted_batches, pad_batch


def text_feeds(loaded: Loaded, texts: list[str], batch_size: int = 32, same_width: bool = False) -> list[dict[str, np.ndarray]]:
    """Padded, length-sorted input batches for ``texts`` as the artifact's runtime would build them.

    ``same_width``: pad every batch to the longest text, for calibrators that stack batches (histograms).
    """
    encoder = loaded.text_encoder()
    encodings = encoder.encode(texts)
    width = max(len(e.ids) for e in encodings) if same_width else None
    return [
        pad_batch([encodings[i] for i in index], encoder.pad_id, loaded.input_names, width)
        # one width for all: the padding budget has nothing to save, and batches of one size stack
        for index in length_sorted_batches([len(e.ids) for e in encodings], batch_size, math.inf if same_width else MAX_PADDING)
    ]


def activation_absmax(model: Path, names: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Largest |value| of each last-axis channel of the tensors ``names`` over real (unpadded) tokens."""
    graph = onnx.load(str(model))
    for name in names:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    result: dict[str, np.ndarray] = {}
    for feed in feeds:
        real = feed["attention_mask"].astype(bool)
        for name, value in zip(names, session.run(names, feed)):
            rows = value[real] if value.shape[:2] == real.shape else value.reshape(-1, value.shape[-1])
            peak = np.abs(rows).max(axis=0)
            result[name] = np.maximum(result[name], peak) if name in result else peak
    return result
