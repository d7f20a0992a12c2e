"""Text → feeds for calibration and search, and per-channel activation ranges of chosen tensors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from ..runtime.base import Loaded
from ..runtime.pipelines import PIPELINES
from ..runtime.session import SessionConfig, create_session
from ..runtime.text import MAX_PADDING, length_sorted_batches, pad_batch


def text_feeds(loaded: Loaded, texts: list[str], batch_size: int = 32, same_width: bool = False) -> list[dict[str, np.ndarray]]:
    """Padded, length-sorted input batches for ``texts`` as the artifact's runtime would build them (for a text2text
    artifact, its encoder's); for a ``generate`` artifact, teacher-forced passages of neighbouring texts (as its
    gate reads them), batch 1.

    ``same_width``: pad every batch to the longest text, for calibrators that stack batches (histograms).
    """
    if loaded.manifest.task == "generate":
        from .gate import PASSAGE_SENTENCES, passages

        generator = PIPELINES["generate"](loaded)
        count = max(1, len(texts) // PASSAGE_SENTENCES)
        return [generator.decoder.feeds(ids) for ids in passages(generator, texts, count)]
    encoder = loaded.text_encoder()
    encodings = encoder.encode(texts)
    width = max(len(e.ids) for e in encodings) if same_width else None
    names = [i.name for i in loaded.encoder.get_inputs()] if loaded.encoder else loaded.input_names
    return [
        pad_batch([encodings[i] for i in index], encoder.pad_id, names, width)
        # one width for all: the padding budget has nothing to save, and batches of one size stack
        for index in length_sorted_batches([len(e.ids) for e in encodings], batch_size, math.inf if same_width else MAX_PADDING)
    ]


def _real_rows(model: Path, names: list[str], feeds: list[dict[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, [tokens, channels]) of the tensors ``names`` for each feed, real (unpadded) tokens only."""
    graph = onnx.load(str(model))
    for name in names:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = create_session(graph.SerializeToString(), SessionConfig(providers="cpu"))
    for feed in feeds:
        real = feed["attention_mask"].astype(bool)
        for name, value in zip(names, session.run(names, feed)):
            yield name, value[real] if value.shape[:2] == real.shape else value.reshape(-1, value.shape[-1])


def activation_absmax(model: Path, names: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Largest |value| of each last-axis channel of the tensors ``names`` over real (unpadded) tokens."""
    result: dict[str, np.ndarray] = {}
    for name, rows in _real_rows(model, names, feeds):
        peak = np.abs(rows).max(axis=0)
        result[name] = np.maximum(result[name], peak) if name in result else peak
    return result


def activation_range(model: Path, names: list[str], feeds: list[dict[str, np.ndarray]],
                     sample: int = 512) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:  # fmt: skip
    """(smallest, largest value of each last-axis channel, up to ``sample`` of the rows) of the tensors ``names``
    over real tokens."""
    result: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name, rows in _real_rows(model, names, feeds):
        low, high = rows.min(axis=0), rows.max(axis=0)
        if name in result:
            old_low, old_high, kept = result[name]
            low, high = np.minimum(old_low, low), np.maximum(old_high, high)
            rows = np.concatenate([kept, rows[: sample - len(kept)]])
        result[name] = (low, high, rows[:sample])
    return result


def activation_gram(model: Path, names: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``Xᵀ X`` (float64, channels × channels) of each tensor in ``names`` over real tokens: the Hessian of a
    layer's squared output error with respect to its weights, up to a factor 2."""
    result: dict[str, np.ndarray] = {}
    for name, rows in _real_rows(model, names, feeds):
        rows = rows.astype(np.float64)
        result[name] = result[name] + rows.T @ rows if name in result else rows.T @ rows
    return result
