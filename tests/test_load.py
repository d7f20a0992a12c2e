"""Concurrent load on one loaded pipeline, and a soak: same results as serial calls, resident memory flat."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from onnxforge import corpus
from onnxforge.runtime import load

TEXTS = corpus.load()[:64]
THREADS, CALLS = 8, 500


@pytest.fixture(scope="module")
def embedder(tiny_artifact):
    return load(tiny_artifact, providers="cpu", threads=2)


def _batch(call: int) -> list[str]:
    """Call ``call``'s input: 1–4 texts of varying length, so batches and padding differ from call to call."""
    start = (call * 7) % len(TEXTS)
    return TEXTS[start : start + 1 + call % 4]


def test_many_threads_match_serial(embedder):
    serial = [embedder.embed(_batch(call)) for call in range(CALLS)]

    def worker(thread: int) -> list[np.ndarray]:
        return [embedder.embed(_batch(call)) for call in range(CALLS)]

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))
    assert len(results) == THREADS
    for per_thread in results:
        assert len(per_thread) == CALLS
        for got, want in zip(per_thread, serial):
            np.testing.assert_array_equal(got, want)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


@pytest.mark.soak
def test_soak_resident_memory_stays_flat(embedder):
    """10,000 calls; resident memory after warm-up (1,000 calls) may grow by under 5%."""
    for call in range(1_000):
        embedder.embed(_batch(call))
    warm = _rss_bytes()
    for call in range(1_000, 10_000):
        embedder.embed(_batch(call))
    grown = _rss_bytes() / warm - 1
    assert grown < 0.05, f"resident memory grew {grown:.1%} over 9,000 calls after warm-up"
