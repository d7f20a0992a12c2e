"""Progress for long builds: named steps with timings on stderr, tqdm bars for loops when it is installed."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def step(label: str) -> Iterator[None]:
    """Print ``label`` now and its duration when the block ends (or that it failed)."""
    print(f"  · {label} …", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        print(f"  ✗ {label} failed after {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
        raise
    print(f"  ✓ {label} ({time.perf_counter() - start:.1f}s)", file=sys.stderr, flush=True)


def bar(items: Iterable[T], label: str, total: int | None = None) -> Iterable[T]:
    """A tqdm progress bar over ``items`` when tqdm is importable and stderr is a terminal, else ``items``."""
    if not sys.stderr.isatty():
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=f"    {label}", total=total, leave=False, file=sys.stderr)
