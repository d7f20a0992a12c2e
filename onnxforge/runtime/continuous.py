"""Continuous batching: many generations share each decode step of one session.

Decode at batch 1 reads every weight once per token; a step over n sequences reads them once for n tokens. The
engine runs one loop in its own thread. Each iteration:

1. feeds prompt tokens of joining sequences (prefill), at most ``prefill_tokens`` per iteration in chunks, so a
   long prompt delays the others' next token by one chunk, not by the whole prompt;
2. runs one decode step over every sequence past its prompt, each row at its own length;
3. lets each sequence pick its next token with its own :class:`~.decoder.Continuation` (sampling settings, seed)
   and removes those that ended (end of sequence, max tokens, the context, cancelled).

A request among others gets the tokens it gets alone: the rows never mix, and each has its own random stream.

With onnxforge's fused graph (GroupQueryAttention updating a preallocated cache in place) the rows are a
:class:`~.kv_pool.KVPool` and the decode step is one ``session.run``; a prompt that starts with tokens a free row
still holds resumes from them (prefix reuse). Other graphs (traced, concatenating caches) decode their sequences
one by one inside the same loop: same results and API, without the batching gain.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .decoder import Cache, Continuation, Decoder
from .kv_pool import KVPool
from .sampling import Sampling

Deliver = Callable[[object], None]  # gets each new token id (int), then None at the end, or the exception that ended it


@dataclass(eq=False)
class Ticket:
    """One generation in the engine; ``cancel()`` frees its slot before the next step."""

    state: Continuation
    deliver: Deliver
    submitted: float
    finish: str | None = None  # "stop" (end of sequence), "length", "cancelled" or "error"
    cancelled: bool = False
    fed: int = 0  # prompt tokens in the cache
    pending: int | None = None  # the last picked token, fed at the next step
    cache: Cache | None = None  # its own cache, for graphs without a pool

    def cancel(self) -> None:
        self.cancelled = True


class Engine:
    """Continuous batching over a generator's session: ``slots`` sequences decode together.

    ``capacity``: tokens per slot (prompt + new tokens), at most the model's context; the KV pool's memory bound
    is ``slots × capacity × bytes_per_token`` (``kv_bytes``). ``on_admit(seconds)`` hears each request's wait for
    a slot.
    """

    def __init__(self, decoder: Decoder, eos: frozenset[int], slots: int = 8, prefill_tokens: int = 256,
                 capacity: int | None = None, on_admit: Callable[[float], None] = lambda seconds: None) -> None:  # fmt: skip
        for name, value in (("slots", slots), ("prefill_tokens", prefill_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.decoder, self.eos = decoder, eos
        self.slots, self.prefill_tokens, self.on_admit = slots, prefill_tokens, on_admit
        self.capacity = min(capacity or decoder.context, decoder.context)
        self.pool = KVPool(decoder, slots, self.capacity) if decoder.in_place else None
        self.rows: list[Ticket] = []  # row order: the decoding tickets, then at most one still in its prompt
        self.decoding = 0
        self.waiting: collections.deque[Ticket] = collections.deque()
        self.generated = 0  # tokens handed out, all requests
        self.reused = 0  # prompt tokens not recomputed thanks to prefix reuse
        self.recent: collections.deque[tuple[float, int]] = collections.deque(maxlen=4096)  # (time, tokens) per step
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def kv_bytes(self) -> int:
        """The KV cache's memory bound (0 for graphs without a pool: each sequence allocates its own)."""
        return self.pool.nbytes if self.pool else 0

    def submit(self, ids: Sequence[int], max_new_tokens: int, sampling: Sampling, deliver: Deliver,
               ignore_eos: bool = False) -> Ticket:  # fmt: skip
        """Queue a generation of up to ``max_new_tokens`` after ``ids``; ``deliver`` is called from the engine's
        thread. ``ignore_eos``: decode through end-of-sequence tokens (load tests decode a fixed count)."""
        if not ids:
            raise ValueError("the prompt is empty: give at least one token")
        if len(ids) >= self.capacity:
            raise ValueError(f"the prompt has {len(ids)} tokens; a generation slot holds {self.capacity}")
        eos = frozenset() if ignore_eos else self.eos
        state = Continuation(list(ids), min(max_new_tokens, self.capacity - len(ids)), sampling.picker(), eos,
                             prompt_counts=sampling.repetition_penalty is not None)  # fmt: skip
        ticket = Ticket(state, deliver, time.perf_counter())
        if state.done:
            ticket.finish = "length"
            deliver(None)
            return ticket
        with self._wake:
            if self._closed:
                raise RuntimeError("the generation engine is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="onnxforge-engine", daemon=True)
                self._thread.start()
            self.waiting.append(ticket)
            self._wake.notify()
        return ticket

    def stream(self, ids: Sequence[int], max_new_tokens: int, sampling: Sampling,
               ignore_eos: bool = False) -> Iterator[int]:  # fmt: skip
        """The new tokens as an iterator (queued at once; closing it early cancels the generation)."""
        tokens: queue.SimpleQueue = queue.SimpleQueue()
        ticket = self.submit(ids, max_new_tokens, sampling, tokens.put, ignore_eos)

        def drain() -> Iterator[int]:
            try:
                while (item := tokens.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                ticket.cancel()

        return drain()

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Tokens handed out per second over the last ``window`` seconds."""
        since = time.perf_counter() - window
        return sum(n for t, n in list(self.recent) if t >= since) / window

    def close(self) -> None:
        """Stop the loop; generations still running or waiting end with an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        for ticket in [*self.rows, *self.waiting]:
            ticket.finish = "error"
            ticket.deliver(RuntimeError("the generation engine was closed"))
        self.rows, self.waiting = [], collections.deque()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self.rows or self.waiting or self._closed):
                    self._wake.wait()
                if self._closed:
                    return
            try:
                self._iteration()
            except Exception as exc:  # noqa: BLE001 - a failed run ends the generations it held, not the engine
                for ticket in self.rows:
                    ticket.finish = "error"
                    ticket.deliver(exc)
                self._sweep()

    def _iteration(self) -> None:
        self._sweep()
        budget = self.prefill_tokens
        while budget > 0 and (ticket := self._prefilling() or self._admit()) is not None:
            budget -= self._prefill(ticket, budget)
        if self.decoding:
            self._decode()
        self._sweep()

    def _prefilling(self) -> Ticket | None:
        return self.rows[self.decoding] if len(self.rows) > self.decoding else None

    def _admit(self) -> Ticket | None:
        """The next waiting request into the first free row (the free row holding most of its prompt)."""
        with self._wake:
            while self.waiting and self.waiting[0].cancelled:
                self._end(self.waiting.popleft(), "cancelled")
            if not self.waiting or len(self.rows) == self.slots:
                return None
            ticket = self.waiting.popleft()
        row = len(self.rows)
        if self.pool:
            best, common = self.pool.best_prefix(range(row, self.slots), ticket.state.ids)
            self.pool.swap(best, row)
            self.pool.held[row] = ticket.state.ids[:common]
            ticket.fed = common
            self.reused += common
        else:
            ticket.cache = self.decoder.empty(len(ticket.state.ids) + ticket.state.budget)
        self.rows.append(ticket)
        self.on_admit(time.perf_counter() - ticket.submitted)
        return ticket

    def _prefill(self, ticket: Ticket, budget: int) -> int:
        """Feed up to ``budget`` of the ticket's prompt tokens; the last chunk picks its first token."""
        ids = ticket.state.ids
        chunk = ids[ticket.fed : ticket.fed + budget]
        row = len(self.rows) - 1
        logits = self.decoder.forward(self.pool.cache(row) if self.pool else ticket.cache, chunk)
        if self.pool:
            self.pool.held[row].extend(chunk)
        ticket.fed += len(chunk)
        if ticket.fed == len(ids):
            self.decoding += 1
            self._take(ticket, logits)
            self.recent.append((time.perf_counter(), 1))
        return len(chunk)

    def _decode(self) -> None:
        tickets = self.rows[: self.decoding]
        tokens = [ticket.pending for ticket in tickets]
        if self.pool:
            lengths = [len(held) for held in self.pool.held[: self.decoding]]
            logits = self.decoder.step(self.pool.rows(0, self.decoding), lengths, tokens)
            for held, token in zip(self.pool.held, tokens):
                held.append(token)
        else:
            logits = np.stack([self.decoder.forward(ticket.cache, [ticket.pending]) for ticket in tickets])
        for ticket, row_logits in zip(tickets, logits):
            self._take(ticket, row_logits)
        self.recent.append((time.perf_counter(), len(tickets)))

    def _take(self, ticket: Ticket, logits: np.ndarray) -> None:
        if ticket.cancelled:
            return
        token = ticket.state.take(logits)
        if token is not None:
            ticket.pending = token
            self.generated += 1
            ticket.deliver(token)
        if ticket.state.done:
            ticket.finish = "stop" if token is None else "length"

    def _sweep(self) -> None:
        """Remove ended tickets, keeping the decoding rows contiguous from row 0 (the prefilling one after them)."""
        while (index := next((i for i, t in enumerate(self.rows) if t.finish or t.cancelled), None)) is not None:
            ticket = self.rows[index]
            if index < self.decoding:
                self.decoding -= 1
                self._swap(index, self.decoding)
                if len(self.rows) > self.decoding + 1:  # the prefilling ticket moves down next to the decoding ones
                    self._swap(self.decoding, self.decoding + 1)
            self.rows.pop()
            if self.pool:
                self.pool.used[len(self.rows)] = time.perf_counter()
            self._end(ticket, ticket.finish or "cancelled")

    def _swap(self, a: int, b: int) -> None:
        if self.pool:
            self.pool.swap(a, b)
        self.rows[a], self.rows[b] = self.rows[b], self.rows[a]

    @staticmethod
    def _end(ticket: Ticket, finish: str) -> None:
        if finish != "error":  # an error was delivered where it happened
            ticket.finish = finish
            ticket.deliver(None)
