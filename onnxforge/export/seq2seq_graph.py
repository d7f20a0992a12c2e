"""Encoder and decoder graphs built from the weights for BART-style encoder-decoders (``fused_graph`` seq2seq rows
of ``export.families``: Marian, BART, mBART): ~12 nodes a layer instead of Optimum's ~150, and no trace.

- ``encoder_model.onnx``: per layer a packed QKV MatMul → MultiHeadAttention (padding masked) → output MatMul →
  Add + LayerNormalization (the CPU's SkipLayerNormalization is slower over a batch's every position) → the MLP,
  every node but attention over the batch's real positions only (:class:`_Packing`).

The two decoders share every weight (by name, so quantization treats them alike and one file can hold them):

- ``decoder_model_merged.onnx``, Optimum's merged-decoder interface (``use_cache_branch``; Optimum's
  ORTModelForSeq2SeqLM loads it). An ``If`` computes the cross-attention keys and values from
  ``encoder_hidden_states`` on the first step and hands the given ones on at later steps, which copies them once
  per step: the runtime runs this graph for the first step only.
- ``decoder_step.onnx``, the later steps: the same layers reading the cross-attention caches directly (no ``If``, no
  ``encoder_hidden_states``), outputs the logits and the grown self-attention caches. Its cross caches and source
  mask have one row per source (``sources``); the rows are each source's beams, next to each other, and read them
  as one row of queries.

Each layer: packed QKV MatMul → MultiHeadAttention over the self-attention cache (causal among new tokens) → output
MatMul → SkipLayerNormalization → query MatMul → MultiHeadAttention over the cross caches (source padding masked) →
output MatMul → SkipLayerNormalization → fc1 → activation (bias fused) → fc2 → SkipLayerNormalization. Post-norm
(Marian, BART) and pre-norm (mBART: a norm before each block and one after the last) come from which norms the
weights hold; positions are sinusoidal (Marian) or learned with BART's offset, both gathered from the model's table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..runtime.seq2seq import PACKS_PADDING
from .families import FAMILIES
from .graph import MS, Builder, save
from .optimize import split_skip_norms

STEP = "decoder_step.onnx"
LOG_PROBS = "log_probs"  # the step graph's log-softmax of its logits (runtime.seq2seq reads it for beam search)
SOURCES = "sources"  # the step graph's batch dimension of the cross caches and source mask (beams share them)
EPSILON = 1e-5  # BART-family LayerNorms (torch's default)
# the MLP's activation → how its bias and it are applied: (op, domain), fused with the bias where onnxruntime has it
ACTIVATIONS = {"gelu": ("BiasGelu", MS), "gelu_new": ("FastGelu", MS), "relu": ("Relu", ""), "swish": ("Sigmoid", ""),
               "silu": ("Sigmoid", "")}  # fmt: skip
CACHE_KINDS = ("decoder", "encoder")  # self-attention, cross-attention


def supported(config: dict) -> bool:
    """Families this builder covers (``fused_graph`` seq2seq rows), with an activation it implements."""
    row = FAMILIES.get(config.get("model_type", ""))
    if row is None or row.kind != "seq2seq" or not row.fused_graph:
        return False
    return config.get("activation_function", "gelu") in ACTIVATIONS


def _cache(i: int, kind: str, tensor: str, prefix: str = "past_key_values") -> str:
    return f"{prefix}.{i}.{kind}.{tensor}"


class _Stack:
    """One side's layers (``side``: "encoder" or "decoder") over a :class:`Builder`."""

    def __init__(self, state: dict[str, np.ndarray], config: dict, side: str) -> None:
        self.state, self.config, self.side = state, config, side
        self.width, self.heads = int(config["d_model"]), int(config[f"{side}_attention_heads"])
        self.layers = int(config[f"{side}_layers"])
        self.pre_norm = f"model.{side}.layer_norm.weight" in state  # mBART: norms before blocks, one after the last
        self.blocks = ("self_attn", "encoder_attn") if side == "decoder" else ("self_attn",)  # attention blocks

    def norm_names(self) -> list[str]:
        """Every LayerNorm in the order the residual stream meets them."""
        per_layer = [f"{block}_layer_norm" for block in self.blocks] + ["final_layer_norm"]
        names = [f"model.{self.side}.layers.{i}.{n}" for i in range(self.layers) for n in per_layer]
        return names + [f"model.{self.side}.layer_norm"] if self.pre_norm else names

    def encode(self, g: Builder) -> None:
        """The encoder: ``last_hidden_state`` of ``input_ids`` and ``attention_mask`` (zeros at padded positions).
        Every layer but attention runs over the real positions only (:class:`_Packing`)."""
        (mask,) = g.op("Cast", ["attention_mask"], 1, "/padding_mask/Cast", to=TensorProto.INT32)
        real = _packing(g, "attention_mask", self.width, "/packing")

        def attend(i: int, normed: str, n: str) -> str:
            q, k, v, bias = self._qkv(g, i, normed, n, real.slots)
            (out,) = g.op("MultiHeadAttention", [q, k, v, bias, mask], 1, f"{n}/MultiHeadAttention", domain=MS,
                          num_heads=self.heads)  # fmt: skip
            return real.gather(g, out, f"{n}/packed")

        out = self._layers(g, real.gather(g, self._embed(g, past=None), "/packing/embeddings"), {"self_attn": attend})
        (padded,) = g.op("Gather", [out, real.slots], 1, "/last_hidden_state/padded")
        (kept,) = g.op("Cast", ["attention_mask"], 1, "/last_hidden_state/real", to=TensorProto.FLOAT)
        (kept,) = g.op("Unsqueeze", [kept, g.weight("last_axis", np.array([-1], np.int64))], 1, "/last_hidden_state/axis")
        g.op("Mul", [padded, kept], ["last_hidden_state"], "/last_hidden_state")

    def decode(self, g: Builder, cross, per_source: bool = False) -> None:
        """The decoder, logits last; cross-attention keys and values read from ``cross(i, tensor)``. ``per_source``:
        the cross caches and source mask hold one row per source and the rows are its beams, next to each other;
        each source's beams attend to its caches as queries of one row."""
        s = self.state
        x = self._embed(g, past=_cache(0, "decoder", "key"))
        if per_source:
            (sources,) = g.op("Shape", [cross(0, "key")], 1, "/beams/sources", start=0, end=1)
            (by_source,) = g.op("Concat", [sources, g.weight("beams_shape", np.array([-1, self.width], np.int64))], 1,
                                "/beams/by_source", axis=0)  # fmt: skip
            (by_row,) = g.op("Shape", [x], 1, "/beams/by_row")
        (mask,) = g.op("Cast", ["encoder_attention_mask"], 1, "/source_mask/Cast", to=TensorProto.INT32)

        def attend(i: int, normed: str, n: str) -> str:  # causal among the new tokens, after the cached ones
            q, k, v, bias = self._qkv(g, i, normed, n)
            return g.op("MultiHeadAttention", [q, k, v, bias, "", "", _cache(i, "decoder", "key"), _cache(i, "decoder", "value")],
                        [f"{n}/out", _cache(i, "decoder", "key", "present"), _cache(i, "decoder", "value", "present")],
                        f"{n}/MultiHeadAttention", domain=MS, num_heads=self.heads, unidirectional=1)[0]  # fmt: skip

        def attend_source(i: int, normed: str, n: str) -> str:
            attn = f"model.decoder.layers.{i}.encoder_attn"
            (q,) = g.op("MatMul", [normed, self._t(g, f"{attn}.q_proj.weight")], 1, f"{n}/q_proj/MatMul")
            (q,) = g.op("Add", [q, self._w(g, f"{attn}.q_proj.bias")], 1, f"{n}/q_proj/Add")
            if per_source:
                (q,) = g.op("Reshape", [q, by_source], 1, f"{n}/by_source")
            (out,) = g.op("MultiHeadAttention", [q, cross(i, "key"), cross(i, "value"), "", mask], 1,
                          f"{n}/MultiHeadAttention", domain=MS, num_heads=self.heads)  # fmt: skip
            return g.op("Reshape", [out, by_row], 1, f"{n}/by_row")[0] if per_source else out

        normed = self._layers(g, x, {"self_attn": attend, "encoder_attn": attend_source})
        head = s.get("lm_head.weight", s["model.decoder.embed_tokens.weight"])
        bias = s["final_logits_bias"].reshape(-1)
        unbiased = not bias.any()  # Marian's and BART's are zeros: a pass over every row's logits spared
        (logits,) = g.op("MatMul", [normed, g.weight("lm_head.weight", head.T)], ["logits"] if unbiased else 1,
                         "/lm_head/MatMul")  # fmt: skip
        if not unbiased:
            g.op("Add", [logits, g.weight("final_logits_bias", bias)], ["logits"], "/lm_head/Add")

    def _layers(self, g: Builder, x: str, attentions: dict) -> str:
        """Each layer's attention blocks (``attentions``: block → (layer, normed input, node prefix) → heads' output),
        each with its output projection and norm, then the MLP; the stream's last normed value."""
        norms = self.norm_names()
        normed = self._layer_norm(g, x, norms[0]) if self.pre_norm else x
        residual, k = x, 0

        def add_norm(out: str, bias: str) -> None:  # residual + out + bias, then the next norm
            nonlocal normed, residual, k
            norm = norms[k + 1] if self.pre_norm else norms[k]
            outputs = g.op("SkipLayerNormalization", [out, residual, self._w(g, f"{norm}.weight"), self._w(g, f"{norm}.bias"),
                                                      self._w(g, bias)], 4, f"/{norm}", domain=MS, epsilon=EPSILON)  # fmt: skip
            normed, residual = (outputs[0], outputs[3]) if self.pre_norm else (outputs[0], outputs[0])
            k += 1

        for i in range(self.layers):
            p, n = f"model.{self.side}.layers.{i}", f"/model/{self.side}/layers.{i}"
            for block in self.blocks:
                out = attentions[block](i, normed, f"{n}/{block}")
                (o,) = g.op("MatMul", [out, self._t(g, f"{p}.{block}.out_proj.weight")], 1, f"{n}/{block}/out_proj/MatMul")
                add_norm(o, f"{p}.{block}.out_proj.bias")
            (h,) = g.op("MatMul", [normed, self._t(g, f"{p}.fc1.weight")], 1, f"{n}/fc1/MatMul")
            h = self._activation(g, h, f"{p}.fc1.bias", f"{n}/activation")
            (h,) = g.op("MatMul", [h, self._t(g, f"{p}.fc2.weight")], 1, f"{n}/fc2/MatMul")
            add_norm(h, f"{p}.fc2.bias")
        return normed

    def _qkv(self, g: Builder, i: int, normed: str, n: str, slots: str | None = None) -> tuple[str, str, str, str]:
        """Self-attention's query, key and value from one packed MatMul, and their packed bias (MultiHeadAttention's);
        ``slots``: ``normed`` holds the real positions only, spread back over the padded batch (:class:`_Packing`)."""
        attn = f"model.{self.side}.layers.{i}.self_attn"
        w = np.concatenate([self.state[f"{attn}.{t}_proj.weight"] for t in "qkv"]).T
        b = np.concatenate([self.state[f"{attn}.{t}_proj.bias"] for t in "qkv"])
        (qkv,) = g.op("MatMul", [normed, g.weight(f"{attn}.qkv.weight", w)], 1, f"{n}/qkv_proj/MatMul")
        if slots is not None:
            (qkv,) = g.op("Gather", [qkv, slots], 1, f"{n}/padded")
        q, k, v = g.op("Split", [qkv], 3, f"{n}/Split", axis=-1, num_outputs=3)
        return q, k, v, g.weight(f"{attn}.qkv.bias", b)

    def cross_projections(self, g: Builder, hidden: str, mask: str, suffix: str) -> list[str]:
        """Each layer's cross-attention keys and values of ``hidden`` (batch, source, width), as (batch, heads,
        source, head size): the names ``present.{i}.encoder.{key,value}`` + ``suffix``. Projected at the source's
        real positions only (``mask``, :class:`_Packing`)."""
        made, head = [], self.width // self.heads
        shape = g.weight("cross_heads_shape", np.array([0, 0, 2 * self.heads, head]))
        real = _packing(g, mask, self.width, "/source_packing")
        hidden = real.gather(g, hidden, "/source_packing/states")
        for i in range(self.layers):
            attn, n = f"model.decoder.layers.{i}.encoder_attn", f"/model/decoder/layers.{i}/encoder_attn"
            w = np.concatenate([self.state[f"{attn}.k_proj.weight"], self.state[f"{attn}.v_proj.weight"]]).T
            b = np.concatenate([self.state[f"{attn}.k_proj.bias"], self.state[f"{attn}.v_proj.bias"]])
            (kv,) = g.op("MatMul", [hidden, g.weight(f"{attn}.kv.weight", w)], 1, f"{n}/kv_proj/MatMul")
            (kv,) = g.op("Add", [kv, g.weight(f"{attn}.kv.bias", b)], 1, f"{n}/kv_proj/Add")
            (kv,) = g.op("Gather", [kv, real.slots], 1, f"{n}/kv/padded")
            (kv,) = g.op("Reshape", [kv, shape], 1, f"{n}/kv/Reshape")
            (kv,) = g.op("Transpose", [kv], 1, f"{n}/kv/Transpose", perm=[0, 2, 1, 3])
            names = [_cache(i, "encoder", t, "present") + suffix for t in ("key", "value")]
            made += g.op("Split", [kv], names, f"{n}/kv/Split", axis=1, num_outputs=2)
        return made

    def _embed(self, g: Builder, past: str | None) -> str:
        """Token embeddings (scaled where the config says) plus positions from the length of cache ``past`` on (0
        without one), normed (BART)."""
        s, c, side, node = self.state, self.config, f"model.{self.side}", f"/model/{self.side}"
        (x,) = g.op("Gather", [g.weight(f"{side}.embed_tokens.weight", s[f"{side}.embed_tokens.weight"]),
                               "input_ids"], 1, f"{node}/embed_tokens/Gather")  # fmt: skip
        if c.get("scale_embedding"):
            scale = g.weight("embed_scale", np.array(np.sqrt(self.width), np.float32))
            (x,) = g.op("Mul", [x, scale], 1, f"{node}/embed_scale/Mul")
        table = s[f"{side}.embed_positions.weight"]
        offset = len(table) - int(c["max_position_embeddings"])  # BART's learned table starts 2 rows in
        # positions past .. past + new - 1, counted up from ones (a Range here trips onnxruntime's GatherToSlice)
        (new,) = g.op("Shape", ["input_ids"], 1, "/positions/new", start=1, end=2)
        one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
        (ones,) = g.op("ConstantOfShape", [new], 1, "/positions/ones", value=one)
        (count,) = g.op("CumSum", [ones, g.weight("positions_axis", np.array(0, np.int64))], 1, "/positions/count")
        start = g.weight("positions_offset", np.array([offset - 1], np.int64))
        if past is not None:
            (length,) = g.op("Shape", [past], 1, "/positions/past", start=2, end=3)
            (start,) = g.op("Add", [length, start], 1, "/positions/start")
        (ids,) = g.op("Add", [count, start], 1, "/positions/ids")
        (pos,) = g.op("Gather", [g.weight(f"{side}.embed_positions.weight", table), ids], 1,
                      f"{node}/embed_positions/Gather")  # fmt: skip
        (x,) = g.op("Add", [x, pos], 1, f"{node}/embed_positions/Add")
        if f"{side}.layernorm_embedding.weight" in s:
            x = self._layer_norm(g, x, f"{side}.layernorm_embedding")
        return x

    def _layer_norm(self, g: Builder, x: str, name: str) -> str:
        (out,) = g.op("LayerNormalization", [x, self._w(g, f"{name}.weight"), self._w(g, f"{name}.bias")], 1, f"/{name}",
                      axis=-1, epsilon=EPSILON)  # fmt: skip
        return out

    def _activation(self, g: Builder, h: str, bias: str, name: str) -> str:
        op, domain = ACTIVATIONS[self.config.get("activation_function", "gelu")]
        if domain:  # BiasGelu, FastGelu: the bias inside
            (out,) = g.op(op, [h, self._w(g, bias)], 1, f"{name}/{op}", domain=domain)
            return out
        (h,) = g.op("Add", [h, self._w(g, bias)], 1, f"{name}/Add")
        (out,) = g.op(op, [h], 1, f"{name}/{op}")
        if op == "Sigmoid":  # swish/SiLU = h × sigmoid(h)
            (out,) = g.op("Mul", [h, out], 1, f"{name}/Mul")
        return out

    def _w(self, g: Builder, name: str) -> str:
        """A weight by its state-dict name (each is read by one node; a second copy would fail the graph check)."""
        return g.weight(name, self.state[name])

    def _t(self, g: Builder, name: str) -> str:
        """A Linear's weight transposed (in × out, for MatMul), by its state-dict name."""
        return g.weight(name, self.state[name].T)


@dataclass(frozen=True)
class _Packing:
    """Where a padded batch's real positions are: ``tokens``, each real position's index in the flattened batch
    (T), and ``slots`` (batch × positions), each position's index among them (a padded one: the real position
    before it, which attention masks); ``rows``: the shape (-1, width) that flattens the batch."""

    tokens: str
    slots: str
    rows: str

    def gather(self, g: Builder, padded: str, name: str) -> str:
        """The real positions of ``padded`` (batch, positions, width), as (T, width)."""
        (flat,) = g.op("Reshape", [padded, self.rows], 1, f"{name}/rows")
        return g.op("Gather", [flat, self.tokens], 1, name)[0]


def _packing(g: Builder, mask: str, width: int, prefix: str) -> _Packing:
    """The real positions of a padded batch (``mask``: batch × positions, 1 real). As CTranslate2's encoder does,
    the products, norms and MLPs run over them only: a batch of 16 sources is 40-60 % padding."""
    flat_shape = g.weight(f"{prefix}/flat_shape", np.array([-1], np.int64))
    (flat,) = g.op("Reshape", [mask, flat_shape], 1, f"{prefix}/flat")
    (found,) = g.op("NonZero", [flat], 1, f"{prefix}/NonZero")
    (tokens,) = g.op("Reshape", [found, flat_shape], 1, f"{prefix}/tokens")
    (count,) = g.op("CumSum", [flat, g.weight(f"{prefix}/axis", np.array(0, np.int64))], 1, f"{prefix}/count")
    (index,) = g.op("Sub", [count, g.weight(f"{prefix}/one", np.array(1, np.int64))], 1, f"{prefix}/index")
    (shape,) = g.op("Shape", [mask], 1, f"{prefix}/shape")
    (slots,) = g.op("Reshape", [index, shape], 1, f"{prefix}/slots")
    return _Packing(tokens, slots, g.weight(f"{prefix}/rows", np.array([-1, width], np.int64)))


def build(model_dir: Path, encoder: Path, merged: Path, step: Path, opset: int = 18) -> None:
    """Write the encoder (``encoder``), the merged decoder (``merged``, Optimum's interface) and the later-step
    decoder (``step``) of the Hugging Face encoder-decoder at ``model_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(model_dir).to_dict()
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    value = helper.make_tensor_value_info
    g = Builder()
    _Stack(state, config, "encoder").encode(g)
    source = [value(name, TensorProto.INT64, ["batch_size", "encoder_sequence_length"]) for name in ("input_ids", "attention_mask")]
    states = value("last_hidden_state", TensorProto.FLOAT, ["batch_size", "encoder_sequence_length", int(config["d_model"])])
    # the CPU's SkipLayerNormalization is 2-4x slower than Add + LayerNormalization on a batch's every position
    # (export.optimize): 20.8 against 6.8 ms over 16 x 72 tokens; no faster on a decoder's 1-64 rows, and more nodes
    _save(g, "encoder", source, [states], encoder, opset, split_norms=True, metadata={PACKS_PADDING: "1"})

    decoder = _Stack(state, config, "decoder")
    vocab, head = int(state["final_logits_bias"].shape[-1]), decoder.width // decoder.heads
    lengths = {"past_key_values": "past_decoder_sequence_length", "present": "decoder_sequence_length"}

    def caches(prefix: str, sources: str = "batch_size") -> list:  # ``sources``: the cross caches' batch dimension
        return [value(_cache(i, kind, t, prefix), TensorProto.FLOAT,
                      ["batch_size", decoder.heads, lengths[prefix], head] if kind == "decoder"
                      else [sources, decoder.heads, "encoder_sequence_length", head])
                for i in range(decoder.layers) for kind in CACHE_KINDS for t in ("key", "value")]  # fmt: skip

    ids = value("input_ids", TensorProto.INT64, ["batch_size", "decoder_sequence_length"])
    source_mask = lambda sources: value("encoder_attention_mask", TensorProto.INT64, [sources, "encoder_sequence_length"])
    logits = value("logits", TensorProto.FLOAT, ["batch_size", "decoder_sequence_length", vocab])
    own = lambda values: [v for v in values if ".decoder." in v.name]

    g = Builder()
    decoder.decode(g, lambda i, t: _cache(i, "encoder", t), per_source=True)
    # beam search's scores: onnxruntime's threaded log-softmax, not numpy's single-threaded one (~7 ms a step at 64
    # rows x 32,000); greedy steps fetch only the logits
    g.op("LogSoftmax", ["logits"], [LOG_PROBS], "/log_probs/LogSoftmax", axis=-1)
    log_probs = value(LOG_PROBS, TensorProto.FLOAT, ["batch_size", "decoder_sequence_length", vocab])
    _save(
        g, "decoder_step", [ids, source_mask(SOURCES), *caches("past_key_values", SOURCES)], [logits, log_probs, *own(caches("present"))],
        step, opset,
    )  # fmt: skip

    # merged: the cross caches come out of an If, computed on the first step, handed on later
    g = Builder()
    computed = Builder()
    made = decoder.cross_projections(computed, "encoder_hidden_states", "encoder_attention_mask", "/computed")
    given = Builder()
    kept = [given.op("Identity", [name.removesuffix("/computed").replace("present.", "past_key_values.", 1)], [f"{name}/given"],
                     f"{name}/given")[0] for name in made]  # fmt: skip
    names = [_cache(i, "encoder", t, "present") for i in range(decoder.layers) for t in ("key", "value")]
    branch = lambda b, outs, label: helper.make_graph(
        b.nodes, label, [], [value(o, TensorProto.FLOAT, None) for o in outs]
    )
    g.nodes.append(helper.make_node("If", ["use_cache_branch"], names, name="/cross_caches/If",
                                    then_branch=branch(given, kept, "given"), else_branch=branch(computed, made, "computed")))  # fmt: skip
    g.weights += computed.weights
    decoder.decode(g, lambda i, t: _cache(i, "encoder", t, "present"))
    hidden = value(
        "encoder_hidden_states", TensorProto.FLOAT, ["batch_size", "encoder_sequence_length", decoder.width]
    )
    branch_flag = value("use_cache_branch", TensorProto.BOOL, [1])
    _save(g, "decoder_merged", [source_mask("batch_size"), ids, hidden, *caches("past_key_values"), branch_flag], [logits, *caches("present")],
          merged, opset)  # fmt: skip


def _save(g: Builder, label: str, inputs: list, outputs: list, path: Path, opset: int, split_norms: bool = False,
          metadata: dict[str, str] | None = None) -> None:  # fmt: skip
    graph = helper.make_graph(g.nodes, label, inputs, outputs, g.weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)],
                              producer_name="onnxforge")  # fmt: skip
    helper.set_model_props(model, metadata or {})
    model.ir_version = 10
    if split_norms:
        split_skip_norms(model)
    onnx.checker.check_model(model)
    save(model, path)
