"""Text generation over a ``generate`` artifact: ``generate(prompt, …)``, ``chat(messages, …)``, streamed or not."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from . import chat as chat_format
from .base import Loaded, Pipeline
from .continuous import Engine, Ticket
from .decoder import Decoder
from .sampling import Sampling
from .streaming import TextStream, check_stop
from .text import check_texts


@dataclass(frozen=True)
class Request:
    """One generation's checked settings."""

    max_new_tokens: int
    sampling: Sampling
    stop: tuple[str, ...]

    @classmethod
    def check(cls, max_new_tokens: object, stop: object, **sampling: object) -> Request:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
        return cls(max_new_tokens, Sampling(**sampling), check_stop(stop))  # type: ignore[arg-type]


def in_place(graph: dict) -> bool:
    """Whether a manifest's graph updates its KV cache in place (onnxforge's fused decoder graph)."""
    return graph.get("builder") == "onnxforge"


class Generator(Pipeline):
    """A causal language model with a KV cache. Batch 1 per call; calls may run from several threads at once.

    ``generate("Once upon a time", max_new_tokens=64)`` → str; ``stream=True`` → iterator of text pieces.
    ``chat([{"role": "user", "content": "Hi"}])`` applies the model's chat template first.
    Generation ends at ``max_new_tokens``, an end-of-sequence token, a stop string (not included) or the context.
    """

    task = "generate"

    def __init__(self, loaded: Loaded) -> None:
        super().__init__(loaded)
        pre = loaded.manifest.preprocess
        self.tokenizer = loaded.tokenizer()
        self.context = loaded.max_length
        self.eos = frozenset(pre.eos_token_ids)
        self.chat_template = pre.chat
        self.decoder = Decoder(loaded.session, self.context, in_place=in_place(loaded.manifest.graph),
                               refill_after=pre.refill_after)  # fmt: skip

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Prompt text → token ids; an empty prompt or one that fills the context is an error."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        (checked,) = check_texts(text)
        ids = self.tokenizer.encode(checked, add_special_tokens=add_special_tokens).ids
        if not ids:
            raise ValueError("the prompt is empty: give at least one token of text")
        if len(ids) >= self.context:
            raise ValueError(f"the prompt has {len(ids)} tokens; the model's context is {self.context}")
        return ids

    def generate(self, prompt: str, max_new_tokens: int = 128, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, repetition_penalty: float | None = None,
                 stop: str | list[str] | None = None, seed: int | None = None,
                 stream: bool = False) -> str | Iterator[str]:  # fmt: skip
        request = Request.check(max_new_tokens, stop, temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty, seed=seed)  # fmt: skip
        return self._answer(self.encode(prompt), request, stream)

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 256, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
             stop: str | list[str] | None = None, seed: int | None = None,
             stream: bool = False) -> str | Iterator[str]:  # fmt: skip
        request = Request.check(max_new_tokens, stop, temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty, seed=seed)  # fmt: skip
        return self._answer(self.encode(self.chat_prompt(messages), add_special_tokens=False), request, stream)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if not self.chat_template:
            raise ValueError(f"{self.loaded.directory}: this model has no chat template; use generate(prompt)")
        return chat_format.render(self.chat_template, messages)

    def _answer(self, ids: list[int], request: Request, stream: bool) -> str | Iterator[str]:
        pieces = self.pieces(ids, request)
        return pieces if stream else "".join(pieces)

    def pieces(self, ids: list[int], request: Request, tokens: Iterator[int] | None = None) -> Iterator[str]:
        """Text pieces of the continuation of ``ids`` (a generator: nothing runs until it is iterated).

        ``tokens``: the new token ids to render, if the caller wraps :meth:`tokens` itself (e.g. to count them).
        """
        text = TextStream(self.tokenizer, request.stop)
        tokens = self.tokens(ids, request) if tokens is None else tokens
        try:
            for token in tokens:
                if piece := text.push(token):
                    yield piece
                if text.stopped:
                    return
            if rest := text.flush():
                yield rest
        finally:
            if hasattr(tokens, "close"):  # a stop string ended the text: stop decoding too
                tokens.close()

    def tokens(self, ids: list[int], request: Request) -> Iterator[int]:
        """New token ids after ``ids``, up to an end-of-sequence token (not yielded) or a limit."""
        sampling = request.sampling
        return self.decoder.continuation(ids, request.max_new_tokens, sampling.picker(), self.eos,
                                         prompt_counts=sampling.repetition_penalty is not None)  # fmt: skip

    def engine(self, slots: int = 8, prefill_tokens: int = 256, capacity: int | None = None, **options) -> Engine:
        """A continuous-batching engine over this model's session: ``slots`` generations share each decode step
        (``engine.stream(ids, max_new_tokens, sampling)`` → new token ids; ``pieces(ids, request, tokens)`` → text)."""
        return Engine(self.decoder, self.eos, slots, prefill_tokens, capacity, **options)


class Completion:
    """One generation on an engine, read from an event loop: ``async for piece in completion`` gives its text
    pieces as the engine hands out tokens; afterwards ``tokens`` (new tokens) and ``finish`` ("stop" or "length").
    Leaving the loop early (a stop string, a client gone, a cancelled task) frees its slot at the next step."""

    def __init__(self, generator: Generator, engine: Engine, ids: list[int], request: Request,
                 ignore_eos: bool = False) -> None:  # fmt: skip
        self.generator, self.engine, self.ids, self.request, self.ignore_eos = generator, engine, ids, request, ignore_eos
        self.ticket: Ticket | None = None
        self.tokens = 0
        self.finish = "stop"

    def cancel(self) -> None:
        if self.ticket is not None:
            self.ticket.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        loop, arrived = asyncio.get_running_loop(), asyncio.Queue()
        deliver = functools.partial(loop.call_soon_threadsafe, arrived.put_nowait)
        self.ticket = self.engine.submit(self.ids, self.request.max_new_tokens, self.request.sampling, deliver,
                                         self.ignore_eos)  # fmt: skip
        text = TextStream(self.generator.tokenizer, self.request.stop)
        try:
            while (item := await arrived.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                self.tokens += 1
                if piece := text.push(item):
                    yield piece
                if text.stopped:
                    return
            if rest := text.flush():
                yield rest
            self.finish = "length" if self.ticket.finish == "length" else "stop"
        finally:
            self.ticket.cancel()
