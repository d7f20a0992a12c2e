"""Independent references for decoder tests: transformers without any KV cache, and figures computed here.

Nothing in this module goes through ``onnxforge.runtime.decoder``'s cache: each reference token comes from
transformers running the whole sequence again, so a runtime that forgets, zeroes or shifts its cache disagrees.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
import torch

from onnxforge import corpus
from onnxforge.quantization.gate import PASSAGES, passages
from onnxforge.runtime import load
from onnxforge.runtime.decoder import Picker, greedy
from onnxforge.runtime.generate import Generator, Request

PROMPTS = ["The weather today", "Once upon a time there was", "Numbers: 1, 2, 3,"]


def cut_at_end(rows: list[list[int]], eos: int) -> list[list[int]]:
    """Generated rows as transformers returns them, each cut before its first end token (and the padding after it)."""
    return [row[: row.index(eos)] if eos in row else row for row in rows]


class TorchReference:
    """A source directory's model in transformers, used without its cache (``use_cache=False``)."""

    def __init__(self, source: Path, eos: int = 2) -> None:
        self.source = source
        self.eos = eos

    @cached_property
    def model(self):
        from transformers import AutoModelForCausalLM

        from onnxforge.export.families import attention_implementation

        attention = attention_implementation(json.loads((self.source / "config.json").read_text()))
        return AutoModelForCausalLM.from_pretrained(self.source, attn_implementation=attention).eval()

    @cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.source)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Every position's next-token logits, one full pass: (len(ids), vocab)."""
        with torch.no_grad():
            return self.model(torch.tensor([list(ids)]), use_cache=False).logits[0].numpy()

    def continuation(self, ids: Sequence[int], new_tokens: int, pick: Picker = greedy) -> list[int]:
        """Up to ``new_tokens`` tokens after ``ids``, each from a full pass over everything so far."""
        out: list[int] = []
        for _ in range(new_tokens):
            token = pick(self.logits([*ids, *out])[-1], out)
            if token == self.eos:
                break
            out.append(token)
        return out

    def text(self, prompt: str, new_tokens: int, pick: Picker = greedy, chat: bool = False) -> str:
        """The continuation of ``prompt`` (or of the chat template applied to one user message) as text."""
        if chat:
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                        add_generation_prompt=True)  # fmt: skip
        ids = self.tokenizer(prompt, add_special_tokens=not chat).input_ids
        return self.tokenizer.decode(self.continuation(ids, new_tokens, pick), skip_special_tokens=True)


def held_out_passages(generator: Generator, count: int = PASSAGES) -> list[list[int]]:
    """The held-out passages a decoder's gate reads (the corpus's evaluation half)."""
    return passages(generator, corpus.split(corpus.load()).evaluation, count)


def language_figures(reference: TorchReference, generator: Generator, count: int = PASSAGES) -> dict[str, float]:
    """Next-token agreement with transformers' fp32 model and perplexity retention, computed here from both
    models' teacher-forced logits on held-out passages (not the figures quantize() recorded)."""
    agree, ours, theirs = [], [], []
    for ids in held_out_passages(generator, count):
        expected = reference.logits(ids)[:-1].astype(np.float64)
        got = generator.decoder.logits(ids)[:-1].astype(np.float64)
        agree.append(expected.argmax(-1) == got.argmax(-1))
        for logits, into in ((expected, theirs), (got, ours)):
            log_probs = torch.log_softmax(torch.from_numpy(logits), -1).numpy()
            into.append(log_probs[np.arange(len(ids) - 1), ids[1:]])
    retention = np.exp(np.concatenate(ours).mean() - np.concatenate(theirs).mean())
    return {"next_token_agreement": float(np.concatenate(agree).mean()), "perplexity_retention": float(retention)}


def one_pass_greedy(generator: Generator, ids: list[int], tokens: list[int]) -> list[int]:
    """The greedy choice at each of ``tokens``' positions when the graph reads ``ids + tokens`` in one plain pass:
    equal to ``tokens`` when they were decoded greedily through a sound cache."""
    return _one_pass_logits(generator, ids, tokens, len(tokens)).argmax(-1).tolist()


def _one_pass_logits(generator: Generator, ids: list[int], tokens: list[int], steps: int) -> np.ndarray:
    """The logits that predicted each of the first ``steps`` decoded positions, from the same graph reading
    ``ids + tokens`` in one plain ``session.run`` from an empty cache (no decode loop involved)."""
    logits = generator.loaded.session.run(["logits"], generator.decoder.feeds(ids + tokens))[0][0]
    return logits[len(ids) - 1 : len(ids) - 1 + steps]


def decode_and_reread(generator: Generator, prompt: str, new_tokens: int = 24) -> tuple[list[int], list[int]]:
    """Greedy tokens decoded through the cache, and the argmax at each of their positions when the same graph
    reads prompt + tokens in one pass: equal when decoding is right."""
    ids = generator.encode(prompt)
    tokens = list(generator.tokens(ids, Request.check(new_tokens, None)))
    return tokens, one_pass_greedy(generator, ids, tokens)


def assert_cache_exact(generator: Generator, ids: list[int], new_tokens: int, pick: Picker = greedy,
                       prompt_counts: bool = False, eos: frozenset[int] | None = None) -> list[int]:  # fmt: skip
    """Decode through the cache, keeping the logits each step picked from; they must equal the same graph's logits
    at those positions when it reads prompt + output in one plain ``session.run`` (atol 1e-3). Finer than
    comparing tokens: a cache one position off changes logits even where the greedy choice survives."""
    seen: list[np.ndarray] = []

    def recording(logits: np.ndarray, previous: Sequence[int]) -> int:
        seen.append(logits.copy())
        return pick(logits, previous)

    stop = generator.eos if eos is None else eos
    tokens = list(generator.decoder.continuation(ids, new_tokens, recording, stop, prompt_counts))
    np.testing.assert_allclose(np.stack(seen), _one_pass_logits(generator, ids, tokens, len(seen)), atol=1e-3)
    return tokens


def check_quantized(reference: TorchReference, manifest, out, minimum: dict[str, float]) -> Generator:
    """The quantized artifact's figures, recomputed here against transformers' fp32 model, meet ``minimum`` and
    match what quantize() recorded; its greedy decoding through the cache equals the same graph's one-pass argmax."""
    quantized = load(out, providers="cpu")
    figures = language_figures(reference, quantized)
    for figure, least in minimum.items():
        assert figures[figure] >= least
        assert figures[figure] == pytest.approx(manifest.quality[figure], abs=0.01)
    for prompt in PROMPTS:
        tokens, reread = decode_and_reread(quantized, prompt)
        assert len(tokens) >= 8 and tokens == reread
    return quantized
