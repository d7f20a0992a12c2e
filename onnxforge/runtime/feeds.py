"""Checks on raw feeds to ``run``: names, array types, dtypes and shapes against the manifest's inputs.

onnxruntime's own errors on bad feeds are C++ messages with source paths; these name the input and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..artifact import TensorSpec


def check_feeds(specs: Sequence[TensorSpec], feeds: object) -> dict[str, np.ndarray]:
    """``feeds`` as a dict of arrays that match ``specs``, or a TypeError / ValueError naming the input."""
    if not isinstance(feeds, Mapping):
        raise TypeError(f"feeds must be a dict of input name → numpy array, got {type(feeds).__name__}")
    expected = {spec.name: spec for spec in specs}
    unknown = sorted(str(name) for name in feeds if name not in expected)
    missing = sorted(name for name in expected if name not in feeds)
    if unknown or missing:
        raise ValueError(
            f"feeds do not match the graph's inputs {sorted(expected)}: "
            f"unknown {unknown or 'none'}, missing {missing or 'none'}"
        )
    sizes: dict[str, tuple[int, str]] = {}
    for name, spec in expected.items():
        array = feeds[name]
        if not isinstance(array, np.ndarray):
            raise TypeError(f"input {name!r} must be a numpy array, got {type(array).__name__}")
        if array.dtype != np.dtype(spec.dtype):
            raise ValueError(f"input {name!r} has dtype {array.dtype}, the graph wants {spec.dtype}")
        if array.ndim != len(spec.shape):
            raise ValueError(f"input {name!r} has shape {array.shape}, the graph wants rank {len(spec.shape)} {spec.shape}")
        for axis, (size, want) in enumerate(zip(array.shape, spec.shape)):
            _check_axis(name, axis, size, want, sizes)
    return {name: feeds[name] for name in expected}


def _check_axis(name: str, axis: int, size: int, want: int | str, sizes: dict[str, tuple[int, str]]) -> None:
    if size == 0:
        raise ValueError(f"input {name!r} axis {axis} is empty; every axis needs at least one element")
    if isinstance(want, int):
        if size != want:
            raise ValueError(f"input {name!r} axis {axis} has {size} elements, the graph wants {want}")
        return
    seen = sizes.setdefault(want, (size, name))
    if seen[0] != size:
        raise ValueError(f"axis {want!r}: input {name!r} has {size}, input {seen[1]!r} has {seen[0]}")
