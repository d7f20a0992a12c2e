"""Parity of a ``generate`` graph with PyTorch: logits through the KV cache, and greedy decoding token for token.

Each text is fed in two parts: a prefill of its first half, then its second half one token per decode step, so
the figures cover the cache path the runtime uses, not just one full forward pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from ..artifact import Preprocess
from ..runtime import chat
from ..runtime.decoder import Decoder, greedy
from ..runtime.session import SessionConfig, create_session
from ..sources import tokenizer_of
from .families import attention_implementation
from .parity import ParityError

PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences what a CPU does.",
)


def check(onnx_path: Path, model_dir: Path, texts: list[str], settings: Preprocess, max_abs: float,
          new_tokens: int = 64, in_place: bool = False) -> dict[str, float | int]:  # fmt: skip
    """Figures of the graph vs PyTorch; raises :class:`ParityError` naming what missed."""
    tokenizer = tokenizer_of(model_dir)
    attention = attention_implementation(json.loads((model_dir / "config.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attention).eval()
    session = create_session(onnx_path, SessionConfig(providers="cpu"))
    decoder = Decoder(session, int(settings.max_length), in_place, settings.refill_after)
    worst, positions = 0.0, 0
    for text in texts:
        ids = tokenizer(text).input_ids[: decoder.context]
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0].numpy()
        half = _prefill_length(len(ids), settings.refill_after)
        cache = decoder.empty(len(ids))
        ours = [decoder.forward(cache, ids[:half], all_logits=True)]
        ours += [decoder.forward(cache, [token])[None] for token in ids[half:]]
        worst = max(worst, float(np.abs(np.concatenate(ours) - reference).max()))
        positions += len(ids)
    if worst > max_abs:
        raise ParityError(f"logits differ from PyTorch by up to {worst:.3g} (tolerance {max_abs:g}) over {positions} positions")
    eos = frozenset(settings.eos_token_ids)
    for prompt in PROMPTS:
        if settings.chat:
            ids = tokenizer(chat.render(settings.chat, [{"role": "user", "content": prompt}]), add_special_tokens=False).input_ids
        else:
            ids = tokenizer(prompt).input_ids
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=new_tokens, do_sample=False, eos_token_id=sorted(eos) or None,
                                 pad_token_id=min(eos) if eos else 0)  # fmt: skip
        expected = out[0, len(ids) :].tolist()
        while expected and expected[-1] in eos:
            expected.pop()
        got = list(decoder.continuation(ids, new_tokens, greedy, eos))
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            raise ParityError(f"greedy decoding of {prompt!r} diverges from transformers at new token {at} "
                              f"({len(got)} vs {len(expected)} tokens)")  # fmt: skip
    return {"max_abs_diff": worst, "positions": positions, "texts": len(texts),
            "greedy_prompts": len(PROMPTS), "greedy_new_tokens": new_tokens, "greedy_identical": True}  # fmt: skip


def _prefill_length(length: int, switch: int | None) -> int:
    """Half the text; with LongRoPE (``switch``), past the switch when the text is: each call picks its factors,
    so a cached run matches a full pass over the whole text only when its prefill already picks the long ones."""
    half = max(1, length // 2)
    return max(half, switch + 1) if switch is not None and length > switch else half
