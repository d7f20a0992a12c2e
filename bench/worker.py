"""Measure one system in a process of its own: ``python -m bench.worker --system NAME --out FILE.json``.

With ``--cold`` it only loads the system and embeds one sentence (the parent times the whole process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from .rss import peak_rss_mb
from .systems import encoder_systems


def measure(embed, texts: list[str], batch: int, repeats: int, latency_n: int) -> tuple[dict, np.ndarray]:
    embed(texts[:64], batch)  # warm-up: first-run allocations and kernel selection
    rates, vectors = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        vectors = embed(texts, batch)
        rates.append(len(texts) / (time.perf_counter() - start))
    latencies = []
    for text in texts[:latency_n]:
        start = time.perf_counter()
        embed([text], 1)
        latencies.append((time.perf_counter() - start) * 1e3)
    figures = {
        "sentences_per_s": statistics.median(rates), "runs_sentences_per_s": rates,
        "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
        "latencies_ms": latencies,
    }  # fmt: skip
    return figures, np.asarray(vectors, dtype=np.float32)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--system", required=True)
    p.add_argument("--texts", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--providers", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latency-n", type=int, default=200)
    p.add_argument("--cold", action="store_true")
    args = p.parse_args()
    system = next(s for s in encoder_systems() if s.name == args.system)
    texts = json.loads(args.texts.read_text())
    embed = system.load(args.threads, args.providers)
    if args.cold:
        embed(texts[:1], 1)
        return
    figures, vectors = measure(embed, texts, args.batch, args.repeats, args.latency_n)
    figures["peak_rss_mb"] = peak_rss_mb()
    np.save(args.out.with_suffix(".npy"), vectors)
    args.out.write_text(json.dumps(figures))


if __name__ == "__main__":
    main()
