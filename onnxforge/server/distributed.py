"""Scale-out on Ray (extra ``ray``): the same runtime pipelines as Ray Data batch functions and a Ray Serve app.

Corpus embedding across a cluster's CPUs or GPUs::

    ds = ray.data.read_text("s3://bucket/corpus/")                      # one column "text"
    ds = ds.map_batches(RayEmbedder, fn_constructor_kwargs={"artifact": "/models/minilm-l6/int8"},
                        concurrency=8, batch_size=256)                   # 8 actors, each one session
    ds.write_parquet("s3://bucket/embeddings/")

Online: ``serve.run(embedding_app("/models/minilm-l6/int8", num_replicas=4))``; requests merge with
``@serve.batch`` like the HTTP server's micro-batching. On a multi-node cluster the same code runs after
``ray.init(address="auto")``; the artifact path must exist on every node (shared storage or a baked image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime import load


class RayEmbedder:
    """A Ray Data callable class: ``batch[column]`` texts → ``batch["embedding"]`` (float32, L2-normalised)."""

    def __init__(self, artifact: str | Path, column: str = "text", providers: str = "auto", threads: int | None = None,
                 batch_size: int = 32) -> None:  # fmt: skip
        self.embedder = load(artifact, providers=providers, threads=threads)
        self.column = column
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.column not in batch:
            raise KeyError(f"the dataset has no column {self.column!r}; it has {sorted(batch)}")
        texts = [str(t) for t in batch[self.column]]
        return {**batch, "embedding": self.embedder.embed(texts, batch_size=self.batch_size)}


def embedding_app(artifact: str | Path, num_replicas: int = 1, max_batch_size: int = 32,
                  batch_wait_timeout_s: float = 0.005, ray_actor_options: dict | None = None):  # fmt: skip
    """A Ray Serve application embedding texts: ``await handle.embed.remote("text")`` → list of floats; over HTTP,
    POST ``{"input": "text"}`` to the route prefix."""
    from ray import serve

    @serve.deployment(num_replicas=num_replicas, ray_actor_options=ray_actor_options or {"num_cpus": 1})
    class Embeddings:
        def __init__(self) -> None:
            self.embedder = load(artifact)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def embed(self, texts: list[str]) -> list[list[float]]:
            return self.embedder.embed(texts).tolist()

        async def __call__(self, request) -> dict:
            body = await request.json()
            return {"embedding": await self.embed(body["input"])}

    return Embeddings.bind()
