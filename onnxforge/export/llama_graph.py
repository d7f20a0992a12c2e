"""A decoder graph built from the weights, for Llama-style families (``fused_graph`` in ``export.families``: Llama,
Qwen2, Qwen3, Mistral, Granite, SmolLM3, ERNIE 4.5, Gemma 1/2/3, OLMo 2): one fused op per job, ~11 nodes a layer.

The general exporter traces PyTorch into ~100 small ops per layer (shape arithmetic, masks, rotary halves, a
concatenation per cache tensor). At batch 1 a decode step does little arithmetic, so that op count, not the
weights, sets the speed. Here each layer is: SkipSimplifiedLayerNormalization → one packed QKV MatMul →
GroupQueryAttention (rotary embedding and the KV-cache append inside) → output MatMul → SkipSimplifiedLayerNorm
→ one packed gate/up MatMul → Split → SiLU × up → down MatMul. Every weight stays a plain MatMul initializer, so
weight-only quantization treats it like any other graph. Inputs and outputs are the general exporter's
(``input_ids``, ``attention_mask``, ``past_key_values.*`` → ``logits``, ``present.*``), so the runtime, the parity
check and Optimum's ORTModelForCausalLM read both alike; one more, ``logits_to_keep``, has a default and is fed only
by the runtime's prefill.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from ..runtime.decoder import LOGITS_TO_KEEP
from .families import FAMILIES
from .graph import MS, Builder, save


def supported(config: dict) -> bool:
    """Families this builder covers (``fused_graph`` in the table), without the rope scaling or biases it does not
    implement."""
    row = FAMILIES.get(config.get("model_type", ""))
    if row is None or not row.fused_graph or config.get("rope_scaling"):
        return False
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if head_dim % 16 or _activation(config) not in ACTIVATIONS:  # GroupQueryAttention's CPU kernel needs the first
        return False
    return not (config.get("attention_bias") or config.get("mlp_bias") or config.get("use_bias"))


def sliding_window(config: dict) -> int | None:
    """The attention window, in tokens including the current one (Mistral; Qwen2 only with use_sliding_window)."""
    window = config.get("sliding_window")
    if not window or (config.get("model_type") == "qwen2" and not config.get("use_sliding_window")):
        return None
    return int(window)


def layer_window(config: dict, layer: int) -> int | None:
    """The layer's attention window: per ``layer_types`` where the config lists them (Gemma 2/3's local layers)."""
    types = config.get("layer_types")
    if types and config.get("model_type") != "qwen2":  # Qwen2's types follow use_sliding_window, as sliding_window does
        return int(config["sliding_window"]) if types[layer] == "sliding_attention" else None
    return sliding_window(config)


def _activation(config: dict) -> str:
    return config.get("hidden_activation") or config.get("hidden_act") or "silu"  # Gemma 2/3 name it hidden_activation


# the MLP's gate activation → (op, domain) applied to the gate: SiLU as Sigmoid × gate, Gemma's tanh GELU as FastGelu
ACTIVATIONS = {"silu": ("Sigmoid", ""), "gelu_pytorch_tanh": ("FastGelu", MS)}


def uses_rope(config: dict, layer: int) -> bool:
    """SmolLM3 leaves RoPE out of some layers (``no_rope_layers[i] == 0``)."""
    return bool(config.get("no_rope_layers", [1] * (layer + 1))[layer])


def _rotary_caches(config: dict, head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    angles = np.outer(np.arange(int(config["max_position_embeddings"]), dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _norm(g: Builder, x: str, weight: np.ndarray, eps: float, name: str) -> str:
    """RMS norm over the last axis of ``x``."""
    (normed,) = g.op("SimplifiedLayerNormalization", [x, g.weight(f"{name}.weight", weight)], 1, name, axis=-1,
                     epsilon=eps, stash_type=1)  # fmt: skip
    return normed


def _head_norm(g: Builder, x: str, weight: np.ndarray, head_dim: int, eps: float, name: str) -> str:
    """RMS norm over each head's slice of ``x`` (batch, sequence, heads x head_dim), back in that shape; over all of
    it where ``weight`` spans every head (OLMo 2)."""
    if weight.size != head_dim:
        return _norm(g, x, weight, eps, name)
    (heads,) = g.op("Reshape", [x, g.weight(f"{name}.heads", np.array([0, 0, -1, head_dim]))], 1, f"{name}/Reshape")
    normed = _norm(g, heads, weight, eps, name)
    (flat,) = g.op("Reshape", [normed, g.weight(f"{name}.flat", np.array([0, 0, -1]))], 1, f"{name}/Flatten")
    return flat


def _mlp(g: Builder, x: str, state: dict, p: str, n: str, activation: str, out_scale: float) -> str:
    """The gated MLP: one packed gate/up MatMul, Split, the activation on the gate, × up, the down MatMul (its weight
    times ``out_scale``, Granite's residual multiplier)."""
    gate_up_w = np.concatenate([state[f"{p}.mlp.gate_proj.weight"], state[f"{p}.mlp.up_proj.weight"]]).T
    (gate_up,) = g.op("MatMul", [x, g.weight(f"{p}.gate_up.weight", gate_up_w)], 1, f"{n}/mlp/gate_up_proj/MatMul")
    gate, up = g.op("Split", [gate_up], 2, f"{n}/mlp/Split", axis=-1, num_outputs=2)
    op, domain = ACTIVATIONS[activation]
    (act,) = g.op(op, [gate], 1, f"{n}/mlp/act/{op}", domain=domain)
    if op == "Sigmoid":  # SiLU = gate × sigmoid(gate)
        (act,) = g.op("Mul", [gate, act], 1, f"{n}/mlp/act/Mul")
    (prod,) = g.op("Mul", [act, up], 1, f"{n}/mlp/Mul")
    down_w = state[f"{p}.mlp.down_proj.weight"].T * np.float32(out_scale)
    (down,) = g.op("MatMul", [prod, g.weight(f"{p}.down.weight", down_w)], 1, f"{n}/mlp/down_proj/MatMul")
    return down


def _kept_positions(g: Builder, hidden: str) -> str:
    """The last ``logits_to_keep`` positions of ``hidden`` (batch, sequence, width), all where it is 0: an input
    with that default (an initializer of the same name), so callers that do not feed it, Optimum's included, get
    every position's logits, and a prefill that needs only its last token's skips the vocabulary product for the
    others (a fifth of a 135M model's prefill work)."""
    (start,) = g.op("Neg", [g.weight(LOGITS_TO_KEEP, np.array([0], np.int64))], 1, "/lm_head/keep/Neg")
    ends = g.weight("/lm_head/keep/end", np.array([2**62], np.int64))
    axes = g.weight("/lm_head/keep/axis", np.array([1], np.int64))
    (kept,) = g.op("Slice", [hidden, start, ends, axes], 1, "/lm_head/keep/Slice")
    return kept


def build(model_dir: Path, out: Path, opset: int = 18) -> None:
    """Write the fused decoder graph of the Hugging Face model at ``model_dir`` to ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir).to_dict()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    heads, kv_heads = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    eps = float(config["rms_norm_eps"])
    row = FAMILIES[config["model_type"]]
    # Granite's multipliers (1 elsewhere): each block's output into the residual and the logits divisor go into the
    # weights, the embeddings' is a Mul after the lookup; the attention multiplier replaces 1/sqrt(head_dim) as
    # GroupQueryAttention's scale, as Gemma 2/3's query_pre_attn_scalar does. Gemma scales its embeddings by
    # sqrt(width) (in float32, as here).
    embedding, residual_scale = float(config.get("embedding_multiplier", 1.0)), float(config.get("residual_multiplier", 1.0))
    if row.scaled_embeddings:
        embedding = float(np.float32(hidden**0.5))
    pre_attn = config.get("query_pre_attn_scalar")
    scale = float(config.get("attention_multiplier") or (pre_attn**-0.5 if pre_attn else 0.0))
    interleaved = row.rotary_interleaved
    norm = (lambda w: w + np.float32(1.0)) if row.norm_plus_one else (lambda w: w)  # Gemma's (1 + w) RMSNorm scale
    g = Builder()
    rope_theta = float(config.get("rope_theta", 10000.0))
    local_theta = float(config.get("rope_local_base_freq") or rope_theta)  # Gemma 3's local layers rotate with their own
    caches: dict[float, tuple[str, str]] = {}
    for base, suffix in ((rope_theta, ""), (local_theta, "_local")):
        if base not in caches:
            cos, sin = _rotary_caches(config, head_dim, base)
            caches[base] = (g.weight(f"cos_cache{suffix}", cos), g.weight(f"sin_cache{suffix}", sin))

    # seqlens_k = tokens so far - 1 (per row), total_sequence_length = attention_mask width: what GQA wants.
    axis1 = g.weight("axis1", np.array([1], dtype=np.int64))
    one = g.weight("one", np.array([1], dtype=np.int64))
    (tokens,) = g.op("ReduceSum", ["attention_mask", axis1], 1, "seqlens/sum", keepdims=0)
    (last,) = g.op("Sub", [tokens, one], 1, "seqlens/sub")
    (seqlens,) = g.op("Cast", [last], 1, "seqlens/cast", to=TensorProto.INT32)
    (shape,) = g.op("Shape", ["attention_mask"], 1, "total/shape", start=1, end=2)
    (total_1d,) = g.op("Cast", [shape], 1, "total/cast", to=TensorProto.INT32)
    (total,) = g.op("Squeeze", [total_1d], 1, "total/squeeze")

    table = state["model.embed_tokens.weight"]
    (x,) = g.op("Gather", [g.weight("model.embed_tokens.weight", table), "input_ids"], 1, "/model/embed_tokens/Gather")
    if embedding != 1:  # after the lookup: the table stays the file's own (a GGUF's blocks are found by its rows)
        (x,) = g.op("Mul", [x, g.weight("embedding_scale", np.array(embedding, np.float32))], 1, "/model/embed_tokens/Mul")
    # OLMo 2 norms each block's output, not its input: the residual stream feeds the blocks as it is
    post_norm = "model.layers.0.input_layernorm.weight" not in state
    normed = x if post_norm else _norm(g, x, norm(state["model.layers.0.input_layernorm.weight"]), eps, "/model/layers.0/input_layernorm")
    residual = x
    for i in range(int(config["num_hidden_layers"])):
        p, n = f"model.layers.{i}", f"/model/layers.{i}"
        qkv_w = np.concatenate([state[f"{p}.self_attn.{k}_proj.weight"] for k in "qkv"]).T
        (qkv,) = g.op("MatMul", [normed, g.weight(f"{p}.qkv.weight", qkv_w)], 1, f"{n}/attn/qkv_proj/MatMul")
        if f"{p}.self_attn.q_proj.bias" in state:  # Qwen2's q/k/v biases
            bias = np.concatenate([state[f"{p}.self_attn.{k}_proj.bias"] for k in "qkv"])
            (qkv,) = g.op("Add", [qkv, g.weight(f"{p}.qkv.bias", bias)], 1, f"{n}/attn/qkv_proj/Add")
        qkv_inputs = [qkv, "", ""]
        if f"{p}.self_attn.q_norm.weight" in state:  # Qwen3, Gemma 3: each head's q and k RMS-normed before the rotation
            q, k, v = g.op("Split", [qkv, g.weight(f"{p}.qkv.split", np.array([heads * head_dim, kv_heads * head_dim,
                                                                               kv_heads * head_dim]))],
                           3, f"{n}/attn/qkv/Split", axis=-1)  # fmt: skip
            qkv_inputs = [_head_norm(g, q, norm(state[f"{p}.self_attn.q_norm.weight"]), head_dim, eps, f"{n}/attn/q_norm"),
                          _head_norm(g, k, norm(state[f"{p}.self_attn.k_norm.weight"]), head_dim, eps, f"{n}/attn/k_norm"), v]  # fmt: skip
        rotary, window = uses_rope(config, i), layer_window(config, i)
        cos_cache, sin_cache = caches[local_theta if window else rope_theta]
        attn, _, _ = g.op(
            "GroupQueryAttention",
            [*qkv_inputs, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, total,
             *((cos_cache, sin_cache) if rotary else ("", ""))],
            [f"{n}/attn/out", f"present.{i}.key", f"present.{i}.value"], f"{n}/attn/GroupQueryAttention", domain=MS,
            num_heads=heads, kv_num_heads=kv_heads, do_rotary=int(rotary), rotary_interleaved=int(interleaved),
            local_window_size=window or -1, scale=scale, softcap=float(config.get("attn_logit_softcapping") or 0.0),
        )  # fmt: skip
        (o,) = g.op("MatMul", [attn, g.weight(f"{p}.o.weight", state[f"{p}.self_attn.o_proj.weight"].T * np.float32(residual_scale))],
                    1, f"{n}/attn/o_proj/MatMul")  # fmt: skip
        sandwich = f"{p}.pre_feedforward_layernorm.weight" in state  # Gemma 2/3 also norm each block's output
        if sandwich or post_norm:
            o = _norm(g, o, norm(state[f"{p}.post_attention_layernorm.weight"]), eps, f"{n}/post_attention_layernorm")
        if post_norm:
            (residual,) = g.op("Add", [residual, o], 1, f"{n}/attn/residual/Add")
            normed = residual
        else:
            pre_mlp = f"{p}.pre_feedforward_layernorm.weight" if sandwich else f"{p}.post_attention_layernorm.weight"
            normed, _, _, residual = g.op(
                "SkipSimplifiedLayerNormalization", [o, residual, g.weight(f"{p}.post_norm", norm(state[pre_mlp]))],
                4, f"{n}/pre_mlp_layernorm", domain=MS, epsilon=eps,
            )  # fmt: skip
        down = _mlp(g, normed, state, p, n, _activation(config), residual_scale)
        if sandwich or post_norm:
            down = _norm(g, down, norm(state[f"{p}.post_feedforward_layernorm.weight"]), eps, f"{n}/post_feedforward_layernorm")
        last_layer = i == int(config["num_hidden_layers"]) - 1
        if post_norm:
            (residual,) = g.op("Add", [residual, down], 1, f"{n}/mlp/residual/Add")
            normed = _norm(g, residual, state["model.norm.weight"], eps, "/model/norm") if last_layer else residual
            continue
        gamma = state["model.norm.weight"] if last_layer else state[f"model.layers.{i + 1}.input_layernorm.weight"]
        name = "/model/norm" if last_layer else f"/model/layers.{i + 1}/input_layernorm"
        normed, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [down, residual, g.weight(f"{name}.gamma", norm(gamma))],
                                      4, name, domain=MS, epsilon=eps)  # fmt: skip
    head = state.get("lm_head.weight", state["model.embed_tokens.weight"]) / np.float32(config.get("logits_scaling", 1.0))
    cap = float(config.get("final_logit_softcapping") or 0.0)  # Gemma 2: logits = cap · tanh(logits / cap)
    normed = _kept_positions(g, normed)
    (logits,) = g.op("MatMul", [normed, g.weight("lm_head.weight", head.T)], ["logits"] if not cap else 1, "/lm_head/MatMul")
    if cap:
        (capped,) = g.op("Div", [logits, g.weight("logit_cap", np.array(cap, np.float32))], 1, "/lm_head/softcap/Div")
        (tanh,) = g.op("Tanh", [capped], 1, "/lm_head/softcap/Tanh")
        g.op("Mul", [tanh, "logit_cap"], ["logits"], "/lm_head/softcap/Mul")

    kv = [helper.make_tensor_value_info(f"{kind}.{i}.{t}", TensorProto.FLOAT,
                                        ["batch_size", kv_heads, length, head_dim])
          for kind, length in (("past_key_values", "past_sequence_length"), ("present", "total_sequence_length"))
          for i in range(int(config["num_hidden_layers"])) for t in ("key", "value")]  # fmt: skip
    half = len(kv) // 2
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
              *kv[:half], helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1])]  # fmt: skip
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", int(config["vocab_size"])]),
               *kv[half:]]  # fmt: skip
    graph = helper.make_graph(g.nodes, "decoder", inputs, outputs, g.weights)
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)],
                                    producer_name="onnxforge")  # fmt: skip
    model_proto.ir_version = 10
    save(model_proto, out)
