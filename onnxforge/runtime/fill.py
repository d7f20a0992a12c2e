"""Masked-word prediction: the ``top_k`` tokens for the one mask token in each text."""

from __future__ import annotations

import numpy as np

from .base import Loaded, Pipeline, check_top_k
from .labels import softmax
from .text import check_batch_size, check_texts, decode_text


class MaskFiller(Pipeline):
    """``fill(texts, top_k=5)`` → per text, ``{"score", "token", "token_str", "sequence"}`` for its mask, best first.

    Each text holds the tokenizer's mask token (e.g. ``[MASK]``) exactly once.
    """

    task = "fill-mask"

    def __init__(self, loaded: Loaded) -> None:
        super().__init__(loaded)
        pre = loaded.manifest.preprocess
        self.encoder = loaded.text_encoder()
        if pre.mask_token_id is None:
            raise ValueError(f"{loaded.directory}: manifest has no preprocess.mask_token_id; re-export it")
        self.mask_id = pre.mask_token_id
        self.mask_token = self.encoder.tokenizer.id_to_token(self.mask_id)
        self._clean = pre.clean_up_tokenization_spaces

    def _decode(self, ids: list[int], skip_special: bool = True) -> str:
        return decode_text(self.encoder.tokenizer, ids, self._clean, skip_special)

    def fill(self, texts: str | list[str], top_k: int = 5, batch_size: int = 32) -> list[list[dict]]:
        items = check_texts(texts)
        top = check_top_k(top_k, self.encoder.tokenizer.get_vocab_size())
        encodings = self.encoder.encode(items)
        positions = []
        for index, enc in enumerate(encodings):
            found = [i for i, token in enumerate(enc.ids) if token == self.mask_id]
            if len(found) != 1:
                raise ValueError(f"texts[{index}] has {len(found)} {self.mask_token} tokens; fill needs exactly one")
            positions.append(found[0])
        results: list[list[dict]] = [[] for _ in items]
        for index, (logits,) in self.forward(encodings, self.encoder.pad_id, ["logits"], check_batch_size(batch_size)):
            for row, text_logits in zip(index, logits):
                probs = softmax(text_logits[positions[row]].astype(np.float64))
                best = np.argsort(-probs, kind="stable")[:top]
                ids = list(encodings[row].ids)
                results[row] = [
                    {"score": float(probs[t]), "token": int(t), "token_str": self._decode([int(t)], skip_special=False),
                     "sequence": self._decode(ids[: positions[row]] + [int(t)] + ids[positions[row] + 1 :])}
                    for t in best
                ]  # fmt: skip
        return results
