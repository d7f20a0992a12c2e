"""Beam search over a batch of text2text targets, step for step transformers' (4.57) vectorised beam search.

Each input keeps ``num_beams`` running beams. At every step the best ``2 * num_beams`` continuations over all its
beams are taken; those that end (an end token, or the length limit) among the first ``num_beams`` become finished
hypotheses scored ``sum of log-probabilities / generated length ** length_penalty``, the others carry on. An input is
done when no running beam could still beat its worst kept hypothesis (``early_stopping=False``: judged at the current
length; ``"never"``: at the longest length, when the penalty favours length), or at once when it has ``num_beams``
hypotheses and ``early_stopping=True``. A done input leaves the batch (as in CTranslate2; transformers keeps it to the
end): its best hypothesis can no longer change, and the later steps run for the inputs still searched only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .constraints import Constraints

LOST = -1.0e9  # transformers' score for "not a candidate"
# (rows to keep, their next tokens, the inputs still searched or None for all) → log-probabilities (rows, vocab)
Step = Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class BeamSettings:
    num_beams: int
    length_penalty: float = 1.0
    early_stopping: bool | str = False


CHUNK = 128  # values per chunk whose maximum bounds the top k of a wide row (see _top)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """A new float32 array; two passes fewer over beams × vocabulary values than the textbook form."""
    shifted = np.subtract(logits, logits.max(axis=-1, keepdims=True), dtype=np.float32)
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values per row, largest first (ties: lowest index first).

    Rows as wide as beams × vocabulary are not sorted whole (that took most of a beam-search step): ``k`` chunks
    each hold a value at least the ``k``-th largest of the chunks' maxima, so every value of the top ``k`` (and any
    tie with the ``k``-th) is at least that bound, and only the few values above it are sorted.
    """
    width = values.shape[1]
    if width < CHUNK * k:
        return np.argsort(-values, axis=1, kind="stable")[:, :k]
    peaks = np.maximum.reduceat(values, np.arange(0, width, CHUNK), axis=1)
    bounds = np.partition(peaks, peaks.shape[1] - k, axis=1)[:, -k]
    out = np.empty((len(values), k), dtype=np.int64)
    for row, (value, bound) in enumerate(zip(values, bounds)):
        near = np.flatnonzero(value >= bound)  # in index order, so the stable sort keeps ties lowest-index first
        out[row] = near[np.argsort(-value[near], kind="stable")[:k]]
    return out


def ending(tokens: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which ``tokens`` are among ``ends`` (np.isin takes ~4× as long on a step's few tokens)."""
    return (tokens[..., None] == ends).any(axis=-1)


def _take(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.take_along_axis(values, index.reshape(index.shape + (1,) * (values.ndim - 2)), axis=1)


def beam_search(first_log_probs: np.ndarray, step: Step, start: int, eos: frozenset[int], max_new_tokens: int,
                settings: BeamSettings, rules: Constraints) -> list[list[int]]:  # fmt: skip
    """The best hypothesis (tokens after the start token, end token excluded) per input.

    ``first_log_probs``: (inputs * num_beams, vocab), the :func:`log_softmax` of the first step's logits, beams of an
    input next to each other. ``step(rows, tokens, kept)``: reorders the caches to ``rows`` (flat indices), keeps
    the inputs ``kept`` (indices among the last step's; None: all), feeds ``tokens``, returns the log-probabilities
    (a step graph computes them, see ``runtime.seq2seq``).
    """
    beams, penalty = settings.num_beams, settings.length_penalty
    inputs, vocab = len(first_log_probs) // beams, first_log_probs.shape[1]
    max_length = 1 + max_new_tokens
    keep = max(2, 1 + len(eos)) * beams
    top_beams = np.arange(keep) < beams
    ends = np.array(sorted(eos), dtype=np.int64)
    running = np.full((inputs, beams, max_length), start, dtype=np.int64)
    finished_tokens = running.copy()
    running_scores = np.zeros((inputs, beams), dtype=np.float32)
    running_scores[:, 1:] = LOST
    scores = np.full((inputs, beams), LOST, dtype=np.float32)
    finished = np.zeros((inputs, beams), dtype=bool)
    lengths = np.zeros((inputs, beams), dtype=np.int64)  # generated tokens of each kept hypothesis
    improvable = np.ones((inputs, 1), dtype=bool)
    log_probs, length = first_log_probs, 1
    searched, best_of = np.arange(inputs), [[] for _ in range(inputs)]  # the inputs in the batch; each one's result

    def keep_best(rows: np.ndarray) -> None:  # the best hypothesis of the searched inputs at ``rows``, as their result
        for i in rows:
            best_of[searched[i]] = until_end(finished_tokens[i, 0, 1 : 1 + lengths[i, 0]], eos)

    while True:
        log_probs = rules.apply(running[:, :, :length].reshape(inputs * beams, length), log_probs, max_length)
        totals = (log_probs.reshape(inputs, beams, vocab) + running_scores[:, :, None]).reshape(inputs, beams * vocab)
        picked = _top(totals, keep)
        top_scores = _take(totals, picked)
        origin, tokens = picked // vocab, picked % vocab
        candidates = _take(running, origin)
        candidates[:, :, length] = tokens
        ended = ending(tokens, ends) | (length + 1 >= max_length)
        # beams that carry on: the best candidates that did not end
        carry_scores = top_scores + ended.astype(np.float32) * LOST
        carried = _top(carry_scores, beams)
        running, running_scores = _take(candidates, carried), _take(carry_scores, carried)
        rows = (_take(origin, carried) + np.arange(inputs)[:, None] * beams).reshape(-1)
        # hypotheses: the candidates among the first num_beams that ended, if they beat the kept ones
        just_ended = ended & top_beams[None, :]
        hypothesis = top_scores / np.float32(length**penalty)  # generated tokens, the end token included
        full = finished.all(axis=1, keepdims=True) & (settings.early_stopping is True)
        hypothesis = hypothesis + (full | ~improvable | ~just_ended).astype(np.float32) * LOST
        merged = np.concatenate([scores, hypothesis], axis=1)
        best = _top(merged, beams)
        finished_tokens = _take(np.concatenate([finished_tokens, candidates], axis=1), best)
        scores = _take(merged, best)
        finished = _take(np.concatenate([finished, just_ended], axis=1), best)
        lengths = _take(np.concatenate([lengths, np.full((inputs, keep), length, dtype=np.int64)], axis=1), best)
        length += 1
        improvable &= _could_improve(running_scores, scores, finished, length, max_length, settings)
        if not improvable.any() or (finished.all() and settings.early_stopping is True) or ended.all():
            break
        kept = None
        if not improvable.all():  # done inputs leave the batch with their best hypothesis
            kept = np.flatnonzero(improvable[:, 0])
            keep_best(np.flatnonzero(~improvable[:, 0]))
            searched, rows = searched[kept], rows.reshape(inputs, beams)[kept].reshape(-1)
            running, running_scores, scores, finished, lengths, finished_tokens, improvable = (
                state[kept] for state in (running, running_scores, scores, finished, lengths, finished_tokens, improvable))
            inputs = len(kept)
        log_probs = step(rows, running[:, :, length - 1].reshape(-1), kept)
    keep_best(np.arange(inputs))
    return best_of


def _could_improve(running_scores: np.ndarray, scores: np.ndarray, finished: np.ndarray, length: int,
                   max_length: int, settings: BeamSettings) -> np.ndarray:  # fmt: skip
    """Per input: whether its best running beam could still beat its worst kept hypothesis."""
    if settings.early_stopping == "never" and settings.length_penalty > 0.0:
        best_length = max_length - 1
    else:
        best_length = length - 1
    best_running = running_scores[:, :1] / np.float32(best_length**settings.length_penalty)
    worst_kept = np.where(finished, scores.min(axis=1, keepdims=True), LOST)
    return (best_running > worst_kept).any(axis=-1, keepdims=True)


def until_end(tokens: np.ndarray, eos: frozenset[int]) -> list[int]:
    """``tokens`` up to, not including, the first end token."""
    out = []
    for token in tokens.tolist():
        if token in eos:
            break
        out.append(token)
    return out
