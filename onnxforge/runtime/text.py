"""Text in, padded int64 feeds out: input checks, tokenization and length-sorted batching."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer


def check_texts(texts: object) -> list[str]:
    """A str (one text) or a sequence of str → list; anything else is a TypeError naming the culprit.

    Lone surrogates (invalid UTF-16 halves, e.g. from ``surrogateescape``) become U+FFFD, as a UTF-8 decoder with
    ``errors="replace"`` would give; every other character, control characters included, goes to the tokenizer.
    """
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    items = list(texts)
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, not str")
        if not text.isascii():
            items[index] = _without_lone_surrogates(text)
    return items


def _without_lone_surrogates(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # pairs written as two code points join up; lone halves become U+FFFD
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


# transformers' clean_up_tokenization: spaces before punctuation and English contractions.
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))  # fmt: skip


def decode_text(tokenizer: Tokenizer, ids: list[int], clean_up: bool, skip_special: bool = True) -> str:
    """Token ids → text as transformers' ``decode`` gives it (``clean_up``: its ``clean_up_tokenization_spaces``)."""
    text = tokenizer.decode(ids, skip_special_tokens=skip_special)
    if clean_up:
        for before, after in _CLEANUPS:
            text = text.replace(before, after)
    return text


def check_positive(name: str, value: object) -> int:
    """``value`` if it is a positive int (not a bool), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_batch_size(batch_size: object) -> int:
    return check_positive("batch_size", batch_size)


@dataclass
class TextEncoder:
    """A ``tokenizers`` tokenizer that truncates to ``max_length`` tokens (special tokens included)."""

    tokenizer: Tokenizer
    max_length: int
    pad_id: int

    @classmethod
    def truncating(cls, tokenizer: Tokenizer, max_length: int, pad_id: int) -> TextEncoder:
        """``tokenizer`` set to truncate at ``max_length`` and not to pad (batches are padded by length)."""
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        return cls(tokenizer=tokenizer, max_length=max_length, pad_id=pad_id)

    def encode(self, texts: list[str]) -> list[Encoding]:
        return self.tokenizer.encode_batch(texts, add_special_tokens=True)


# A batch closes before padding it to its longest text would add more than this share of real tokens. On CPU a
# padded token costs as much as a real one, and batching gains less than that (MiniLM int8, 2 threads, random
# groups of 32 held-out sentences: 160 sentences/s one at a time, 200 in batches of 8, 230-250 with this budget).
MAX_PADDING = 0.25


def length_sorted_batches(lengths: Sequence[int], batch_size: int, max_padding: float = MAX_PADDING) -> Iterator[np.ndarray]:
    """Indices in batches of at most ``batch_size`` similar lengths (longest first), padding within ``max_padding``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    start, tokens = 0, 0
    for end, index in enumerate(order):
        size = end - start
        if size and (size == batch_size or (size + 1) * lengths[order[start]] > (tokens + lengths[index]) * (1 + max_padding)):
            yield order[start:end]
            start, tokens = end, 0
        tokens += lengths[index]
    if len(order):
        yield order[start:]


def pad_batch(
    encodings: list[Encoding], pad_id: int, wanted: Sequence[str], width: int | None = None
) -> dict[str, np.ndarray]:
    """Right-padded ``input_ids``/``attention_mask``/``token_type_ids`` arrays, only those the graph declares.

    ``width``: pad to this many tokens instead of the longest text's (it must be at least that).
    """
    width = width or max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    types = np.zeros((len(encodings), width), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1
        types[row, : len(encoding.ids)] = encoding.type_ids  # 1 on the second text of a pair
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    unknown = [name for name in wanted if name not in feeds]
    if unknown:
        raise ValueError(f"the graph wants inputs this pipeline cannot make: {', '.join(unknown)}")
    return {name: feeds[name] for name in wanted}
