"""Scale-out on Ray (extra ``ray``): the same runtime pipelines as Ray Data batch functions and a Ray Serve app.

Corpus embedding across a cluster's CPUs or GPUs::

    ds = ray.data.read_text("s3://bucket/corpus/")                      # one column "text"
    ds = ds.map_batches(RayEmbedder, fn_constructor_kwargs={"artifact": "/models/minilm-l6/int8"},
                        concurrency=8, batch_size=256)                   # 8 actors, each one session
    ds.write_parquet("s3://bucket/embeddings/")

Online: ``serve.run(embedding_app("/models/minilm-l6/int8", num_replicas=4))``; requests merge with
``@serve.batch`` like the HTTP server's micro-batching. Chat: ``serve.run(generation_app("/models/smollm2-135m/int4",
num_replicas=4, slots=8))``; each replica runs one continuous-batching engine, so the requests Ray routes to a replica
share its decode steps, and replicas scale the whole. On a multi-node cluster the same code runs after
``ray.init(address="auto")``; the artifact path must exist on every node (shared storage or a baked image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime import load
from ..runtime.generate import Completion, Request


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


def generation_app(artifact: str | Path, num_replicas: int = 1, slots: int = 8, prefill_tokens: int = 256,
                   max_waiting: int = 64, ray_actor_options: dict | None = None):  # fmt: skip
    """A Ray Serve application generating text, one continuous-batching engine per replica:
    ``await handle.generate.remote("prompt", max_new_tokens=64, temperature=0.7, seed=1)`` → str;
    ``handle.options(stream=True).stream.remote(...)`` → text pieces; over HTTP, POST ``{"prompt": …, settings…}``.
    A replica accepts ``slots + max_waiting`` requests at once; Ray queues the rest or routes them elsewhere."""
    from ray import serve

    @serve.deployment(num_replicas=num_replicas, max_ongoing_requests=slots + max_waiting,
                      ray_actor_options=ray_actor_options or {"num_cpus": 1})  # fmt: skip
    class Generation:
        def __init__(self) -> None:
            self.generator = load(artifact)
            self.engine = self.generator.engine(slots, prefill_tokens)

        def _completion(self, prompt: str, max_new_tokens: int, stop: str | list[str] | None, ignore_eos: bool,
                        sampling: dict) -> Completion:  # fmt: skip
            request = Request.check(max_new_tokens, stop, **sampling)
            return Completion(self.generator, self.engine, self.generator.encode(prompt), request, ignore_eos)

        async def stream(self, prompt: str, max_new_tokens: int = 128, stop: str | list[str] | None = None,
                         ignore_eos: bool = False, **sampling):  # fmt: skip
            async for piece in self._completion(prompt, max_new_tokens, stop, ignore_eos, sampling):
                yield piece

        async def generate(self, prompt: str, max_new_tokens: int = 128, stop: str | list[str] | None = None,
                           ignore_eos: bool = False, **sampling) -> str:  # fmt: skip
            return "".join([p async for p in self._completion(prompt, max_new_tokens, stop, ignore_eos, sampling)])

        def stats(self) -> dict:
            """The replica's engine: slots, busy, waiting, tokens handed out, the widest recent decode step."""
            engine = self.engine
            return {"slots": engine.slots, "busy": len(engine.rows), "waiting": len(engine.waiting),
                    "generated": engine.generated, "widest_step": max((n for _, n in engine.recent), default=0)}  # fmt: skip

        async def __call__(self, request) -> dict:
            body = await request.json()
            return {"text": await self.generate(body.pop("prompt"), **body)}

    return Generation.bind()
