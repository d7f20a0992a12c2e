"""Next-token choice: greedy, temperature, top-k, top-p and repetition penalty, checked before any compute."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked; ``temperature=0`` is greedy (the other settings then only shape ties)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not _is_number(self.temperature) or not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be None or a positive integer, got {self.top_k!r}")
        if self.top_p is not None and (not _is_number(self.top_p) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be None or in (0, 1], got {self.top_p!r}")
        if self.repetition_penalty is not None and (
            not _is_number(self.repetition_penalty) or not 0 < self.repetition_penalty < float("inf")
        ):
            raise ValueError(f"repetition_penalty must be None or a finite number > 0, got {self.repetition_penalty!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"seed must be None or a non-negative integer, got {self.seed!r}")

    def picker(self) -> TokenPicker:
        return TokenPicker(self, np.random.default_rng(self.seed))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


@dataclass
class TokenPicker:
    """One generation's sampler: its settings and its own random stream (reproducible with a seed)."""

    sampling: Sampling
    rng: np.random.Generator

    def __call__(self, logits: np.ndarray, previous: Sequence[int]) -> int:
        scores = logits.astype(np.float64)  # a copy: the caller's logits stay as they were
        s = self.sampling
        if s.repetition_penalty is not None and len(previous):
            seen = np.unique(np.asarray(previous))
            # transformers' rule: positive scores are divided by the penalty, negative ones multiplied.
            scores[seen] = np.where(scores[seen] > 0, scores[seen] / s.repetition_penalty, scores[seen] * s.repetition_penalty)
        if s.temperature == 0:
            return int(scores.argmax())
        scores = scores / s.temperature
        if s.top_k is not None and s.top_k < scores.size:
            kth = np.partition(scores, -s.top_k)[-s.top_k]
            scores[scores < kth] = -np.inf
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        if s.top_p is not None and s.top_p < 1:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            cut = int(np.searchsorted(cumulative, s.top_p)) + 1  # smallest prefix whose mass reaches top_p
            kept = np.zeros_like(probs)
            kept[order[:cut]] = probs[order[:cut]]
            probs = kept / kept.sum()
        return int(self.rng.choice(probs.size, p=probs))
