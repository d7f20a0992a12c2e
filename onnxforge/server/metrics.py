"""Prometheus text-format metrics: request counts, latency and batch-size histograms, queue depth, and per generate
model its slots (busy, total), waiting generations, tokens handed out, tokens/s, prefix reuse and KV memory bound."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        braces = f"{{{labels}}}" if labels else ""
        out += [f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}', f"{name}_sum{braces} {self.total}",
                f"{name}_count{braces} {self.n}"]  # fmt: skip
        return out


class Metrics:
    """Thread-safe counters; ``render()`` is the /metrics body."""

    def __init__(self, queue_depth: Callable[[], dict[str, int]],
                 engines: Callable[[], dict[str, Any]] = dict) -> None:  # fmt: skip
        """``engines``: model name → its ``runtime.continuous.Engine``, read at each render."""
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batches = Histogram(BATCH_BUCKETS)
        self.waits = Histogram(LATENCY_BUCKETS)
        self.queue_depth = queue_depth
        self.engines = engines

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[route, status] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, size: int) -> None:
        with self._lock:
            self.batches.observe(size)

    def queue_wait(self, seconds: float) -> None:
        """A generation got its slot after waiting ``seconds`` (called from the engine's thread)."""
        with self._lock:
            self.waits.observe(seconds)

    def render(self) -> str:
        with self._lock:
            lines = ["# TYPE onnxforge_requests_total counter"]
            lines += [f'onnxforge_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in sorted(self.requests.items())]
            lines.append("# TYPE onnxforge_request_seconds histogram")
            for route, histogram in sorted(self.latency.items()):
                lines += histogram.lines("onnxforge_request_seconds", f'route="{route}"')
            lines.append("# TYPE onnxforge_batch_size histogram")
            lines += self.batches.lines("onnxforge_batch_size", "")
            lines.append("# TYPE onnxforge_queue_depth gauge")
            lines += [f'onnxforge_queue_depth{{model="{m}"}} {d}' for m, d in sorted(self.queue_depth().items())]
            lines.append("# TYPE onnxforge_generation_queue_wait_seconds histogram")
            lines += self.waits.lines("onnxforge_generation_queue_wait_seconds", "")
            lines += _engine_lines(self.engines())
        return "\n".join(lines) + "\n"


ENGINE_FIGURES = (  # (metric, type, what it reads off an engine)
    ("onnxforge_generation_slots", "gauge", lambda e: e.slots),
    ("onnxforge_generation_slots_busy", "gauge", lambda e: len(e.rows)),
    ("onnxforge_generation_waiting", "gauge", lambda e: len(e.waiting)),
    ("onnxforge_generated_tokens_total", "counter", lambda e: e.generated),
    ("onnxforge_generation_tokens_per_second", "gauge", lambda e: round(e.tokens_per_second(), 3)),
    ("onnxforge_prefix_reused_tokens_total", "counter", lambda e: e.reused),
    ("onnxforge_kv_cache_bytes_limit", "gauge", lambda e: e.kv_bytes),
)


def _engine_lines(engines: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for metric, kind, read in ENGINE_FIGURES:
        lines.append(f"# TYPE {metric} {kind}")
        lines += [f'{metric}{{model="{name}"}} {read(engine)}' for name, engine in sorted(engines.items())]
    return lines
