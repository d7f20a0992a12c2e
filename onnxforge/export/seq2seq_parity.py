"""Parity of a text2text artifact with PyTorch: encoder states, decoder logits through both caches, and the
runtime's generated tokens against transformers' ``generate`` for greedy and beam-search settings.

The logits are compared on the targets PyTorch itself generates, fed one token per step from the first step on,
so the figures cover the cache path the runtime uses. Generation runs the runtime's own pipeline over the staged
artifact (tokenizer included) and must give transformers' tokens exactly, text for text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSeq2SeqLM

from ..runtime.base import Loaded
from ..runtime.beam_search import until_end
from ..runtime.text import pad_batch
from ..runtime.text2text import Text2Text
from .parity import ParityError

BATCH = 8
TARGET_TOKENS = 24
# (name, generate arguments): greedy, beam 4, and beam 4 with a length penalty and no repeated trigrams
SEARCHES: tuple[tuple[str, dict], ...] = (
    ("greedy", {"num_beams": 1}),
    ("beam4", {"num_beams": 4, "length_penalty": 1.0, "no_repeat_ngram_size": 0}),
    ("beam4_lp2_ngram3", {"num_beams": 4, "length_penalty": 2.0, "no_repeat_ngram_size": 3}),
)


def check(loaded: Loaded, model_dir: Path, texts: list[str], max_abs: float, generated_texts: int = 16,
          new_tokens: int = 32) -> dict[str, float | int | bool]:  # fmt: skip
    """Figures of the staged artifact (opened as ``loaded``) vs PyTorch; raises :class:`ParityError` on a miss."""
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pipeline = Text2Text(loaded)
    encoder_worst, logits_worst, positions = 0.0, 0.0, 0
    for start in range(0, len(texts), BATCH):
        ids, mask = _source(pipeline, texts[start : start + BATCH])
        with torch.no_grad():
            reference_states = model.get_encoder()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))[0]
            targets = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=TARGET_TOKENS,
                                     num_beams=1, do_sample=False)  # fmt: skip
            reference = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), decoder_input_ids=targets).logits
        states = pipeline.model.encode(ids, mask)
        encoder_worst = max(encoder_worst, float(np.abs(states - reference_states.numpy())[mask.astype(bool)].max()))
        targets = targets.numpy()
        logits, caches = pipeline.model.start(states, mask, targets[:, :1])
        ours = [logits] + [pipeline.model.step(caches, targets[:, t]) for t in range(1, targets.shape[1])]
        logits_worst = max(logits_worst, float(np.abs(np.stack(ours, axis=1) - reference.numpy()).max()))
        positions += targets.size
    if max(encoder_worst, logits_worst) > max_abs:
        raise ParityError(f"encoder states differ from PyTorch by up to {encoder_worst:.3g}, decoder logits by up to "
                          f"{logits_worst:.3g} (tolerance {max_abs:g}) over {positions} target positions")  # fmt: skip
    figures: dict[str, float | int | bool] = {"max_abs_diff": logits_worst, "encoder_max_abs_diff": encoder_worst,
                                              "positions": positions, "texts": len(texts)}  # fmt: skip
    sample = texts[:generated_texts]
    for name, search in SEARCHES:
        expected = reference_tokens(model, pipeline, sample, search, new_tokens)
        decoding = pipeline.decoding(new_tokens, early_stopping=False, **search)
        got = pipeline.token_ids(sample, decoding, batch_size=BATCH)
        for text, ours_ids, theirs in zip(sample, got, expected):
            if ours_ids != theirs:
                at = next((i for i, (a, b) in enumerate(zip(ours_ids, theirs)) if a != b), min(len(ours_ids), len(theirs)))
                raise ParityError(f"{name} decoding of {text[:60]!r} diverges from transformers at new token {at} "
                                  f"({len(ours_ids)} vs {len(theirs)} tokens)")  # fmt: skip
        figures[f"{name}_identical"] = True
    figures |= {"generated_texts": len(sample), "generated_new_tokens": new_tokens}
    return figures


def _source(pipeline: Text2Text, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded source ids and mask, tokenized as the runtime does."""
    feeds = pad_batch(pipeline.encoder.encode(texts), pipeline.encoder.pad_id, ["input_ids", "attention_mask"])
    return feeds["input_ids"], feeds["attention_mask"]


def reference_tokens(model, pipeline: Text2Text, texts: list[str], search: dict, new_tokens: int) -> list[list[int]]:
    """transformers' generated tokens per text (start token dropped, cut before the end token)."""
    out = []
    for start in range(0, len(texts), BATCH):
        ids, mask = _source(pipeline, texts[start : start + BATCH])
        with torch.no_grad():
            sequences = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=new_tokens,
                                       do_sample=False, early_stopping=False, **search)  # fmt: skip
        out += [until_end(row, pipeline.eos) for row in sequences[:, 1:].numpy()]
    return out
