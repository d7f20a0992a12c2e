"""Throughput of a candidate relative to its fp32 reference, timed alternately on the same batches."""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnxruntime as ort


def _seconds(session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> float:
    first = session.get_outputs()[0].name
    start = time.perf_counter()
    for feed in feeds:
        session.run([first], feed)
    return time.perf_counter() - start


def decode_feeds(session: ort.InferenceSession, past: int = 64, steps: int = 32) -> list[dict[str, np.ndarray]]:
    """Feeds of ``steps`` batch-1 decode steps of a ``generate`` graph after ``past`` cached tokens."""
    feeds: dict[str, np.ndarray] = {"input_ids": np.array([[1]], dtype=np.int64)}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values."):
            feeds[spec.name] = np.zeros((1, spec.shape[1], past, spec.shape[3]), dtype=np.float32)
        elif spec.name == "attention_mask":
            feeds[spec.name] = np.ones((1, past + 1), dtype=np.int64)
        elif spec.name == "position_ids":
            feeds[spec.name] = np.array([[past]], dtype=np.int64)
    return [feeds] * steps


def speed_vs(reference: ort.InferenceSession, candidate: ort.InferenceSession,
             feeds: list[dict[str, np.ndarray]], repeats: int = 3) -> float:  # fmt: skip
    """Median over ``repeats`` of reference time / candidate time (> 1: the candidate is faster)."""
    _seconds(reference, feeds[:1]), _seconds(candidate, feeds[:1])  # warm-up
    ratios = [_seconds(reference, feeds) / _seconds(candidate, feeds) for _ in range(repeats)]
    return round(statistics.median(ratios), 3)
