"""Time one decoder in a process of its own: ``python -m bench.decode_worker --system NAME --model DIR --out F``.

Runs in the project's venv or in a peer's own venv (llama.cpp, onnxruntime-genai), so it imports nothing from
onnxforge at module level. Every system decodes greedily exactly ``n`` new tokens (end-of-sequence ignored) after the
same chat-formatted prompt text, tokenized by its own tokenizer without added special tokens.
Figures per run: time to first token (prefill + one token) and decode tokens/s over the remaining n - 1 tokens.
With ``--passages`` (token ids of held-out text) it also scores them teacher-forced, after the timed runs: at each
position the top-1 next token and the log-probability of the true next token, for fidelity against fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .rss import peak_rss_mb

if TYPE_CHECKING:
    import numpy as np

Decode = Callable[[str, int], list[int]]  # (prompt text, n) → n new token ids; calls `mark()` after the first
Logits = Callable[[list[int]], "np.ndarray"]  # token ids → every position's next-token logits (len, vocab)


class Clock:
    def __init__(self) -> None:
        self.start = self.first = 0.0

    def mark(self) -> None:
        if not self.first:
            self.first = time.perf_counter()


def _transformers_generate(model, tokenizer, clock: Clock) -> tuple[Decode, Logits]:
    """Decode with transformers' ``generate`` (torch and Optimum models alike), marking the first token; logits from
    one forward pass."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class Mark(LogitsProcessor):
        def __call__(self, input_ids, scores):
            clock.mark()
            return scores

    def decode(prompt: str, n: int) -> list[int]:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 logits_processor=LogitsProcessorList([Mark()]), pad_token_id=2)  # fmt: skip
        return out[0, ids.input_ids.shape[1] :].tolist()

    def logits(ids: list[int]):
        with torch.no_grad():
            tensor = torch.tensor([ids])
            return model(input_ids=tensor, attention_mask=torch.ones_like(tensor)).logits[0].float().numpy()

    return decode, logits


def _torch(model_dir: Path, threads: int, clock: Clock) -> tuple[Decode, Logits]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return _transformers_generate(model, AutoTokenizer.from_pretrained(model_dir), clock)


def _optimum(model_dir: Path, threads: int, clock: Clock) -> tuple[Decode, Logits]:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    model = ORTModelForCausalLM.from_pretrained(model_dir, session_options=options, use_cache=True)
    return _transformers_generate(model, AutoTokenizer.from_pretrained(model_dir), clock)


def _onnxforge(model_dir: Path, threads: int, clock: Clock) -> tuple[Decode, Logits]:
    from onnxforge.runtime import load
    from onnxforge.runtime.decoder import greedy

    generator = load(model_dir, providers="cpu", threads=threads)
    eos = sorted(generator.eos)

    def pick(logits, previous):  # end-of-sequence masked, as transformers' min_new_tokens does for the others
        clock.mark()
        logits[eos] = float("-inf")
        return greedy(logits, previous)

    def decode(prompt: str, n: int) -> list[int]:
        ids = generator.encode(prompt, add_special_tokens=False)
        return list(generator.decoder.continuation(ids, n, pick, eos=frozenset()))

    return decode, generator.decoder.logits


def _llama_cpp(model_file: Path, threads: int, clock: Clock) -> tuple[Decode, Logits]:
    import numpy as np
    from llama_cpp import Llama

    def open_model(logits_all: bool) -> Llama:
        return Llama(str(model_file), n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512,
                     logits_all=logits_all, verbose=False)  # fmt: skip

    llm, scorer = open_model(False), None

    def decode(prompt: str, n: int) -> list[int]:
        llm.reset()  # explicit eval/sample steps: generate() crashes (0.3.36) when a run is cut before EOS
        llm.eval(llm.tokenize(prompt.encode(), add_bos=False, special=True))
        out = []
        while len(out) < n:
            # No end-of-sequence masking here: a Python logits processor costs llama.cpp ~10% of its speed.
            token = llm.sample(top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0)
            clock.mark()
            out.append(token)
            llm.eval([token])
        return out

    def logits(ids: list[int]):
        nonlocal scorer
        scorer = scorer or open_model(True)  # every position's logits: a second instance, outside the timed runs
        scorer.reset()
        scorer.eval(ids)
        return np.array(scorer.scores[: len(ids)], dtype=np.float32)

    return decode, logits


def _genai(model_dir: Path, threads: int, clock: Clock) -> tuple[Decode, Logits]:
    import numpy as np
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)

    def decode(prompt: str, n: int) -> list[int]:
        tokens = tokenizer.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(tokens) + n, min_length=len(tokens) + n)
        generator = og.Generator(model, params)
        generator.append_tokens(tokens)
        out = []
        while len(out) < n and not generator.is_done():
            generator.generate_next_token()
            clock.mark()
            out.append(int(generator.get_next_tokens()[0]))
        return out

    def logits(ids: list[int]):  # one token at a time: the generator exposes the last position's logits only
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + 1)
        generator, rows = og.Generator(model, params), []
        for token in ids:
            generator.append_tokens([token])
            last = np.asarray(generator.get_output("logits"), dtype=np.float32)
            rows.append(last.reshape(-1, last.shape[-1])[-1])
        return np.stack(rows)

    return decode, logits


LOADERS: dict[str, Callable[[Path, int, Clock], tuple[Decode, Logits]]] = {
    "torch": _torch, "optimum": _optimum, "onnxforge": _onnxforge, "llama.cpp": _llama_cpp, "onnxruntime-genai": _genai,
}  # fmt: skip


def _score(logits, ids: list[int]) -> dict[str, list]:
    """Top-1 prediction at each position but the last, and the log-probability of the true next token."""
    import numpy as np

    shifted = logits[:-1].astype(np.float64)
    shifted -= shifted.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return {"top1": log_probs.argmax(-1).tolist(), "log_p": log_probs[np.arange(len(ids) - 1), ids[1:]].tolist()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--loader", required=True, choices=sorted(LOADERS))
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--prompts", type=Path, required=True, help="JSON list of prompt texts")
    p.add_argument("--lengths", default="64,256")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--passages", type=Path, help="JSON list of token-id lists to score teacher-forced")
    args = p.parse_args()
    prompts = json.loads(args.prompts.read_text())
    clock = Clock()
    decode, logits = LOADERS[args.loader](args.model, args.threads, clock)
    decode(prompts[0], 8)  # warm-up
    runs = []
    for n in (int(x) for x in args.lengths.split(",")):
        for prompt in prompts:
            clock.first = 0.0
            clock.start = time.perf_counter()
            tokens = decode(prompt, n)
            end = time.perf_counter()
            runs.append({"new_tokens": n, "generated": len(tokens), "ttft_s": clock.first - clock.start,
                         "decode_tok_s": (len(tokens) - 1) / (end - clock.first), "tokens": tokens})  # fmt: skip
    rss = peak_rss_mb()
    scored = [_score(logits(ids), ids) for ids in json.loads(args.passages.read_text())] if args.passages else []
    args.out.write_text(json.dumps({"runs": runs, "peak_rss_mb": rss, "scored": scored}))
    os._exit(0)  # llama-cpp-python 0.3.x can crash in its finalizers at exit; the figures are written by now


if __name__ == "__main__":
    main()
