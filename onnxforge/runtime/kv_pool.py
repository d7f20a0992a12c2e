"""The KV cache of continuous batching: one preallocated row per slot, each row holding one sequence's keys and values.

Rows are numpy arrays (batch axis first) that onnxruntime reads and writes in place, so a decode step over rows
``[0, n)`` binds one contiguous block per cache tensor, with no copy. Rows move (``swap``) only when a sequence
joins or leaves, copying the tokens they hold, never the whole row. A row keeps the token ids whose keys and values
it holds after its sequence ends, so that a later prompt starting with the same tokens (a system prompt, a chat's
earlier turns) resumes from them instead of recomputing them.

Memory: ``nbytes`` is the bound, ``slots × capacity`` tokens. The arrays are anonymous memory maps, which the OS
backs page by page as tokens are written, in small pages (``MADV_NOHUGEPAGE``: with transparent huge pages the first
token of each row and head would map 2 MB), so resident memory grows with the tokens actually held, not with the
bound.
"""

from __future__ import annotations

import mmap

import numpy as np
import onnxruntime as ort

from .decoder import Cache, Decoder


class KVPool:
    def __init__(self, decoder: Decoder, slots: int, capacity: int) -> None:
        if not decoder.in_place:
            raise ValueError("a KV pool needs a graph that updates its cache in place (onnxforge's fused graph)")
        if slots < 1 or capacity < 2:
            raise ValueError(f"a KV pool needs at least 1 slot of 2 tokens, got {slots} slots of {capacity}")
        _, heads, _, head_dim = decoder.kv_shape
        self.slots, self.capacity = slots, capacity
        self.arrays = {name: _mapped_zeros((slots, heads, capacity, head_dim), decoder.kv_dtype) for name in decoder.past}
        self.held: list[list[int]] = [[] for _ in range(slots)]  # token ids whose keys/values each row holds
        self.used = [0.0] * slots  # when each row last served (for choosing which retained prefix to give up)

    @property
    def nbytes(self) -> int:
        """The pool's size when every slot is full: the memory bound."""
        return sum(array.nbytes for array in self.arrays.values())

    def rows(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``[start, stop)`` of every cache tensor: views, written in place by ``Decoder.step``."""
        return {name: array[start:stop] for name, array in self.arrays.items()}

    def cache(self, row: int) -> Cache:
        """Row ``row`` as a batch-1 cache for ``Decoder.forward`` (prefill), at the length it holds."""
        values = {name: ort.OrtValue.ortvalue_from_numpy(view) for name, view in self.rows(row, row + 1).items()}
        return Cache(len(self.held[row]), self.capacity, values)

    def swap(self, a: int, b: int) -> None:
        """Exchange two rows' contents (the tokens they hold, not their whole capacity)."""
        if a == b:
            return
        n = max(len(self.held[a]), len(self.held[b]))
        for array in self.arrays.values():
            kept = array[a, :, :n].copy()
            array[a, :, :n] = array[b, :, :n]
            array[b, :, :n] = kept
        self.held[a], self.held[b] = self.held[b], self.held[a]
        self.used[a], self.used[b] = self.used[b], self.used[a]

    def best_prefix(self, rows: range, ids: list[int]) -> tuple[int, int]:
        """(row, tokens) among ``rows``: the row holding the longest prefix of ``ids`` (short of the last token,
        which must be fed to get logits); ties and no match go to the least recently used row."""
        best, best_key = rows.start, (-1, 0.0)
        for row in rows:
            held = self.held[row]
            n = min(len(held), len(ids) - 1)
            common = next((i for i in range(n) if held[i] != ids[i]), n)
            key = (common, -self.used[row])
            if key > best_key:
                best, best_key = row, key
        return best, max(best_key[0], 0)


def _mapped_zeros(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Zeros in anonymous memory that takes RAM only where written, in small pages."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffer = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buffer, dtype).reshape(shape)
