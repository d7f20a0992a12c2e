"""Pytest plugin that breaks the runtime decoder's KV cache inside each test's body, to prove the tests notice.

``make cache-faults`` runs the decoder tests once per fault (the continuous-batching and text2text tests among them;
the two cross-attention faults on the text2text tests alone)::

    python -m pytest -p tests.cache_faults --cache-fault forget tests/test_generate.py tests/test_server.py

Each fault applies to every decode step (a ``Decoder.forward`` on a cache that already holds tokens) in a test's
body, never to a prefill, to fixtures' setup or to export's own parity check (which would refuse to build: what
export checks cannot hide what a test misses):

- ``forget``: each step starts from an empty cache, so the model sees the new token alone;
- ``drop``: the cached keys and values are zeros, lengths and positions stay right;
- ``shift``: one empty slot sits between the prompt and the first new token, so every later position is one off.

The batched step (``Decoder.step``, rows of a KV pool) gets the same three: every row's length read as 0, every row's
keys and values zeroed, every row written and read one position further on.

A text2text decoder step (``Seq2Seq.step``) gets them on its self-attention caches (emptied, zeroed, one zero position
inserted before the new token, once per ``Caches``: beam search's reordering makes new ones, so there the shift
repeats), and two more on its cross-attention caches, which the first step computes from
the encoder and every later step reads back:

- ``cross-drop``: the cross-attention keys and values are zeros;
- ``cross-shift``: the keys (not the values) are rolled by one source position, so each value is found by its
  neighbour's key (rolling both would only permute the pairs, which attention cannot see).

A test in which the fault fired and that still passed is listed at the end, and the run fails.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import pytest

from onnxforge.runtime.decoder import Cache, Decoder
from onnxforge.runtime.seq2seq import Caches, Seq2Seq

FAULTS = ("forget", "drop", "shift", "cross-drop", "cross-shift")
EXEMPT = "onnxforge.export"  # the package whose parity check decodes at build time


def _in_export() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(EXEMPT):
            return True
        frame = frame.f_back
    return False


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cache-fault", choices=FAULTS, required=True, help="how to break the KV cache")


def _zeros_like(value: ort.OrtValue, slot: int | None = None) -> ort.OrtValue:
    """Zeros of ``value``'s shape, or ``value`` with one zero slot inserted at ``slot`` (sequence axis 2)."""
    array = value.numpy()
    if slot is None:
        return ort.OrtValue.ortvalue_from_numpy(np.zeros_like(array))
    if value.shape()[2] > slot:  # preallocated: the slot is already there, only clear it
        array = array.copy()
        array[:, :, slot] = 0
        return ort.OrtValue.ortvalue_from_numpy(array)
    return ort.OrtValue.ortvalue_from_numpy(np.insert(array, slot, 0, axis=2))


def _break(fault: str, decoder: Decoder, cache: Cache) -> None:
    if fault == "forget":
        fresh = decoder.empty(cache.capacity)
        cache.length, cache.values = 0, fresh.values
    elif fault == "drop":
        cache.values = {name: _zeros_like(value) for name, value in cache.values.items()}
    elif not getattr(cache, "shifted", False):
        cache.values = {name: _zeros_like(value, cache.length) for name, value in cache.values.items()}
        cache.length += 1
        cache.shifted = True  # once: one off, not one more each step


def _break_seq2seq(fault: str, caches: Caches) -> None:
    """One fault on a text2text decoder's caches, before a step reads them."""
    if fault == "forget":
        caches.own = {name: value[:, :, :0] for name, value in caches.own.items()}
    elif fault == "drop":
        caches.own = {name: np.zeros_like(value) for name, value in caches.own.items()}
    elif fault == "shift" and not getattr(caches, "shifted", False):
        caches.own = {name: np.insert(value, value.shape[2], 0, axis=2) for name, value in caches.own.items()}
        caches.shifted = True
    elif fault == "cross-drop":
        caches.cross = {name: np.zeros_like(value) for name, value in caches.cross.items()}
    elif fault == "cross-shift" and not getattr(caches, "shifted", False):
        caches.cross = {name: np.roll(value, 1, axis=2) if ".key" in name else value
                        for name, value in caches.cross.items()}  # fmt: skip
        caches.shifted = True


class CacheFaults:
    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.fired = 0
        self.hit: set[str] = set()  # tests in which the fault fired
        self.survivors: list[str] = []  # the fault fired and the test passed: it cannot see the cache
        self.failed_alone: list[str] = []  # failed although the fault never fired: a failure of its own

    def patched(self) -> tuple[Callable, Callable, Callable, Callable]:
        forward, empty, step, seq2seq_step = Decoder.forward, Decoder.empty, Decoder.step, Seq2Seq.step
        cross = self.fault.startswith("cross-")

        def faulty_forward(decoder: Decoder, cache: Cache, ids: list[int], all_logits: bool = False) -> np.ndarray:
            if cache.length and not _in_export() and not cross:
                _break(self.fault, decoder, cache)
                self.fired += 1
            return forward(decoder, cache, ids, all_logits)

        def roomier_empty(decoder: Decoder, capacity: int) -> Cache:  # room for the shifted slot
            return empty(decoder, capacity + 1)

        def faulty_step(decoder: Decoder, rows: dict, lengths, tokens) -> np.ndarray:
            if cross:
                return step(decoder, rows, lengths, tokens)
            self.fired += 1
            lengths = np.asarray(lengths)
            if self.fault == "forget":
                lengths = np.zeros_like(lengths)
            elif self.fault == "drop":
                for array in rows.values():
                    array[...] = 0
            else:
                lengths = lengths + 1
            return step(decoder, rows, lengths, tokens)

        def faulty_seq2seq_step(model: Seq2Seq, caches: Caches, tokens: np.ndarray, log_probs: bool = False,
                                reorder: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
            if not _in_export():
                _break_seq2seq(self.fault, caches)
                self.fired += 1
            return seq2seq_step(model, caches, tokens, log_probs, reorder)

        return (faulty_forward, roomier_empty if self.fault == "shift" else empty, faulty_step,
                faulty_seq2seq_step)  # fmt: skip

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        original = Decoder.forward, Decoder.empty, Decoder.step, Seq2Seq.step
        Decoder.forward, Decoder.empty, Decoder.step, Seq2Seq.step = self.patched()
        self.fired = 0
        try:
            yield
        finally:
            Decoder.forward, Decoder.empty, Decoder.step, Seq2Seq.step = original
            if self.fired:
                self.hit.add(item.nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" and report.passed and report.nodeid in self.hit:
            self.survivors.append(report.nodeid)
        elif report.failed and report.nodeid not in self.hit:
            self.failed_alone.append(report.nodeid)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        write = terminalreporter.write_line
        write(f"cache fault {self.fault!r}: fired in {len(self.hit)} tests, {len(self.survivors)} still passed")
        for nodeid in self.survivors:
            write(f"  SURVIVED {nodeid}")
        for nodeid in self.failed_alone:
            write(f"  FAILED WITHOUT THE FAULT {nodeid}")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Succeed when every test that decoded failed and nothing else did."""
        session.exitstatus = 1 if self.survivors or self.failed_alone or not self.hit else 0


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(CacheFaults(config.getoption("--cache-fault")), "cache-faults")
