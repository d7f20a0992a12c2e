"""The OpenAI-compatible server, driven by the official ``openai`` client and raw HTTP, on tiny artifacts.

A real uvicorn server runs on a free loopback port in a thread; every error path of the API is exercised.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

pytest.importorskip("starlette")
openai = pytest.importorskip("openai")

from onnxforge.runtime import load
from onnxforge.server import Limits, create_app
from onnxforge.server.batching import MicroBatcher, Overloaded
from tests.tiny_models import make_decoder

EMBED, CHAT = "tiny-bert/fp32", "tiny-llama/fp32"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_artifact):
    import uvicorn

    from onnxforge.export import export

    root = tmp_path_factory.mktemp("served")
    chat = root / "tiny-llama" / "fp32"
    export(make_decoder(root / "source", "llama"), chat, "generate")
    app = create_app([tiny_artifact, chat], Limits(max_wait_ms=20, max_inputs=64, max_chars=5000))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    yield base, load(tiny_artifact, providers="cpu"), load(chat, providers="cpu")
    server.should_exit = True
    thread.join(timeout=30)


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


def test_completions_and_streamed_chat_match_the_runtime(served):
    base, _, generator = served
    client = _client(base)
    done = client.completions.create(model=CHAT, prompt="The weather today", max_tokens=12, temperature=0)
    assert done.choices[0].text == generator.generate("The weather today", max_new_tokens=12)
    assert done.usage.completion_tokens <= 12
    messages = [{"role": "user", "content": "Hello there"}]
    stream = client.chat.completions.create(model=CHAT, messages=messages, max_tokens=10, temperature=0, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream]
    assert "".join(pieces) == generator.chat(messages, max_new_tokens=10)
    whole = client.chat.completions.create(model=CHAT, messages=messages, max_tokens=10, temperature=0)
    assert whole.choices[0].message.content == "".join(pieces)


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


def test_a_full_queue_answers_503_with_retry_after():
    async def scenario():
        slow = MicroBatcher(lambda texts: (time.sleep(0.2), (np.zeros((len(texts), 2)),))[1], ThreadPoolExecutor(1),
                            max_batch=4, max_wait_ms=1, max_queue=4)  # fmt: skip
        slow.start()
        first = asyncio.ensure_future(slow.submit(["a", "b", "c", "d"]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="limit 4"):
            await slow.submit(["e"])
        assert (await first)[0].shape == (4, 2)
        await slow.stop()

    asyncio.run(scenario())
    from onnxforge.server.app import ApiError

    response = ApiError(503, "overloaded", "server_error").response()
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
