"""The OpenAI-compatible server, driven by the official ``openai`` client and raw HTTP, on tiny artifacts.

A real uvicorn server runs on a free loopback port in a thread; every error path of the API is exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

pytest.importorskip("starlette")
openai = pytest.importorskip("openai")

from onnxforge.runtime import load
from onnxforge.server import Limits, create_app
from onnxforge.server.batching import MicroBatcher, Overloaded
from tests.decoding import TorchReference

EMBED, CHAT = "tiny-bert/fp32", "tiny-llama/fp32"


@contextlib.contextmanager
def _running(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    _until(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _until(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out waiting for the server"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def chat_artifact(decoder):
    return decoder("llama")[1]


@pytest.fixture(scope="module")
def app(tiny_artifact, chat_artifact):
    return create_app([tiny_artifact, chat_artifact],
                      Limits(max_wait_ms=20, max_inputs=64, max_chars=5000, max_waiting_generations=64))


@pytest.fixture(scope="module")
def served(app, tiny_artifact, decoder_source):
    with _running(app) as base:
        yield base, load(tiny_artifact, providers="cpu"), TorchReference(decoder_source("llama"))


def _client(base: str):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)


def test_models_and_health(served):
    base, _, _ = served
    assert {m.id for m in _client(base).models.list()} == {EMBED, CHAT}
    assert httpx.get(f"{base}/health").json()["status"] == "ok"


def test_embeddings_with_the_openai_client_match_the_runtime(served):
    base, embedder, _ = served
    texts = ["a first sentence", "and a second, longer one about the weather"]
    expected = embedder.embed(texts)
    for encoding in ({}, {"encoding_format": "float"}):  # unless told, the client asks for base64 and decodes it
        response = _client(base).embeddings.create(model=EMBED, input=texts, **encoding)
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-6)
    tokens = sum(len(e.ids) for e in embedder.encoder.encode(texts))
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens


def test_concurrent_embeddings_are_micro_batched_and_split_back(served):
    base, embedder, _ = served
    texts = [f"sentence number {i} of the batch test" for i in range(48)]
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda t: _client(base).embeddings.create(model=EMBED, input=t).data[0].embedding, texts))
    np.testing.assert_allclose(np.array(results, dtype=np.float32), embedder.embed(texts), atol=1e-5)
    metrics = httpx.get(f"{base}/metrics").text
    batches = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("onnxforge_batch_size_count")))
    texts_batched = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("onnxforge_batch_size_sum")))
    assert texts_batched / batches > 1.5, "concurrent requests were not merged"
    assert 'onnxforge_requests_total{route="/v1/embeddings",status="200"}' in metrics
    assert "onnxforge_request_seconds_bucket" in metrics and "onnxforge_queue_depth" in metrics


def test_completions_and_streamed_chat_match_transformers(served):
    base, _, reference = served
    client = _client(base)
    done = client.completions.create(model=CHAT, prompt="The weather today", max_tokens=12, temperature=0)
    assert done.choices[0].text == reference.text("The weather today", 12)
    assert done.usage.completion_tokens <= 12
    messages = [{"role": "user", "content": "Hello there"}]
    stream = client.chat.completions.create(model=CHAT, messages=messages, max_tokens=10, temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream]
    assert "".join(pieces) == reference.text("Hello there", 10, chat=True)
    whole = client.chat.completions.create(model=CHAT, messages=messages, max_tokens=10, temperature=0)
    assert whole.choices[0].message.content == "".join(pieces)


def test_32_concurrent_requests_each_get_what_they_get_alone(served, app):
    """Different prompts, lengths, settings and seeds, streamed and not, chat and plain, all at once through the
    continuous-batching engine: each answer equals the same request sent alone afterwards, and the decode steps
    were shared (the engine's widest step held several rows)."""
    base, _, _ = served
    texts = ["The weather today", "Once upon a time there was", "Numbers: 1, 2, 3,", "In the beginning",
             "Python is a programming language that", "The module provides"]  # fmt: skip
    settings = [{"temperature": 0}, {"temperature": 0.8, "seed": 7}, {"temperature": 1.0, "top_k": 20, "seed": 3},
                {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.3, "seed": 11}]  # fmt: skip
    bodies = []
    for i in range(32):
        body = {"model": CHAT, "max_tokens": 4 + (i * 5) % 24, "stream": i % 3 == 0, **settings[i % 4]}
        text = texts[i % len(texts)] + " " * (i // 6)
        body |= {"messages": [{"role": "user", "content": text}]} if i % 2 else {"prompt": text}
        bodies.append(body)

    def answer(body: dict) -> str:
        path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        response = httpx.post(f"{base}{path}", json=body, timeout=120)
        assert response.status_code == 200, response.text
        if not body["stream"]:
            choice = response.json()["choices"][0]
            return choice["message"]["content"] if "messages" in body else choice["text"]
        chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
        return "".join(c["choices"][0].get("delta", {}).get("content") or c["choices"][0].get("text") or ""
                       for c in chunks)  # fmt: skip

    engine = app.state.server.models[CHAT].engine
    before = engine.generated
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(answer, bodies))
    widest = max(n for _, n in engine.recent)
    metrics = httpx.get(f"{base}/metrics").text
    alone = [answer(body) for body in bodies]
    assert together == alone
    assert sum(len(t) for t in alone) > 200
    assert widest >= 4
    assert f'onnxforge_generation_slots{{model="{CHAT}"}} 8' in metrics
    figures = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines() if not line.startswith("#")}
    assert figures[f'onnxforge_generated_tokens_total{{model="{CHAT}"}}'] - before > 100
    assert figures["onnxforge_generation_queue_wait_seconds_count"] >= 32
    assert figures[f'onnxforge_kv_cache_bytes_limit{{model="{CHAT}"}}'] == engine.kv_bytes > 0


def test_a_client_that_hangs_up_frees_its_slot(served, app, monkeypatch):
    """A streamed and an unstreamed generation of 240 tokens, each client gone after a moment: both slots are free
    again long before 240 steps (each step slowed to 10 ms here, so 240 would take 2.4 s)."""
    base, _, reference = served
    engine = app.state.server.models[CHAT].engine
    step = engine.decoder.step
    monkeypatch.setattr(engine.decoder, "step", lambda *a: (time.sleep(0.01), step(*a))[1])
    body = {"model": CHAT, "prompt": "The weather today", "max_tokens": 240, "ignore_eos": True, "temperature": 0}
    before = engine.generated
    with httpx.stream("POST", f"{base}/v1/completions", json=body | {"stream": True}, timeout=30) as response:
        events = (line for line in response.iter_lines() if line.startswith("data: "))
        text = "".join(json.loads(next(events)[6:])["choices"][0]["text"] for _ in range(20))
    assert len(text) > 20 and reference.text(body["prompt"], 60).startswith(text)  # what came was right
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}/v1/completions", json=body, timeout=0.3)
    _until(lambda: not engine.rows and not engine.waiting)
    assert engine.generated - before < 200  # tokens, not seconds: a loaded machine slows the steps too


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v1/embeddings", {"model": "nope", "input": "x"}, 404, "does not exist"),
        ("/v1/embeddings", {"model": EMBED, "input": ["x"] * 65}, 413, "at most 64"),
        ("/v1/embeddings", {"model": EMBED, "input": "x" * 5001}, 413, "5000 characters"),
        ("/v1/embeddings", {"model": EMBED, "input": []}, 400, "'input'"),
        ("/v1/embeddings", {"model": CHAT, "input": "x"}, 400, "not 'embed'"),
        ("/v1/embeddings", {"model": EMBED, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ("/v1/completions", {"model": CHAT, "prompt": "hi", "max_tokens": 10_000}, 400, "context"),
        ("/v1/completions", {"model": CHAT, "prompt": "hi", "top_p": 2}, 400, "top_p"),
        ("/v1/completions", {"model": CHAT, "prompt": "hi", "ignore_eos": "yes"}, 400, "ignore_eos"),
        ("/v1/chat/completions", {"model": CHAT, "messages": [{"role": "robot", "content": "x"}]}, 400, "robot"),
    ],
)
def test_errors_are_openai_shaped(served, path, body, status, words):
    base, _, _ = served
    response = httpx.post(f"{base}{path}", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"


def test_malformed_json_is_a_400(served):
    base, _, _ = served
    response = httpx.post(f"{base}/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_a_full_queue_refuses_at_once():
    async def scenario():
        slow = MicroBatcher(lambda texts, _: (time.sleep(0.2), (np.zeros((len(texts), 2)),))[1], ThreadPoolExecutor(1),
                            max_batch=4, max_wait_ms=1, max_queue=4)  # fmt: skip
        slow.start()
        first = asyncio.ensure_future(slow.submit(["a", "b", "c", "d"]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="limit 4"):
            await slow.submit(["e"])
        assert (await first)[0].shape == (4, 2)
        await slow.stop()

    asyncio.run(scenario())


def test_the_real_server_answers_503_with_retry_after_when_overloaded(tiny_artifact, chat_artifact, decoder_source):
    """One generation running and one waiting (the limits), one embedding batch running and a full queue behind
    it: the next requests get 503 + Retry-After over HTTP, the metrics count them, and the held ones finish."""
    app = create_app([tiny_artifact, chat_artifact],
                     Limits(max_generations=1, max_waiting_generations=1, max_batch=2, max_queue=2, max_wait_ms=1))
    server, release = app.state.server, threading.Event()
    body = {"model": CHAT, "prompt": "The weather today", "max_tokens": 24, "temperature": 0}
    with _running(app) as base, ThreadPoolExecutor(4) as pool:
        generator, batcher = server.models[CHAT].pipeline, server.models[EMBED].batcher
        forward, embed = generator.decoder.forward, batcher.fn
        generator.decoder.forward = lambda *a, **k: release.wait(60) and forward(*a, **k)
        batcher.fn = lambda texts, key: release.wait(60) and embed(texts, key)
        post = lambda path, payload, seconds=60: httpx.post(f"{base}{path}", json=payload, timeout=seconds)
        engine = server.models[CHAT].engine
        running = pool.submit(post, "/v1/completions", body)
        _until(lambda: len(engine.rows) == 1)
        waiting = pool.submit(post, "/v1/completions", body)
        _until(lambda: len(engine.waiting) == 1)
        stream = {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
        refused = [post("/v1/completions", body, 10), post("/v1/chat/completions", stream, 10)]
        batch = pool.submit(post, "/v1/embeddings", {"model": EMBED, "input": ["a", "b"]})
        _until(lambda: batcher.queued == 0 and server.metrics.batches.n == 1)
        queued = pool.submit(post, "/v1/embeddings", {"model": EMBED, "input": ["c", "d"]})
        _until(lambda: batcher.queued == 2)
        refused.append(post("/v1/embeddings", {"model": EMBED, "input": "e"}, 10))
        release.set()
        held = [future.result() for future in (running, waiting, batch, queued)]
        metrics = httpx.get(f"{base}/metrics").text
    for response, limit in zip(refused, ["limit 1", "limit 1", "limit 2"]):
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert error["type"] == "server_error" and limit in error["message"]
    assert [response.status_code for response in held] == [200] * 4
    expected = TorchReference(decoder_source("llama")).text(body["prompt"], 24)
    assert held[0].json()["choices"][0]["text"] == held[1].json()["choices"][0]["text"] == expected
    for route, count in [("/v1/completions", 1), ("/v1/chat/completions", 1), ("/v1/embeddings", 1)]:
        assert f'onnxforge_requests_total{{route="{route}",status="503"}} {count}' in metrics
    assert 'onnxforge_requests_total{route="/v1/completions",status="200"} 2' in metrics
