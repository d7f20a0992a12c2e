"""Corpus embedding on a local Ray instance vs one process: ``python -m bench.ray_corpus [--sentences N]``.

MiniLM int8 over N held-out-derived sentences: Ray Data with one actor per CPU (1 onnxruntime thread each) against
the single-process runtime (all CPUs in one session). Prints sentences/s for both and the largest difference.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from onnxforge import corpus
from onnxforge.runtime import available_cpus, load
from onnxforge.server.distributed import RayEmbedder

from .serve_load import ARTIFACT


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sentences", type=int, default=10_240)
    args = p.parse_args()
    import ray

    base = corpus.load()
    texts = [f"{base[i % len(base)]} ({i // len(base)})" for i in range(args.sentences)]
    cpus = available_cpus()
    start = time.perf_counter()
    single = load(ARTIFACT, providers="cpu", threads=cpus).embed(texts)
    single_rate = len(texts) / (time.perf_counter() - start)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
        start = time.perf_counter()
        rows = ds.map_batches(RayEmbedder, fn_constructor_kwargs={"artifact": str(ARTIFACT), "providers": "cpu", "threads": 1},
                              concurrency=cpus, batch_size=512).take_all()  # fmt: skip
        ray_rate = len(texts) / (time.perf_counter() - start)
    finally:
        ray.shutdown()
    got = np.stack([r["embedding"] for r in sorted(rows, key=lambda r: r["id"])])
    print(f"| sentences | single process ({cpus} threads) sent/s | Ray Data ({cpus} actors × 1 thread) sent/s | max |Δ| |")
    print("|---|---|---|---|")
    print(f"| {len(texts):,} | {single_rate:.1f} | {ray_rate:.1f} | {np.abs(got - single).max():.2e} |")


if __name__ == "__main__":
    main()
