"""Prometheus text-format metrics: request counts, latency and batch-size histograms, queue depth."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

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

    def __init__(self, queue_depth: Callable[[], dict[str, int]]) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batches = Histogram(BATCH_BUCKETS)
        self.queue_depth = queue_depth

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[route, status] += 1
            self.latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, size: int) -> None:
        with self._lock:
            self.batches.observe(size)

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
        return "\n".join(lines) + "\n"
