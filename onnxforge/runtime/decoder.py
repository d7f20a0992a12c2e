"""The decode loop over a ``generate`` graph: prefill, then one token per step with the KV cache handed on.

The graph takes ``past_key_values.{i}.key/value`` and returns ``present.{i}.key/value``. With onnxforge's fused
graph (GroupQueryAttention) the cache is preallocated once per generation at its final length and bound as both
past and present: each step writes its new keys and values in place, nothing is copied or concatenated. With a
traced graph (which concatenates inside) the present tensors stay onnxruntime values (on the GPU under CUDA)
bound straight back as the next step's past. Only the last position's logits come back to the host (and, with the
fused graph's ``logits_to_keep``, only they are computed).

``step`` runs one decode step for many sequences at once over rows of such preallocated caches, each row with its
own length (GroupQueryAttention reads per-row lengths): the continuous-batching engine (``continuous.py``) builds on
it, and :class:`Continuation` is the token-choosing side that both it and :meth:`Decoder.continuation` share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

Picker = Callable[[np.ndarray, Sequence[int]], int]  # (last logits, ids so far) → next token
PAST = "past_key_values."
PRESENT = "present."
# an input of onnxforge's fused graph with a default of 0 (every position): as transformers' argument of that name,
# the logits of only the last n positions; a prefill feeds 1
LOGITS_TO_KEEP = "logits_to_keep"


@dataclass
class Cache:
    """One sequence's state: the tokens seen so far and the graph's present key/values for them."""

    length: int = 0
    capacity: int = 0  # tokens the preallocated buffers hold; 0: the graph returns a grown cache each step
    values: dict[str, ort.OrtValue] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)  # kept where the decoder may recompute the cache (refill_after)


class Decoder:
    """Batch-1 prefill and decode steps over one session; thread-safe as long as each thread has its own Cache."""

    def __init__(self, session: ort.InferenceSession, context: int, in_place: bool = False,
                 refill_after: int | None = None) -> None:  # fmt: skip
        """``in_place``: the graph updates a preallocated cache bound as both past and present (GroupQueryAttention
        with a shared buffer, as onnxforge's fused graph does). ``refill_after``: LongRoPE's switch length; the call
        that takes a sequence past it recomputes the cache from all its tokens, as transformers' Phi-3 does."""
        self.session = session
        self.context = context
        self.in_place = in_place
        self.refill_after = refill_after
        inputs = {i.name: i for i in session.get_inputs()}
        self.past = [name for name in inputs if name.startswith(PAST)]
        if "input_ids" not in inputs or not self.past:
            raise ValueError(f"not a generate graph with a KV cache: inputs are {sorted(inputs)}")
        self.present = {name: PRESENT + name[len(PAST) :] for name in self.past}
        missing = sorted(set(self.present.values()) - {o.name for o in session.get_outputs()})
        if missing:
            raise ValueError(f"the graph lacks the present outputs {missing} matching its past inputs")
        self.uses_mask = "attention_mask" in inputs
        self.uses_positions = "position_ids" in inputs
        first = inputs[self.past[0]]
        self.kv_shape = (1, int(first.shape[1]), 0, int(first.shape[3]))
        self.kv_dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        self.device = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.mask = np.ones((1, context), dtype=np.int64)
        keeps = LOGITS_TO_KEEP in {i.name for i in session.get_overridable_initializers()}
        self.last_only = ort.OrtValue.ortvalue_from_numpy(np.array([1], dtype=np.int64)) if keeps else None

    @property
    def kv_bytes_per_token(self) -> int:
        """Keys and values of one token, all layers."""
        return len(self.past) * self.kv_shape[1] * self.kv_shape[3] * np.dtype(self.kv_dtype).itemsize

    def empty(self, capacity: int) -> Cache:
        """A cache for up to ``capacity`` tokens (preallocated where the graph updates it in place)."""
        size = min(capacity, self.context) if self.in_place else 0
        shape = (*self.kv_shape[:2], size, self.kv_shape[3])
        values = {
            name: ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype, self.device, 0) for name in self.past
        }  # fmt: skip
        return Cache(0, size, values)

    def forward(self, cache: Cache, ids: list[int], all_logits: bool = False) -> np.ndarray:
        """Feed ``ids`` after the cache's tokens; returns the last position's logits (or every position's)."""
        start, end = cache.length, cache.length + len(ids)
        if end > (cache.capacity or self.context):
            raise ValueError(f"{end} tokens exceed the cache's {cache.capacity or self.context}")
        if self.refill_after is not None:
            if 0 < start <= self.refill_after < end:  # keys rotated with the short factors: start again from all
                earlier = cache.ids
                cache.length, cache.values, cache.ids = 0, self.empty(cache.capacity or self.context).values, []
                logits = self.forward(cache, earlier + list(ids), all_logits)
                return logits[-len(ids) :] if all_logits else logits
            cache.ids.extend(ids)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        if self.uses_mask:
            binding.bind_cpu_input("attention_mask", self.mask[:, :end])
        if self.uses_positions:
            binding.bind_cpu_input("position_ids", np.arange(start, end, dtype=np.int64)[None])
        for name, value in cache.values.items():
            binding.bind_ortvalue_input(name, value)
        if self.last_only is not None and not all_logits:
            binding.bind_ortvalue_input(LOGITS_TO_KEEP, self.last_only)  # bind_cpu_input refuses a defaulted input
        binding.bind_output("logits", "cpu")
        for name in self.past:
            if cache.capacity:
                binding.bind_ortvalue_output(self.present[name], cache.values[name])
            else:
                binding.bind_output(self.present[name], self.device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if not cache.capacity:
            cache.values = {name: outputs[1 + k] for k, name in enumerate(self.past)}
        cache.length = end
        logits = outputs[0].numpy()[0]
        return logits if all_logits else logits[-1]

    def step(self, rows: dict[str, np.ndarray], lengths: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """One decode step for a batch of in-place cache rows: row b holds ``lengths[b]`` tokens and is fed
        ``tokens[b]``, written at position ``lengths[b]``. ``rows``: past name → (batch, heads, capacity, head dim)
        array, updated in place. Returns each row's next-token logits, (batch, vocab)."""
        if not self.in_place:
            raise ValueError("a batched step needs a graph that updates its cache in place (onnxforge's fused graph)")
        counts = np.asarray(lengths, dtype=np.int64) + 1
        capacity = next(iter(rows.values())).shape[2]
        if counts.max() > capacity:
            raise ValueError(f"{int(counts.max())} tokens exceed the cache's {capacity}")
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray(tokens, dtype=np.int64)[:, None])
        # per-row lengths reach GroupQueryAttention as the row sums of a right-padded mask
        binding.bind_cpu_input("attention_mask", (np.arange(counts.max())[None] < counts[:, None]).astype(np.int64))
        binding.bind_output("logits", "cpu")
        for name in self.past:
            if not rows[name].flags.c_contiguous:  # a copy would take the step's keys and values away with it
                raise ValueError(f"cache rows of {name} must be one contiguous block")
            value = ort.OrtValue.ortvalue_from_numpy(rows[name])  # shares the array's memory
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(self.present[name], value)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()[:, -1]

    def feeds(self, ids: list[int]) -> dict[str, np.ndarray]:
        """Inputs of a teacher-forced pass over ``ids`` from an empty cache, as numpy arrays for a plain
        ``session.run`` (calibration runs the graph, and graphs derived from it, this way)."""
        capacity = len(ids) if self.in_place else 0
        feeds = {"input_ids": np.asarray([ids], dtype=np.int64)}
        if self.uses_mask:
            feeds["attention_mask"] = np.ones((1, len(ids)), dtype=np.int64)
        if self.uses_positions:
            feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        shape = (*self.kv_shape[:2], capacity, self.kv_shape[3])
        return feeds | {name: np.zeros(shape, dtype=self.kv_dtype) for name in self.past}

    def logits(self, ids: list[int]) -> np.ndarray:
        """Teacher-forced logits of every position of ``ids`` from an empty cache: (len(ids), vocab)."""
        return self.forward(self.empty(len(ids)), ids, all_logits=True)

    def continuation(self, ids: list[int], budget: int, pick: Picker, eos: frozenset[int],
                     prompt_counts: bool = False) -> Iterator[int]:  # fmt: skip
        """Up to ``budget`` new tokens after ``ids``, stopping before an end-of-sequence token.

        ``pick`` sees the generated tokens, or the prompt and them when ``prompt_counts`` (repetition penalty).
        """
        state = Continuation(ids, min(budget, self.context - len(ids)), pick, eos, prompt_counts)
        if state.done:
            return
        cache = self.empty(len(ids) + state.budget)
        logits = self.forward(cache, ids)
        while (token := state.take(logits)) is not None:
            yield token
            if state.done:
                return
            logits = self.forward(cache, [token])


@dataclass
class Continuation:
    """The choosing side of one generation: picks each next token from its logits and says when it ends."""

    ids: list[int]  # the prompt
    budget: int  # new tokens allowed (already capped by the context)
    pick: Picker
    eos: frozenset[int]
    prompt_counts: bool = False  # the picker sees the prompt too (repetition penalty)
    generated: list[int] = field(default_factory=list)
    done: bool = False

    def __post_init__(self) -> None:
        self.done = self.budget <= 0

    def take(self, logits: np.ndarray) -> int | None:
        """The next token, or None at an end-of-sequence token; ``done`` turns True once nothing more may follow."""
        token = self.pick(logits, self.ids + self.generated if self.prompt_counts else self.generated)
        if token in self.eos:
            self.done = True
            return None
        self.generated.append(token)
        self.done = len(self.generated) >= self.budget
        return token


def greedy(logits: np.ndarray, previous: Sequence[int]) -> int:
    return int(logits.argmax())
