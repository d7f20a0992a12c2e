"""The ASGI app: OpenAI-shaped routes over loaded artifacts, micro-batched embeddings and translations (concurrent
requests merged into one batch), continuously batched generation (every running generation of a model shares each
decode step: ``runtime.continuous``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..runtime import load
from ..runtime.base import Pipeline
from ..runtime.continuous import Engine
from ..runtime.generate import Completion
from ..runtime.generate import Request as Generation
from ..runtime.session import SessionConfig
from ..runtime.text2text import Decoding, Text2Text
from .batching import MicroBatcher, Overloaded
from .metrics import Metrics

BATCHED_TASKS = ("embed",)


@dataclass(frozen=True)
class Limits:
    max_batch: int = 32  # texts per merged embedding batch
    max_wait_ms: float = 5.0  # how long a batch waits for more requests
    max_queue: int = 1024  # texts waiting for a batch; beyond: 503
    max_inputs: int = 256  # texts in one embeddings request; beyond: 413
    max_chars: int = 100_000  # characters in one request's texts or prompt; beyond: 413
    max_generations: int = 8  # generations decoding together per model (the KV pool's slots; sources per translation batch)
    max_waiting_generations: int = 16  # generations waiting for a slot or a translation batch; beyond: 503
    prefill_tokens: int = 256  # prompt tokens fed per decode step: a long prompt delays the others by one chunk
    slot_tokens: int | None = None  # tokens per slot (prompt + completion); None: the model's context
    threads: int | None = None  # onnxruntime intra-op threads per artifact


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 503 else None
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}
        return JSONResponse(body, status_code=self.status, headers=headers)


@dataclass
class Served:
    """One artifact behind the server: its pipeline and, for embeddings and translations, its batcher; for
    generation, its engine."""

    name: str
    pipeline: Pipeline
    batcher: MicroBatcher | None = None
    engine: Engine | None = None


class Server:
    def __init__(self, artifacts: list[str | Path], limits: Limits) -> None:
        self.limits = limits
        self.models: dict[str, Served] = {}
        for path in artifacts:
            # no spinning: the event loop and the tokenizers share the cores with onnxruntime's threads
            pipeline = load(path, config=SessionConfig(threads=limits.threads, spin=False))
            name = f"{pipeline.manifest.name}/{pipeline.manifest.variant}"
            if name in self.models:
                raise ValueError(f"two artifacts are both named {name!r}")
            self.models[name] = Served(name, pipeline)
        self.executor = ThreadPoolExecutor(max_workers=max(2, limits.max_generations + 1), thread_name_prefix="onnxforge")
        self.metrics = Metrics(lambda: {n: s.batcher.queued for n, s in self.models.items() if s.batcher},
                               lambda: {n: s.engine for n, s in self.models.items() if s.engine})  # fmt: skip
        for served in self.models.values():  # an engine's thread starts with its first request
            if served.pipeline.task == "generate":
                served.engine = served.pipeline.engine(limits.max_generations, limits.prefill_tokens,
                                                       limits.slot_tokens, on_admit=self.metrics.queue_wait)  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def startup(self) -> None:
        limits = self.limits
        for served in self.models.values():
            pipeline = served.pipeline
            if pipeline.task in BATCHED_TASKS:
                # the runtime splits a merged batch by length (runtime.text.MAX_PADDING): padding costs on CPU
                embed = functools.partial(_embed, pipeline, limits.max_batch)
                served.batcher = MicroBatcher(embed, self.executor, limits.max_batch, limits.max_wait_ms,
                                              limits.max_queue, self.metrics.batch)  # fmt: skip
            elif isinstance(pipeline, Text2Text):  # one batch per decoding settings (the batcher's key)
                translate = functools.partial(_translate, pipeline, limits.max_generations)
                served.batcher = MicroBatcher(translate, self.executor, limits.max_generations, limits.max_wait_ms,
                                              limits.max_waiting_generations, self.metrics.batch)  # fmt: skip
            if served.batcher:
                served.batcher.start()

    async def shutdown(self) -> None:
        for served in self.models.values():
            if served.batcher:
                await served.batcher.stop()
            if served.engine:
                served.engine.close()
        self.executor.shutdown(wait=True)

    def check_room(self, waiting: int) -> None:
        """503 when ``waiting`` (an engine's generations waiting for a slot) reaches ``max_waiting_generations``."""
        if waiting >= self.limits.max_waiting_generations:
            raise Overloaded(f"{waiting} generations are waiting (limit {self.limits.max_waiting_generations})")

    def model(self, body: dict, *tasks: str) -> Served:
        name = body.get("model")
        if not isinstance(name, str):
            raise ApiError(400, "'model' is required: one of " + ", ".join(self.models), param="model")
        served = self.models.get(name)
        if served is None:
            raise ApiError(404, f"model {name!r} does not exist; served: {', '.join(self.models)}", param="model")
        if served.pipeline.task not in tasks:
            raise ApiError(400, f"model {name!r} is a {served.pipeline.task!r} model, not {' or '.join(map(repr, tasks))}",
                           param="model")  # fmt: skip
        return served


async def _body(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _texts(body: dict, limits: Limits) -> list[str]:
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, "'input' must be a string or a non-empty list of strings", param="input")
    if len(texts) > limits.max_inputs:
        raise ApiError(413, f"{len(texts)} inputs; at most {limits.max_inputs} per request", param="input")
    if sum(len(t) for t in texts) > limits.max_chars:
        raise ApiError(413, f"the inputs exceed {limits.max_chars} characters", param="input")
    return texts


def _vector_encoding(body: dict) -> Callable[[np.ndarray], list[float] | str]:
    """OpenAI's ``encoding_format``: "float" (a JSON list) or "base64" (little-endian float32 bytes, what the
    official clients ask for by default: a quarter of the bytes and no float formatting on the server)."""
    kind = body.get("encoding_format", "float")
    if kind == "float":
        return lambda v: v.tolist()
    if kind == "base64":
        return lambda v: base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
    raise ApiError(400, f"encoding_format must be 'float' or 'base64', got {kind!r}", param="encoding_format")


def _generation(body: dict, engine: Engine, prompt_tokens: int) -> Generation:
    """OpenAI request fields → checked generation settings (OpenAI's defaults: temperature 1, max_tokens 16)."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 16))
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and prompt_tokens + max_tokens > engine.capacity:
        raise ApiError(400, f"the prompt's {prompt_tokens} tokens + max_tokens {max_tokens} exceed the "
                            f"{engine.capacity} tokens a generation slot holds (the model's context is "
                            f"{engine.decoder.context})", param="max_tokens")  # fmt: skip
    if not isinstance(body.get("ignore_eos", False), bool):
        raise ApiError(400, f"ignore_eos must be true or false, got {body['ignore_eos']!r}", param="ignore_eos")
    return Generation.check(max_tokens, body.get("stop"), temperature=body.get("temperature", 1.0),
                            top_p=body.get("top_p"), seed=body.get("seed"), top_k=body.get("top_k"),
                            repetition_penalty=body.get("repetition_penalty"))  # fmt: skip


Handler = Callable[[Server, Request], Awaitable[Response]]


def _route(path: str, handler: Handler, methods: list[str]) -> Route:
    """``handler(server, request)`` behind the API's error mapping and request metrics."""

    async def endpoint(request: Request) -> Response:
        server: Server = request.app.state.server
        start = time.perf_counter()
        try:
            response = await handler(server, request)
        except ApiError as exc:
            response = exc.response()
        except Overloaded as exc:
            response = ApiError(503, f"overloaded: {exc}; retry later", "server_error").response()
        except (ValueError, TypeError) as exc:  # the runtime's own checks on settings and prompts
            response = ApiError(400, str(exc)).response()
        server.metrics.request(path, response.status_code, time.perf_counter() - start)
        return response

    return Route(path, endpoint, methods=methods)


async def health(server: Server, request: Request) -> Response:
    return JSONResponse({"status": "ok", "models": list(server.models)})


async def models(server: Server, request: Request) -> Response:
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "onnxforge", "task": s.pipeline.task}
            for n, s in server.models.items()]  # fmt: skip
    return JSONResponse({"object": "list", "data": data})


async def metrics(server: Server, request: Request) -> Response:
    return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")


async def embeddings(server: Server, request: Request) -> Response:
    body = await _body(request)
    served = server.model(body, "embed")
    texts = _texts(body, server.limits)
    encode = _vector_encoding(body)
    vectors, counts = await served.batcher.submit(texts)
    tokens = int(counts.sum())
    data = [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)]
    return JSONResponse({"object": "list", "data": data, "model": served.name,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})  # fmt: skip


async def completions(server: Server, request: Request) -> Response:
    body = await _body(request)
    served = server.model(body, "generate", "translate", "summarize")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string", param="prompt")
    if isinstance(served.pipeline, Text2Text):
        return await _text2text(server, served, body, _checked(server, prompt))
    return await _generate(server, served, body, served.pipeline.encode(_checked(server, prompt)), False, request)


async def _text2text(server: Server, served: Served, body: dict, prompt: str) -> Response:
    """A translate / summarize model's completion: the prompt is the source text; left-out settings take the
    model's generation defaults (beams included), not OpenAI's sampling ones."""
    if body.get("stream"):
        raise ApiError(400, f"model {served.name!r} ({served.pipeline.task}) answers whole completions; "
                            "stream is for generate models", param="stream")  # fmt: skip
    pipeline: Text2Text = served.pipeline
    decoding = pipeline.decoding(body.get("max_completion_tokens", body.get("max_tokens")), body.get("num_beams"),
                                 length_penalty=body.get("length_penalty"), temperature=body.get("temperature", 0.0),
                                 top_p=body.get("top_p"), top_k=body.get("top_k"), seed=body.get("seed"),
                                 no_repeat_ngram_size=body.get("no_repeat_ngram_size"),
                                 target_language=body.get("target_language"))  # fmt: skip
    ((ids,),) = await served.batcher.submit([prompt], decoding)
    prompt_tokens = len(pipeline.encoder.encode([prompt])[0].ids)
    finish = "length" if len(ids) >= decoding.request.max_new_tokens else "stop"
    return JSONResponse({"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                         "model": served.name, "choices": [{"index": 0, "text": pipeline.text_of(ids),
                                                            "finish_reason": finish, "logprobs": None}],
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(ids),
                                   "total_tokens": prompt_tokens + len(ids)}})  # fmt: skip


def _embed(pipeline: Pipeline, batch_size: int, texts: list[str], _key: None) -> tuple[np.ndarray, np.ndarray]:
    return pipeline.embed_counted(texts, batch_size=batch_size)


def _translate(pipeline: Text2Text, batch_size: int, texts: list[str], decoding: Decoding) -> tuple[list[list[int]]]:
    return (pipeline.token_ids(texts, decoding, batch_size),)


async def chat_completions(server: Server, request: Request) -> Response:
    body = await _body(request)
    served = server.model(body, "generate")
    prompt = _checked(server, served.pipeline.chat_prompt(body.get("messages")))
    return await _generate(server, served, body, served.pipeline.encode(prompt, add_special_tokens=False), True,
                           request)  # fmt: skip


def _checked(server: Server, prompt: str) -> str:
    if len(prompt) > server.limits.max_chars:
        raise ApiError(413, f"the prompt exceeds {server.limits.max_chars} characters", param="prompt")
    return prompt


async def _generate(server: Server, served: Served, body: dict, ids: list[int], chat: bool,
                    request: Request) -> Response:  # fmt: skip
    generation = _generation(body, served.engine, len(ids))
    created, rid = int(time.time()), f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    server.check_room(len(served.engine.waiting))  # now, while a 503 can still be sent (a stream's comes later)
    run = Completion(served.pipeline, served.engine, ids, generation, bool(body.get("ignore_eos", False)))
    if body.get("stream"):
        return StreamingResponse(_events(run, served.name, chat, rid, created), media_type="text/event-stream")
    watch = asyncio.ensure_future(_cancel_on_disconnect(request, run))
    try:
        text = "".join([piece async for piece in run])
    finally:
        watch.cancel()
    choice = {"index": 0, "finish_reason": run.finish, "logprobs": None}
    choice |= {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
    return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                         "model": served.name, "choices": [choice],
                         "usage": {"prompt_tokens": len(ids), "completion_tokens": run.tokens,
                                   "total_tokens": len(ids) + run.tokens}})  # fmt: skip


async def _cancel_on_disconnect(request: Request, run: Completion) -> None:
    """Cancel ``run`` when the client hangs up before its (unstreamed) answer is ready."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    run.cancel()


async def _events(run: Completion, model: str, chat: bool, rid: str, created: int) -> AsyncIterator[str]:
    """Server-sent events of one streamed generation, in OpenAI's chunk shapes."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: dict, finish: str | None) -> str:
        if chat:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta.get("content", ""), "finish_reason": finish, "logprobs": None}
        return "data: " + json.dumps({"id": rid, "object": kind, "created": created, "model": model,
                                      "choices": [choice]}) + "\n\n"  # fmt: skip

    if chat:
        yield chunk({"role": "assistant"}, None)
    async for piece in run:
        yield chunk({"content": piece}, None)
    yield chunk({}, run.finish)
    yield "data: [DONE]\n\n"


ROUTES: list[tuple[str, Handler, list[str]]] = [
    ("/health", health, ["GET"]), ("/v1/models", models, ["GET"]), ("/metrics", metrics, ["GET"]),
    ("/v1/embeddings", embeddings, ["POST"]), ("/v1/completions", completions, ["POST"]),
    ("/v1/chat/completions", chat_completions, ["POST"]),
]  # fmt: skip


def create_app(artifacts: list[str | Path], limits: Limits = Limits()) -> Starlette:
    """The ASGI app serving ``artifacts``: handlers are module functions reading the :class:`Server` in ``app.state``."""
    server = Server(artifacts, limits)
    app = Starlette(routes=[_route(*row) for row in ROUTES], lifespan=lambda app: server.lifespan())
    app.state.server = server
    return app
