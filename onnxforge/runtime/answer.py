"""Extractive question answering over contexts of any length: overlapping windows, best spans across them.

Scoring follows transformers' question-answering pipeline: per window, start and end logits outside the
context (question, padding, special tokens except CLS) are set to -10000, each is soft-maxed, CLS is zeroed,
a span scores start × end probability with end ≥ start and at most ``max_answer_len`` tokens, spans snap to
whole words, and equal answers from different windows add their scores.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Encoding, Tokenizer

from .base import Loaded, Pipeline, check_top_k
from .text import check_positive, pad_batch

MAX_SEQ_LEN = 384
DOC_STRIDE = 128


def _softmax_masked(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    masked = np.where(allowed, logits, -10000.0)
    exp = np.exp(masked - masked.max())
    return exp / exp.sum()


def _spans(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, top_k: int, max_len: int):
    """(start, end, score) of the best ``top_k`` token spans inside ``allowed``."""
    candidates = np.tril(np.triu(np.outer(start, end)), max_len - 1)
    flat = candidates.ravel()
    order = np.argsort(-flat, kind="stable")[:top_k]
    starts, ends = np.unravel_index(order, candidates.shape)
    keep = allowed[starts] & allowed[ends]
    return [(int(s), int(e), float(candidates[s, e])) for s, e in zip(starts[keep], ends[keep])]


def _char_span(enc: Encoding, start: int, end: int) -> tuple[int, int]:
    """Character span of tokens start..end in the context, widened to whole words."""
    try:
        first, last = enc.token_to_word(start), enc.token_to_word(end)
        return enc.word_to_chars(first, 1)[0], enc.word_to_chars(last, 1)[1]
    except (TypeError, IndexError):  # tokens with no word (tokenizers without word ids): keep to token offsets
        return enc.offsets[start][0], enc.offsets[end][1]


class QuestionAnswerer(Pipeline):
    """``answer(question, context, top_k=1, max_answer_len=15)`` → ``{answer, start, end, score}`` (a list for top_k > 1).

    Contexts longer than one window (``max_seq_len`` tokens, default min(384, max_length)) are split into
    windows overlapping by ``doc_stride`` tokens, so an answer past the first window is still found.
    """

    task = "answer"

    def __init__(self, loaded: Loaded) -> None:
        super().__init__(loaded)
        pre = loaded.manifest.preprocess
        self.pad_id = pre.pad_token_id
        self.cls_id = pre.cls_token_id
        self.max_seq_len = min(MAX_SEQ_LEN, loaded.max_length)
        self._tokenizers: dict[tuple[int, int], Tokenizer] = {}

    def _tokenizer(self, max_seq_len: int, doc_stride: int) -> Tokenizer:
        key = (max_seq_len, doc_stride)
        if key not in self._tokenizers:  # configured once per setting: tokenizers are shared across threads
            tokenizer = self.loaded.tokenizer()
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_seq_len, stride=doc_stride, strategy="only_second")
            self._tokenizers[key] = tokenizer
        return self._tokenizers[key]

    def answer(self, question: str, context: str, top_k: int = 1, max_answer_len: int = 15,
               doc_stride: int | None = None, max_seq_len: int | None = None) -> dict | list[dict]:  # fmt: skip
        for name, value in (("question", question), ("context", context)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {type(value).__name__}")
            if not value.strip():
                raise ValueError(f"{name} is empty")
        top = check_top_k(top_k, 10**6)
        max_len = check_positive("max_answer_len", max_answer_len)
        seq_len = check_positive("max_seq_len", max_seq_len or self.max_seq_len)
        stride = check_positive("doc_stride", doc_stride or min(seq_len // 2, DOC_STRIDE))
        if stride >= seq_len:
            raise ValueError(f"doc_stride ({stride}) must be smaller than max_seq_len ({seq_len})")
        first = self._tokenizer(seq_len, stride).encode(question, context)
        windows = [first, *first.overflowing]
        feeds = pad_batch(windows, self.pad_id, self.loaded.input_names)
        starts, ends = self.loaded.infer(["start_logits", "end_logits"], feeds)
        answers: list[dict] = []
        for window, start_logits, end_logits in zip(windows, starts, ends):
            allowed = np.zeros(len(start_logits), dtype=bool)
            allowed[: len(window.ids)] = [s == 1 or i == self.cls_id for s, i in zip(window.sequence_ids, window.ids)]
            start_p = _softmax_masked(start_logits.astype("float64"), allowed)
            end_p = _softmax_masked(end_logits.astype("float64"), allowed)
            start_p[0] = end_p[0] = 0.0
            for s, e, score in _spans(start_p, end_p, allowed, top * 2 + 10, max_len):
                begin, finish = _char_span(window, s, e)
                text = context[begin:finish]
                same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
                if same:
                    same["score"] += score
                else:
                    answers.append({"score": score, "start": begin, "end": finish, "answer": text})
        best = sorted(answers, key=lambda a: a["score"], reverse=True)[:top]
        return best[0] if top == 1 and best else best
