"""The graphs of a text2text artifact: the encoder, run once per batch, and the decoder (the merged graph, and a
step graph where there is one), run once per target token with its caches handed on.

The decoder graph (Optimum's merged decoder) takes ``past_key_values.{i}.decoder.*`` (self-attention, growing one
position per step) and ``past_key_values.{i}.encoder.*`` (cross-attention over the source). On the first step
(``use_cache_branch`` false) it computes the cross-attention keys and values from the encoder's states; every later
step takes them back unchanged, so they are computed once per input, not once per step. Where the artifact has a
step graph (onnxforge's own decoder graphs, ``export.seq2seq_graph``), later steps run it instead: the same layers
reading the cross-attention caches directly, without the merged graph's ``If``, which copies them. Rows of a batch are
independent sequences (beams flattened into the batch); :meth:`Caches.select` keeps them (finished rows dropped,
beams made) and :meth:`Caches.reorder` moves beams among the rows of their source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from .beam_search import log_softmax
from .text import length_sorted_batches

PAST = "past_key_values."
PRESENT = "present."
BRANCH = "use_cache_branch"
LOG_PROBS = "log_probs"  # a step graph's log-softmax of its logits, for beam search
SOURCES = "sources"  # a step graph's batch dimension of cross caches that beams share (one row per source)
ENCODER_PADDING = 0.25  # the padding the encoder runs a group of sources with, at most (as embeddings are batched)
PACKS_PADDING = "onnxforge.packs_padding"  # an encoder's metadata: its layers skip padded positions (one run a batch)


@dataclass
class Caches:
    """A batch's decoder state: self-attention and cross-attention keys/values and the encoder's padding mask."""

    own: dict[str, np.ndarray]
    cross: dict[str, np.ndarray]
    source_mask: np.ndarray
    spare: dict[str, np.ndarray] = field(default_factory=dict)  # memory :meth:`reorder` writes to, step after step

    def reorder(self, rows: np.ndarray) -> None:
        """The self-attention caches of ``rows``, in place (beams among the rows of their source). Written into
        memory kept from step to step: fresh arrays each step cost a page fault per 4 kB, a fifth of a beam search
        at 16 sources x 4 beams. ``mode="clip"`` (``rows`` are in range, they come from the beams) spares
        numpy's buffered copy, which ``out=`` takes under the default ``mode="raise"``: 3x slower."""
        for name, value in self.own.items():
            size = len(rows) * value[0].size
            if name not in self.spare or self.spare[name].size < size:
                self.spare[name] = np.empty(2 * size, dtype=value.dtype)  # room for the next steps' longer caches
            out = self.spare[name][:size].reshape((len(rows), *value.shape[1:]))
            self.own[name] = np.take(value, rows, axis=0, out=out, mode="clip")

    def select(self, rows: np.ndarray, cross: bool = True) -> Caches:
        """New caches of ``rows`` (in that order, repeats allowed): each source's beams, or finished rows dropped.
        ``cross=False``: the cross-attention caches and source mask stay as they are (one row per source, a step
        graph that reads them so). (Beams moving among the rows of their source: :meth:`reorder`.)"""
        own = {name: value[rows] for name, value in self.own.items()}
        if not cross:
            return Caches(own, self.cross, self.source_mask)
        return Caches(own, {name: value[rows] for name, value in self.cross.items()}, self.source_mask[rows])


class Seq2Seq:
    """Batched encode, first decoder step and later steps over the sessions; thread-safe (no state kept)."""

    def __init__(self, encoder: ort.InferenceSession, decoder: ort.InferenceSession,
                 step: ort.InferenceSession | None = None) -> None:  # fmt: skip
        inputs = {i.name: i for i in decoder.get_inputs()}
        past = [name for name in inputs if name.startswith(PAST)]
        needed = {"input_ids", "encoder_hidden_states", "encoder_attention_mask", BRANCH}
        if not past or not needed <= set(inputs):
            raise ValueError(f"not a merged encoder-decoder graph with caches: inputs are {sorted(inputs)}")
        self.encoder = encoder
        self.packs_padding = PACKS_PADDING in encoder.get_modelmeta().custom_metadata_map
        self.decoder = decoder
        self.stepper = step
        self.graph_log_probs = step is not None and LOG_PROBS in {o.name for o in step.get_outputs()}
        # beams read their source's cross caches in place, not copies of them
        self.per_source = step is not None and next(
            i.shape[0] == SOURCES for i in step.get_inputs() if i.name == "encoder_attention_mask"
        )
        if step is not None and (missing := {i.name for i in step.get_inputs()} - set(inputs)):
            raise ValueError(f"the step graph takes inputs the merged decoder lacks: {sorted(missing)}")
        self.own = [name for name in past if ".decoder." in name]
        self.cross = [name for name in past if ".encoder." in name]
        if len(self.own) != len(self.cross):
            raise ValueError(f"the graph has {len(self.own)} self-attention caches but {len(self.cross)} cross-attention ones")
        # what each step fetches: the logits, then the caches it hands on (the first step makes the cross ones too)
        self.first_outputs = ["logits"] + [PRESENT + n[len(PAST) :] for n in self.own + self.cross]
        self.step_outputs = self.first_outputs[: 1 + len(self.own)]
        first = inputs[past[0]]
        self.heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.kv_dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        hidden = inputs["encoder_hidden_states"]
        self.hidden_dtype = np.float16 if hidden.type == "tensor(float16)" else np.float32
        # later steps read the cross-attention caches, not the encoder's states: a one-position stand-in is fed
        self.width = int(hidden.shape[2])

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The encoder's last hidden states for right-padded ``ids`` (batch, source); zeros at padded positions.

        A decoding batch keeps sources of any length together (each decoder step reads every weight once for all of
        them). An encoder that packs its padding (onnxforge's own) runs the batch whole; any other pays for every
        padded position in every layer, so it runs groups of similar length, each cut to its own longest source. A
        source's states do not depend on the padding after it."""
        lengths = mask.sum(axis=1)
        # no groups (a packing encoder) or one: the whole batch in one run
        groups = [] if self.packs_padding else list(length_sorted_batches(lengths, len(ids), ENCODER_PADDING))
        if len(groups) <= 1:
            return self.encoder.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask})[0]
        hidden = None
        for rows in groups:
            width = int(lengths[rows].max())
            (states,) = self.encoder.run(["last_hidden_state"], {"input_ids": ids[rows, :width], "attention_mask": mask[rows, :width]})
            if hidden is None:
                hidden = np.zeros((*ids.shape, states.shape[-1]), dtype=states.dtype)
            hidden[rows, :width] = states
        return hidden

    def start(self, hidden: np.ndarray, mask: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, Caches]:
        """The first decoder step: logits (rows, vocab) after ``tokens`` (rows, n), and the caches it made."""
        rows = len(tokens)
        empty = np.zeros((rows, self.heads, 0, self.head_dim), dtype=self.kv_dtype)
        feeds = {"input_ids": tokens, "encoder_hidden_states": hidden.astype(self.hidden_dtype, copy=False),
                 "encoder_attention_mask": mask, BRANCH: np.array([False])}  # fmt: skip
        feeds |= {name: empty for name in self.own + self.cross}
        logits, *present = self.decoder.run(self.first_outputs, feeds)
        own = dict(zip(self.own, present[: len(self.own)]))
        return logits[:, -1], Caches(own, dict(zip(self.cross, present[len(self.own) :])), mask)

    def beams(self, caches: Caches, beams: int) -> Caches:
        """Caches for ``beams`` rows per source, next to each other, from one row per source."""
        return caches.select(np.repeat(np.arange(len(caches.source_mask)), beams), cross=not self.per_source)

    def keep_sources(self, caches: Caches, kept: np.ndarray, beams: int) -> None:
        """The cross-attention caches and source mask of the sources ``kept`` only (beam search's done inputs leave);
        their self-attention caches follow the rows :meth:`step` reorders to."""
        rows = kept if self.per_source else (kept[:, None] * beams + np.arange(beams)).reshape(-1)
        caches.cross = {name: value[rows] for name, value in caches.cross.items()}
        caches.source_mask = caches.source_mask[rows]

    def step(self, caches: Caches, tokens: np.ndarray, log_probs: bool = False, reorder: np.ndarray | None = None) -> np.ndarray:
        """One more token per row (``tokens``: (rows,)): logits (rows, vocab), or their log-softmax (beam search:
        the step graph's own, multi-threaded, where it has one); ``caches`` grow in place. ``reorder``: the
        self-attention cache row each row continues (beam search's, among the rows of one source)."""
        rows = len(tokens)
        if reorder is not None:
            caches.reorder(reorder)
        feeds = {"input_ids": tokens.reshape(rows, 1).astype(np.int64, copy=False),
                 "encoder_attention_mask": caches.source_mask, **caches.own, **caches.cross}  # fmt: skip
        if self.stepper is not None:
            in_graph = log_probs and self.graph_log_probs
            scores, *present = self.stepper.run([LOG_PROBS if in_graph else "logits", *self.step_outputs[1:]], feeds)
        else:
            in_graph = False
            feeds |= {"encoder_hidden_states": np.zeros((rows, 1, self.width), dtype=self.hidden_dtype),
                      BRANCH: np.array([True])}  # fmt: skip
            scores, *present = self.decoder.run(self.step_outputs, feeds)
        caches.own = dict(zip(self.own, present))
        return scores[:, -1] if in_graph or not log_probs else log_softmax(scores[:, -1])
