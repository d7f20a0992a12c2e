"""Token scores → entities, grouped the way transformers' token-classification pipeline groups them.

``none`` gives one entry per token; ``simple`` joins adjacent tokens of the same entity type (a ``B-`` tag starts
a new one); ``first`` / ``max`` / ``average`` first make every word agree on one label (its first token's, its
most confident token's, or the mean of its tokens' scores), then group words like ``simple``. ``O`` is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

AGGREGATIONS = ("none", "simple", "first", "max", "average")
IGNORED = ("O",)


@dataclass
class Piece:
    """One token (or, after word aggregation, one word) with its label scores and character span."""

    word: str
    scores: np.ndarray
    start: int
    end: int
    index: int
    is_subword: bool


def pieces(text: str, tokens: list[str], offsets: list[tuple[int, int]], special: list[int], ids: list[int],
           scores: np.ndarray, unk_id: int | None, subword_prefix: str | None) -> list[Piece]:  # fmt: skip
    """Non-special tokens as :class:`Piece`; a word-piece tokenizer marks continuations by their prefix."""
    out = []
    for index, (token, (start, end)) in enumerate(zip(tokens, offsets)):
        if special[index]:
            continue
        surface = text[start:end]
        if subword_prefix:
            is_subword = len(token) != len(surface)
        else:  # no word boundaries in the vocabulary: a token glued to the previous character continues a word
            is_subword = start > 0 and " " not in text[start - 1 : start + 1]
        if ids[index] == unk_id:
            token, is_subword = surface, False
        out.append(Piece(token, scores[index], start, end, index, is_subword))
    return out


def _tag(label: str) -> tuple[str, str]:
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def _labelled(piece: Piece, labels: tuple[str, ...], score_vector: np.ndarray) -> dict:
    best = int(score_vector.argmax())
    return {"entity": labels[best], "score": float(score_vector[best]), "index": piece.index, "word": piece.word,
            "start": piece.start, "end": piece.end}  # fmt: skip


def _word(group: list[Piece], how: str, labels: tuple[str, ...], join: Callable[[list[str]], str]) -> dict:
    if how == "first":
        scores = group[0].scores
    elif how == "max":
        scores = max(group, key=lambda p: p.scores.max()).scores
    else:
        scores = np.nanmean(np.stack([p.scores for p in group]), axis=0)
    best = int(scores.argmax())
    return {"entity": labels[best], "score": float(scores[best]), "word": join([p.word for p in group]),
            "start": group[0].start, "end": group[-1].end}  # fmt: skip


def _words(found: list[Piece], how: str, labels: tuple[str, ...], join: Callable[[list[str]], str]) -> list[dict]:
    groups: list[list[Piece]] = []
    for piece in found:
        if groups and piece.is_subword:
            groups[-1].append(piece)
        else:
            groups.append([piece])
    return [_word(group, how, labels, join) for group in groups]


def _group(entities: list[dict], join: Callable[[list[str]], str]) -> list[dict]:
    groups: list[list[dict]] = []
    for entity in entities:
        bi, tag = _tag(entity["entity"])
        if groups and tag == _tag(groups[-1][-1]["entity"])[1] and bi != "B":
            groups[-1].append(entity)
        else:
            groups.append([entity])
    return [
        {"entity_group": g[0]["entity"].split("-", 1)[-1], "score": float(np.nanmean([e["score"] for e in g])),
         "word": join([e["word"] for e in g]), "start": g[0]["start"], "end": g[-1]["end"]}
        for g in groups
    ]  # fmt: skip


def aggregate(found: list[Piece], how: str, labels: tuple[str, ...], join: Callable[[list[str]], str]) -> list[dict]:
    """Entities of one text under aggregation ``how`` (one of :data:`AGGREGATIONS`), ``O`` removed."""
    if how in ("none", "simple"):
        entities = [_labelled(p, labels, p.scores) for p in found]
    else:
        entities = _words(found, how, labels, join)
    if how != "none":
        entities = _group(entities, join)
    return [e for e in entities if e.get("entity", e.get("entity_group")) not in IGNORED]
