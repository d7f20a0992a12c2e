"""Continuous batching (runtime/continuous.py, runtime/kv_pool.py) on the trained tiny decoders.

The promise: a request decoded among others, joining and leaving at different steps, with its prompt fed in chunks
or resumed from a slot's retained prefix, gets exactly the tokens it gets alone (greedy and seeded sampling). Every
comparison here is with the single-stream decoder (``Generator.tokens``), whose own tests compare it with
transformers, and greedy tokens also with the same graph re-reading prompt + tokens in one plain pass (no cache, so
``make cache-faults`` cannot break both sides alike); the batched step's logits are compared with such a pass too.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from onnxforge import corpus
from onnxforge.runtime import load
from onnxforge.runtime.continuous import Engine
from onnxforge.runtime.generate import Generator, Request
from onnxforge.runtime.kv_pool import KVPool
from tests.decoding import one_pass_greedy

SETTINGS = [
    {"temperature": 0.0},
    {"temperature": 0.8, "seed": 3},
    {"temperature": 1.0, "top_k": 20, "seed": 5},
    {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.2, "seed": 11},
]


def _requests(generator: Generator, count: int) -> list[tuple[list[int], Request]]:
    """``count`` held-out prompts of different lengths, each with its own settings, seed and token budget."""
    texts = corpus.split(corpus.load()).evaluation
    return [(generator.encode(" ".join(texts[i : i + 1 + i % 3])),
             Request.check(6 + (i * 7) % 30, None, **SETTINGS[i % len(SETTINGS)])) for i in range(count)]  # fmt: skip


def _concurrently(engine, requests) -> list[list[int]]:
    """Every request submitted from its own thread at once; the tokens each one got."""
    results: list[list[int] | None] = [None] * len(requests)

    def run(i: int) -> None:
        ids, request = requests[i]
        results[i] = list(engine.stream(ids, request.max_new_tokens, request.sampling))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def _alone_and_batched(generator: Generator, count: int):
    """``count`` requests: each decoded alone, then all at once through an 8-slot engine with 16-token prefill
    chunks; (requests, alone, batched, the closed engine)."""
    requests = _requests(generator, count)
    alone = [list(generator.tokens(ids, request)) for ids, request in requests]
    engine = generator.engine(slots=8, prefill_tokens=16)
    try:
        batched = _concurrently(engine, requests)
    finally:
        engine.close()
    return requests, alone, batched, engine


@pytest.fixture(scope="module")
def quantized_llama(decoder, tmp_path_factory):
    """The tiny Llama's weight-only int4 and int8 variants (MatMulNBits), gated loosely: batching is under test."""
    from onnxforge.quantization import Gate, WeightOnlyConfig, quantize

    _, artifact = decoder("llama")
    out = {}
    for bits in (4, 8):
        out[bits] = tmp_path_factory.mktemp(f"batched-int{bits}") / "tiny-llama" / f"int{bits}"
        quantize(artifact, out[bits], WeightOnlyConfig(bits=bits), Gate({"next_token_agreement": 0.3}))
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "mistral", "qwen3", "gemma2"])
def test_a_request_among_others_gets_the_tokens_it_gets_alone(decoder, family):
    """32 requests (different prompts, lengths, settings, seeds) through 8 slots with 16-token prefill chunks: each
    gets its single-stream tokens. Llama, Qwen2, Mistral (its 16-token window per row), Qwen3 (q/k norms) and Gemma 2
    (local and global layers, soft-capping) have the fused graph and share each decode step; GPT-2 (traced graph)
    decodes one row at a time in the same loop."""
    generator = load(decoder(family)[1], providers="cpu")
    requests, alone, batched, engine = _alone_and_batched(generator, 32)
    assert sum(map(len, alone)) > 300
    assert batched == alone
    greedy = [(ids, tokens) for (ids, request), tokens in zip(requests, batched) if request.sampling.temperature == 0]
    assert all(tokens == one_pass_greedy(generator, ids, tokens) for ids, tokens in greedy)
    widest = max(n for _, n in engine.recent)
    if family == "gpt2":
        assert engine.pool is None
    else:  # the rows really shared steps
        assert engine.pool is not None and widest >= 4


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_graphs_batch_alike(decoder, quantized_llama, bits):
    generator = load(quantized_llama[bits], providers="cpu")
    requests, alone, batched, engine = _alone_and_batched(generator, 16)
    assert batched == alone and engine.pool is not None
    assert batched[0] == one_pass_greedy(generator, requests[0][0], batched[0])


def test_the_batched_step_gives_each_row_its_one_pass_logits(decoder):
    """Rows of different lengths in one step: each row's logits equal the same graph reading that row's tokens in
    one plain pass from an empty cache, and rows never see each other (a row's logits do not depend on its
    neighbours)."""
    generator = load(decoder("llama")[1], providers="cpu")
    d = generator.decoder
    prompts = [ids for ids, _ in _requests(generator, 5)]
    pool = KVPool(d, 5, 128)
    for row, ids in enumerate(prompts):
        d.forward(pool.cache(row), ids)
        pool.held[row] = list(ids)
    tokens = [7, 8, 9, 10, 11]
    stepped = d.step(pool.rows(0, 5), [len(ids) for ids in prompts], tokens)
    for row, (ids, token) in enumerate(zip(prompts, tokens)):
        np.testing.assert_allclose(stepped[row], d.logits(ids + [token])[-1], atol=1e-4)
    # the first row stepped alone, from its own pool: the same logits as among the others
    solo = KVPool(d, 1, 128)
    d.forward(solo.cache(0), prompts[0])
    np.testing.assert_allclose(d.step(solo.rows(0, 1), [len(prompts[0])], tokens[:1])[0], stepped[0], atol=1e-5)


def test_a_prompt_resumed_from_a_retained_prefix_gives_a_fresh_prefills_logits(decoder):
    """A chat's second turn starts with the first turn's prompt and answer: the slot that served the first turn
    still holds them, so only the new tokens are fed; the logits equal a fresh prefill's, and so do the tokens."""
    generator = load(decoder("llama")[1], providers="cpu")
    first, second = (ids for ids, _ in _requests(generator, 2))
    engine = generator.engine(slots=2)
    greedy = Request.check(12, None).sampling
    try:
        answer = list(engine.stream(first, 12, greedy, ignore_eos=True))
        follow_up = first + answer + second
        resumed = list(engine.stream(follow_up, 12, greedy))
        assert engine.reused == len(first) + len(answer) - 1  # the last answer token was never fed
    finally:
        engine.close()
    assert resumed == list(generator.tokens(follow_up, Request.check(12, None)))
    assert answer == one_pass_greedy(generator, first, answer) and resumed == one_pass_greedy(generator, follow_up, resumed)
    # the mechanism itself: a row holding a prefix, resumed, against a fresh pass over the whole prompt
    d = generator.decoder
    pool = KVPool(d, 2, 256)
    d.forward(pool.cache(1), first + answer)
    pool.held[1] = first + answer
    row, common = pool.best_prefix(range(2), follow_up)
    assert (row, common) == (1, len(first) + len(answer))
    logits = d.forward(pool.cache(1), follow_up[common:], all_logits=True)
    np.testing.assert_allclose(logits, d.logits(follow_up)[common:], atol=1e-4)


def test_a_cancelled_generation_frees_its_slot(decoder):
    """One slot: a long generation closed after 2 tokens leaves, and the request waiting behind it runs."""
    generator = load(decoder("llama")[1], providers="cpu")
    (ids, _), (other, _) = _requests(generator, 2)
    engine = generator.engine(slots=1)
    greedy = Request.check(1, None).sampling
    try:
        long = engine.stream(ids, 200, greedy, ignore_eos=True)
        first_two = [next(long), next(long)]
        behind = engine.stream(other, 8, greedy)
        _until(lambda: len(engine.waiting) == 1)
        long.close()
        after = list(behind)
        _until(lambda: not engine.rows)
    finally:
        engine.close()
    assert after == list(generator.tokens(other, Request.check(8, None))) == one_pass_greedy(generator, other, after)
    assert first_two == one_pass_greedy(generator, ids, first_two)
    assert engine.generated < 200


def test_ignore_eos_decodes_the_whole_budget_and_slots_bound_memory(decoder):
    generator = load(decoder("llama")[1], providers="cpu")
    ids = _requests(generator, 1)[0][0]
    greedy = Request.check(1, None).sampling
    plain = list(generator.tokens(ids, Request.check(40, None)))
    # the tiny model never ends a text on its own: a token it produces, first at k, stands in for end-of-sequence
    k = next(k for k in range(3, 40) if plain[k] not in plain[:k])
    engine = Engine(generator.decoder, frozenset(plain[k : k + 1]), slots=3, capacity=128)
    try:
        assert list(engine.stream(ids, 40, greedy)) == plain[:k]
        through = list(engine.stream(ids, 40, greedy, ignore_eos=True))
        assert through == plain == one_pass_greedy(generator, ids, through)
        assert len(list(engine.stream(ids, 500, greedy, ignore_eos=True))) == 128 - len(ids)  # the slot's capacity
        with pytest.raises(ValueError, match="a generation slot holds 128"):
            engine.stream(list(range(3, 131)), 1, greedy)
        with pytest.raises(ValueError, match="prompt is empty"):
            engine.stream([], 1, greedy)
    finally:
        engine.close()
    d = generator.decoder
    assert d.kv_bytes_per_token == len(d.past) * d.kv_shape[1] * d.kv_shape[3] * 4
    assert engine.kv_bytes == 3 * 128 * d.kv_bytes_per_token
    with pytest.raises(ValueError, match="slots must be a positive integer"):
        generator.engine(slots=0)


def _until(condition, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.005)
