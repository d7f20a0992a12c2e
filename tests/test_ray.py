"""Scale-out on a local Ray instance (2 CPUs): Ray Data over 10,000+ sentences and a Ray Serve app, both giving the
single-process runtime's embeddings."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from onnxforge import corpus
from onnxforge.runtime import load
from onnxforge.server.distributed import RayEmbedder, embedding_app

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
