"""Corpus embedding on a local Ray instance vs one process: ``python -m bench.ray_corpus [--sentences N]``.

MiniLM (fp32 unless ``--variant``) over N held-out-derived sentences: Ray Data with one actor per CPU (1 onnxruntime thread each) against
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
    # fp32 by default: dynamic int8 scales each batch's activations on their own, so its vectors depend (slightly)
    # on which sentences share a batch, and Ray's batches are not the single process's
    p.add_argument("--variant", default="fp32")
    args = p.parse_args()
    artifact = ARTIFACT.parent / args.variant
    import ray

    base = corpus.load()
    texts = [f"{base[i % len(base)]} ({i // len(base)})" for i in range(args.sentences)]
    cpus = available_cpus()
    start = time.perf_counter()
    single = load(artifact, providers="cpu", threads=cpus).embed(texts)
    single_rate = len(texts) / (time.perf_counter() - start)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
        start = time.perf_counter()
        rows = ds.map_batches(RayEmbedder, fn_constructor_kwargs={"artifact": str(artifact), "providers": "cpu", "threads": 1},
                              concurrency=cpus, batch_size=512).take_all()  # fmt: skip
        ray_rate = len(texts) / (time.perf_counter() - start)
    finally:
        ray.shutdown()
    got = np.stack([r["embedding"] for r in sorted(rows, key=lambda r: r["id"])])
    print(f"| MiniLM {args.variant}: sentences | single process ({cpus} threads) sent/s | Ray Data ({cpus} actors × 1 thread) sent/s | max |Δ| |")
    print("|---|---|---|---|")
    print(f"| {len(texts):,} | {single_rate:.1f} | {ray_rate:.1f} | {np.abs(got - single).max():.2e} |")


if __name__ == "__main__":
    main()
