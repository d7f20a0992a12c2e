"""Dynamic micro-batching: concurrent requests merged up to a batch size or a wait, run once, split back.

Requests carry a key (say, a translation's decoding settings); only requests with equal keys share a batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np


class Overloaded(RuntimeError):
    """The queue is full; the client should retry later."""


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future
    arrived: float  # event-loop time
    key: Hashable


@dataclass
class MicroBatcher:
    """Runs ``fn(texts, key)`` over merged requests of one key, one batch at a time, in ``executor``; each request
    gets its rows.

    ``fn`` returns a tuple of sequences whose first axis is ``len(texts)`` (say embeddings and token counts).

    A batch takes the oldest request's key. It closes when it holds ``max_batch`` texts of that key or
    ``max_wait_ms`` after that request arrived; a request is never split, and requests of other keys keep their
    place in the queue. ``max_queue`` texts may wait; beyond that :class:`Overloaded` is raised at once.
    """

    fn: Callable[[list[str], Hashable], tuple[np.ndarray | list, ...]]
    executor: Executor
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    on_batch: Callable[[int], None] = lambda size: None
    _pending: list[_Pending] = field(default_factory=list)
    _queued: int = 0
    _wake: asyncio.Event | None = None
    _task: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return self._queued

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        while self._pending:
            await asyncio.sleep(0.005)
        if self._task:
            self._task.cancel()

    async def submit(self, texts: list[str], key: Hashable = None) -> tuple[np.ndarray | list, ...]:
        if self._queued + len(texts) > self.max_queue:
            raise Overloaded(f"{self._queued} texts are queued (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(_Pending(texts, future, loop.time(), key))
        self._queued += len(texts)
        self._wake.set()
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            # requests that queued behind the previous batch have waited already: they go at once
            first = self._pending[0]
            deadline = first.arrived + self.max_wait_ms / 1000
            while self._waiting(first.key) < self.max_batch and loop.time() < deadline:
                await asyncio.sleep(min(0.001, max(0.0, deadline - loop.time())))
            batch, size = [], 0
            for item in [p for p in self._pending if p.key == first.key]:
                if batch and size + len(item.texts) > self.max_batch:
                    break
                self._pending.remove(item)
                batch.append(item)
                size += len(item.texts)
            self._queued -= size
            if self._pending:
                self._wake.set()
            await self._run(batch, size, first.key)

    def _waiting(self, key: Hashable) -> int:
        return sum(len(p.texts) for p in self._pending if p.key == key)

    async def _run(self, batch: list[_Pending], size: int, key: Hashable) -> None:
        self.on_batch(size)
        texts = [t for item in batch for t in item.texts]
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, self.fn, texts, key)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        start = 0
        for item in batch:
            if not item.future.done():
                item.future.set_result(tuple(part[start : start + len(item.texts)] for part in result))
            start += len(item.texts)
