"""Rules on the next token of a text2text target, applied to a batch's scores before any choice (greedy, sampled
or beam): no repeated n-grams, forced first and last tokens, never-generated tokens. Each is transformers' logits
processor of the same name, so that decoding gives transformers' tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Constraints:
    no_repeat_ngram_size: int = 0
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    suppressed: tuple[int, ...] = ()

    def apply(self, sequences: np.ndarray, scores: np.ndarray, max_length: int) -> np.ndarray:
        """``scores`` (rows, vocab) after ``sequences`` (rows, length so far, start token included), changed in place;
        ``max_length``: the target's final length counting the start token."""
        length = sequences.shape[1]
        if self.no_repeat_ngram_size:
            for row, tokens in enumerate(sequences):
                scores[row, banned_by_ngrams(tokens, self.no_repeat_ngram_size)] = -np.inf
        if self.forced_bos_token_id is not None and length == 1:
            _force(scores, self.forced_bos_token_id)
        if self.forced_eos_token_id is not None and length == max_length - 1:
            _force(scores, self.forced_eos_token_id)
        if self.suppressed:
            scores[:, list(self.suppressed)] = -np.inf
        return scores


def _force(scores: np.ndarray, token: int) -> None:
    scores[:] = -np.inf
    scores[:, token] = 0.0


def banned_by_ngrams(tokens: np.ndarray, size: int) -> list[int]:
    """Tokens that would complete an n-gram of ``size`` already in ``tokens``."""
    if len(tokens) + 1 < size:
        return []
    prefix = tuple(tokens[len(tokens) - size + 1 :].tolist()) if size > 1 else ()
    listed = tokens.tolist()
    return [listed[i + size - 1] for i in range(len(listed) - size + 1) if tuple(listed[i : i + size - 1]) == prefix]
