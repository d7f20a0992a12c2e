"""Scale-out on a local Ray instance (2 CPUs): Ray Data over 10,000+ sentences and a Ray Serve app, both giving the
single-process runtime's embeddings; a Ray Serve generation app whose concurrent requests share one replica's
continuous-batching engine and each get the single-process runtime's text."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from onnxforge import corpus
from onnxforge.runtime import load
from onnxforge.server.distributed import RayEmbedder, embedding_app, generation_app

SENTENCES = 10_240


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _corpus() -> list[str]:
    base = corpus.load()
    return [f"{base[i % len(base)]} ({i // len(base)})" for i in range(SENTENCES)]


def test_ray_data_embeds_a_large_corpus_like_one_process(local_ray, tiny_artifact):
    texts = _corpus()
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    out = ds.map_batches(RayEmbedder, fn_constructor_kwargs={"artifact": str(tiny_artifact), "providers": "cpu",
                                                            "threads": 1},
                         concurrency=2, batch_size=512).take_all()  # fmt: skip
    assert len(out) == SENTENCES
    got = np.stack([row["embedding"] for row in sorted(out, key=lambda r: r["id"])])
    expected = load(tiny_artifact, providers="cpu").embed(texts)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_ray_data_names_a_missing_column(local_ray, tiny_artifact):
    embedder = RayEmbedder(tiny_artifact, column="sentence", providers="cpu")
    with pytest.raises(KeyError, match="no column 'sentence'"):
        embedder({"text": np.array(["x"])})


def test_ray_serve_app_batches_and_matches_the_runtime(local_ray, tiny_artifact):
    from ray import serve

    serve.start(proxy_location="Disabled")  # handles only: no HTTP proxy actor on a 2-CPU test instance
    app = embedding_app(str(tiny_artifact), num_replicas=1, max_batch_size=8, ray_actor_options={"num_cpus": 0.5})
    handle = serve.run(app, name="embeddings", route_prefix=None)
    try:
        texts = corpus.load()[:24]
        responses = [handle.embed.remote(t) for t in texts]
        got = np.array([r.result() for r in responses], dtype=np.float32)
        np.testing.assert_allclose(got, load(tiny_artifact, providers="cpu").embed(texts), atol=1e-5)
    finally:
        serve.shutdown()


def test_ray_serve_generation_shares_a_replicas_engine_and_matches_the_runtime(local_ray, decoder):
    from ray import serve

    _, artifact = decoder("llama")
    serve.start(proxy_location="Disabled")
    app = generation_app(str(artifact), num_replicas=1, slots=4, ray_actor_options={"num_cpus": 0.5})
    handle = serve.run(app, name="generation", route_prefix=None)
    prompts = [f"{text} " for text in corpus.split(corpus.load()).evaluation[:12]]
    settings = [{"temperature": 0.0}, {"temperature": 0.8, "seed": 5}, {"temperature": 1.0, "top_k": 10, "seed": 2}]
    try:
        responses = [handle.generate.remote(p, max_new_tokens=10 + i, **settings[i % 3]) for i, p in enumerate(prompts)]
        got = [r.result() for r in responses]
        streamed = "".join(handle.options(stream=True).stream.remote(prompts[0], max_new_tokens=10))
        stats = handle.stats.remote().result()
    finally:
        serve.shutdown()
    generator = load(artifact, providers="cpu")
    expected = [generator.generate(p, max_new_tokens=10 + i, **settings[i % 3]) for i, p in enumerate(prompts)]
    assert got == expected and streamed == expected[0]
    assert sum(map(len, expected)) > 100
    assert stats["slots"] == 4 and stats["widest_step"] >= 2  # requests shared decode steps
