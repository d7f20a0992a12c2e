"""Run artifacts on CUDA and on CPU with the runtime alone, and compare: the GPU check for a machine with a GPU.

Usage: python scripts/cuda_check.py --reference FP32_EMBED_DIR|VECTORS.npy [--embed DIR …] [--generate DIR …]
       python scripts/cuda_check.py --reference FP32_EMBED_DIR --save-reference VECTORS.npy

Each embed artifact runs on CUDA and its vectors are compared with the fp32 reference's on CPU (mean and minimum
cosine over the held-out corpus; the reference vectors can be computed once and carried as .npy to a GPU machine
that lacks the fp32 artifact); throughput at batch 32 is measured on both providers. Each generate artifact
decodes greedily on both providers (IO binding, KV cache on the GPU) and the token streams are compared.
Exits non-zero when a CUDA output has inf/NaN, an embedding falls below ``--min-cosine`` or CUDA was not used.
Needs onnxruntime-gpu, tokenizers and numpy: no torch, transformers or onnx.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxforge import corpus
from onnxforge.runtime import load

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Onnx runtime on a GPU"]


def _first_pass(embedder, texts: list[str]) -> float:
    """Sentences/s over texts whose input shapes the session has not seen yet (after one warm-up batch)."""
    embedder.embed(texts[:8])
    start = time.perf_counter()
    embedder.embed(texts[8:])
    return (len(texts) - 8) / (time.perf_counter() - start)


def _throughput(embedder, texts: list[str], repeats: int = 3) -> float:
    embedder.embed(texts[:64])  # warm-up: CUDA kernels, arena, cuDNN/cuBLAS handles
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        embedder.embed(texts)
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


def reference_vectors(reference: Path, texts: list[str], threads: int | None) -> np.ndarray:
    if reference.suffix == ".npy":
        vectors = np.load(reference)
        if len(vectors) != len(texts):
            raise SystemExit(f"{reference} holds {len(vectors)} vectors for {len(texts)} texts: pass the same --texts")
        return vectors
    return load(reference, providers="cpu", threads=threads).embed(texts)


def check_embed(expected: np.ndarray, artifacts: list[Path], texts: list[str], threads: int | None) -> list[dict]:
    rows = []
    for path in artifacts:
        cuda = load(path, providers="cuda")
        first_pass = _first_pass(cuda, texts)
        got = cuda.embed(texts)
        cosine = (got * expected).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        rows.append({
            "artifact": str(path), "provider": cuda.provider, "finite": bool(np.isfinite(got).all()),
            "mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()),
            "cuda_first_pass_sent_per_s": first_pass, "cuda_sent_per_s": _throughput(cuda, texts),
            "cpu_sent_per_s": _throughput(load(path, providers="cpu", threads=threads), texts),
        })  # fmt: skip
    return rows


def check_generate(artifacts: list[Path], threads: int | None, tokens: int) -> list[dict]:
    rows = []
    for path in artifacts:
        cuda, cpu = load(path, providers="cuda"), load(path, providers="cpu", threads=threads)
        same = 0
        for prompt in PROMPTS:
            same += cuda.generate(prompt, max_new_tokens=tokens) == cpu.generate(prompt, max_new_tokens=tokens)
        start = time.perf_counter()
        streamed = "".join(cuda.generate(PROMPTS[0], max_new_tokens=tokens, stream=True))
        seconds = time.perf_counter() - start
        rows.append({"artifact": str(path), "provider": cuda.provider, "prompts_identical": f"{same}/{len(PROMPTS)}",
                     "stream_equals_plain": streamed == cuda.generate(PROMPTS[0], max_new_tokens=tokens),
                     "cuda_stream_s": seconds})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, help="fp32 embed artifact, run on CPU as the reference")
    p.add_argument("--embed", type=Path, nargs="*", default=[])
    p.add_argument("--generate", type=Path, nargs="*", default=[])
    p.add_argument("--texts", type=int, default=512, help="held-out corpus sentences to embed")
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the CPU side")
    p.add_argument("--min-cosine", type=float, default=0.999)
    p.add_argument("--save-reference", type=Path, help="write the reference vectors to this .npy and stop")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if (args.embed or args.save_reference) and not args.reference:
        p.error("--embed and --save-reference need --reference")
    texts = corpus.split(corpus.load()).evaluation[: args.texts]
    if args.save_reference:
        np.save(args.save_reference, reference_vectors(args.reference, texts, args.threads))
        return 0
    expected = reference_vectors(args.reference, texts, args.threads) if args.embed else None
    embed = check_embed(expected, args.embed, texts, args.threads) if args.embed else []
    generate = check_generate(args.generate, args.threads, args.tokens)
    for row in embed + generate:
        print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if args.json:
        args.json.write_text(json.dumps({"embed": embed, "generate": generate}, indent=2))
    problems = [r["artifact"] for r in embed + generate if r["provider"] != "CUDAExecutionProvider"]
    problems += [r["artifact"] for r in embed if not r["finite"] or r["min_cosine"] < args.min_cosine]
    if problems:
        print(f"FAILED: {', '.join(problems)}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
