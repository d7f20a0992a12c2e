"""Sequence classification (``classify``) and token classification (``entities``) pipelines."""

from __future__ import annotations

from tokenizers import Tokenizer

from .base import Loaded, Pipeline, check_top_k
from .entities import AGGREGATIONS, aggregate, pieces
from .labels import Labels, softmax
from .text import check_batch_size, check_texts


class Classifier(Pipeline):
    """``classify(texts, top_k=1)`` → per text, its ``top_k`` labels as ``{"label", "score"}``, best first.

    Scores are a softmax over the labels, or independent sigmoids for multi-label (and single-logit) models,
    as transformers' text-classification pipeline computes them.
    """

    task = "classify"

    def __init__(self, loaded: Loaded) -> None:
        super().__init__(loaded)
        self.encoder = loaded.text_encoder()
        self.labels = Labels.from_config(loaded.directory)

    def classify(self, texts: str | list[str], top_k: int | None = 1, batch_size: int = 32) -> list[list[dict]]:
        items = check_texts(texts)
        top = check_top_k(top_k, len(self.labels.names)) or len(self.labels.names)
        results: list[list[dict]] = [[] for _ in items]
        if not items:
            return results
        batches = self.forward(self.encoder.encode(items), self.encoder.pad_id, ["logits"], check_batch_size(batch_size))
        for index, (logits,) in batches:
            for row, scores in zip(index, self.labels.scores(logits.astype("float64"))):
                best = scores.argsort(kind="stable")[::-1][:top]
                results[row] = [{"label": self.labels.names[i], "score": float(scores[i])} for i in best]
        return results


class TokenClassifier(Pipeline):
    """``entities(texts, aggregation="simple")`` → per text, its entities with character offsets and scores.

    Aggregation as in transformers' token-classification pipeline: ``none`` (one entry per token), ``simple``,
    ``first``, ``max``, ``average``; label ``O`` is left out. Texts are truncated to ``preprocess.max_length``.
    """

    task = "token-classify"

    def __init__(self, loaded: Loaded) -> None:
        super().__init__(loaded)
        self.encoder = loaded.text_encoder()
        self.labels = Labels.from_config(loaded.directory)
        tokenizer: Tokenizer = self.encoder.tokenizer
        self._join = tokenizer.decoder.decode if tokenizer.decoder else " ".join
        self._prefix = getattr(tokenizer.model, "continuing_subword_prefix", None)
        self._unk = loaded.manifest.preprocess.unk_token_id

    def entities(self, texts: str | list[str], aggregation: str = "simple", batch_size: int = 32) -> list[list[dict]]:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
        items = check_texts(texts)
        results: list[list[dict]] = [[] for _ in items]
        if not items:
            return results
        encodings = self.encoder.encode(items)
        for index, (logits,) in self.forward(encodings, self.encoder.pad_id, ["logits"], check_batch_size(batch_size)):
            for row, token_logits in zip(index, logits):
                enc = encodings[row]
                scores = softmax(token_logits[: len(enc.ids)].astype("float64"))  # per token, always a softmax
                found = pieces(items[row], enc.tokens, enc.offsets, enc.special_tokens_mask, enc.ids, scores,
                               self._unk, self._prefix)  # fmt: skip
                results[row] = aggregate(found, aggregation, self.labels.names, self._join)
        return results
