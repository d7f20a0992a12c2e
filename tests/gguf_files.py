"""Real GGUF files written in-process from tiny Hugging Face decoders, as llama.cpp's converter lays them out.

Tensors are named by the ``gguf`` package's own name map, Llama's q/k rows are permuted as llama.cpp's converter
permutes them, and the tokenizer (byte-level BPE) and chat template go in the metadata, so transformers loads the
file back like any published one. Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 tensors are quantized by the ``gguf`` package;
it cannot quantize k-quants, so Q4_K, Q5_K and Q6_K tensors hold random blocks (random codes, 6-bit scales and
minimums, small fp16 super-block scales) of the tensor's shape: the model then runs on those de-quantized weights.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

# A decoder whose rows are multiples of 256 (the k-quants' super-block); untrained.
K_QUANT_SHAPE = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "max_position_embeddings": 256}  # fmt: skip
# llama.cpp's converter stores these families' RMS-norm weights as (1 + w), the scale the model applies
NORM_PLUS_ONE = {"gemma2", "gemma3_text", "nemotron"}
# GPT-2's Conv1D weights are (in, out); the converter transposes them to the (out, in) of every other family
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order for Llama (rotary halves interleaved per head)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# Where each format keeps its fp16 scales (and minimums) inside a block, and how large random blocks' scales are.
SCALE_BYTES = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q4_K": (0, 2),
               "Q5_K": (0, 2), "Q6_K": (208,)}  # fmt: skip
SCALE = {"Q4_K": 1e-4, "Q5_K": 1e-4, "Q6_K": 1e-4}


def random_blocks(fmt: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random but well-scaled ``fmt`` blocks for a (rows, columns) tensor, as raw bytes: random codes and packed
    sub-block scales, small finite fp16 scales (and, for Q6_K, small int8 sub-block scales)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[fmt]]
    raw = rng.integers(0, 256, (shape[0], shape[1] // block, size), dtype=np.uint8)
    for start in SCALE_BYTES[fmt]:  # d, then the minimum (legacy formats: stored as is; k-quants: dmin)
        scales = (rng.uniform(0.5, 1.0, raw.shape[:2]) * SCALE.get(fmt, 0.01)).astype(np.float16)
        raw[..., start : start + 2] = (-scales if start and fmt.endswith("_1") else scales).view(np.uint8).reshape(*raw.shape[:2], 2)
    if fmt == "Q6_K":
        raw[..., 192:208] = rng.integers(-12, 13, (*raw.shape[:2], 16)).astype(np.int8).view(np.uint8)
    return raw.reshape(shape[0], -1)


def write_gguf(source: Path, out: Path, format_of: Callable[[str], str], seed: int = 0) -> Path:
    """Write the Hugging Face decoder at ``source`` as a GGUF at ``out``; ``format_of(gguf tensor name)`` picks each
    2-D weight's format ("F32", "Q4_0", …); 1-D tensors (norms, biases) stay F32."""
    import gguf
    import torch  # noqa: F401 - transformers' model classes
    from transformers import AutoModelForCausalLM

    from onnxforge.export.families import FAMILIES

    config = json.loads((source / "config.json").read_text())
    family = config["model_type"]
    arch = getattr(gguf.MODEL_ARCH, FAMILIES[family].gguf.upper())
    heads, kv_heads = _get(config, "num_attention_heads"), _get(config, "num_key_value_heads")
    names = gguf.get_tensor_name_map(arch, _get(config, "num_hidden_layers"))
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
    write_metadata(writer, config, source)
    state = AutoModelForCausalLM.from_pretrained(source).state_dict()
    if config.get("tie_word_embeddings", True):  # absent from config.json where the class default (True) holds
        state.pop("lm_head.weight", None)
    rng = np.random.default_rng(seed)
    for key, tensor in state.items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        weight = tensor.float().numpy()
        if family == "llama" and key.endswith(("q_proj.weight", "k_proj.weight")):
            weight = _permute(weight, heads if "q_proj" in key else kv_heads)
        elif family in NORM_PLUS_ONE and key.endswith("norm.weight"):
            weight = weight + 1
        elif family == "gpt2" and key.endswith(CONV1D):
            weight = weight.T
        fmt = format_of(name) if weight.ndim == 2 else "F32"
        kind = gguf.GGMLQuantizationType[fmt]
        if fmt.endswith("_K"):
            writer.add_tensor(name, random_blocks(fmt, weight.shape, rng), raw_dtype=kind)
        elif fmt != "F32":
            writer.add_tensor(name, gguf.quants.quantize(weight, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


# GPT-2's names for the settings the other families share
GPT2_NAMES = {"hidden_size": "n_embd", "num_attention_heads": "n_head", "num_hidden_layers": "n_layer",
              "max_position_embeddings": "n_positions"}  # fmt: skip


def _get(config: dict, key: str) -> int:
    """A shared setting, under GPT-2's own name there (its key/value heads are its heads)."""
    if key == "num_key_value_heads":
        return config.get(key) or _get(config, "num_attention_heads")
    return config[key] if key in config else config[GPT2_NAMES[key]]


def write_metadata(writer, config: dict, source: Path) -> None:
    """The architecture's hyper-parameters and the byte-level BPE tokenizer, as llama.cpp's converter writes them."""
    hidden, heads = _get(config, "hidden_size"), _get(config, "num_attention_heads")
    writer.add_context_length(_get(config, "max_position_embeddings"))
    writer.add_embedding_length(hidden)
    writer.add_block_count(_get(config, "num_hidden_layers"))
    writer.add_feed_forward_length(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden)
    writer.add_head_count(heads)
    writer.add_head_count_kv(_get(config, "num_key_value_heads"))
    head_dim = config.get("head_dim") or hidden // heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(int(head_dim * config.get("partial_rotary_factor", 1.0)))
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    if "rms_norm_eps" in config:
        writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    else:
        eps = next(config[k] for k in ("layer_norm_eps", "norm_epsilon", "norm_eps", "layer_norm_epsilon") if k in config)
        writer.add_layer_norm_eps(eps)
    if config.get("sliding_window"):
        writer.add_sliding_window(config["sliding_window"])
    writer.add_vocab_size(config["vocab_size"])
    if config["model_type"] in SENTENCEPIECE:
        _sentencepiece_vocabulary(writer, config["vocab_size"])
    else:
        specials = PHI3_SPECIALS if config["model_type"] == "phi3" else ()
        _byte_bpe_vocabulary(writer, json.loads((source / "tokenizer.json").read_text()), specials)
    scaling = config.get("rope_scaling") or {}
    if scaling.get("type", scaling.get("rope_type")) == "longrope":  # as llama.cpp's converter stores Phi-3's
        writer.add_tensor("rope_factors_long.weight", np.asarray(scaling["long_factor"], np.float32))
        writer.add_tensor("rope_factors_short.weight", np.asarray(scaling["short_factor"], np.float32))
        writer.add_rope_scaling_orig_ctx_len(config["original_max_position_embeddings"])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config.get("pad_token_id") or 0)
    writer.add_add_bos_token(False)
    template = json.loads((source / "tokenizer_config.json").read_text()).get("chat_template")
    if template:
        writer.add_chat_template(template)


# Families whose GGUF tokenizer transformers reads as SentencePiece pieces with scores (tokenizer model "llama", a
# Unigram model for Gemma), as llama.cpp's converter writes them; the others get byte-level BPE with merges.
SENTENCEPIECE = {"gemma2", "gemma3_text"}


# The special tokens transformers' Phi-3 GGUF tokenizer adds unless the file's vocabulary has them (Phi-3's has)
PHI3_SPECIALS = ("</s>", "<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
                 "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>")  # fmt: skip


def _byte_bpe_vocabulary(writer, tokenizer: dict, specials: tuple[str, ...] = ()) -> None:
    """The Hugging Face byte-level BPE tokenizer (tokenizer.json) as tokens, types and merges; each of ``specials``
    it lacks takes the slot of its last-learned merge (that merge dropped), so the vocabulary keeps its size."""
    vocab = tokenizer["model"]["vocab"]
    special = {t["id"] for t in tokenizer["added_tokens"]}
    tokens = sorted(vocab, key=vocab.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    for token in (t for t in specials if t not in vocab):
        merged = "".join(merges.pop().split(" "))
        tokens[vocab[merged]] = token
        special.add(vocab[merged])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    writer.add_token_merges(merges)


def _sentencepiece_vocabulary(writer, size: int) -> None:
    """A Unigram SentencePiece model of ``size`` pieces trained on the corpus, written as pieces, scores and types:
    start 1 and end 2 as the tiny decoders number them, named as Gemma's (<bos>, <eos>, <pad>, <unk>), so the
    tokenizer transformers builds from the file adds none of its own."""
    import io

    import sentencepiece as spm

    from onnxforge import corpus

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus.load()), model_writer=model, vocab_size=size,
                                   model_type="unigram", character_coverage=1.0, minloglevel=2, pad_id=3,
                                   bos_piece="<bos>", eos_piece="<eos>")  # fmt: skip
    pieces = spm.SentencePieceProcessor(model_proto=model.getvalue())
    ids = range(pieces.get_piece_size())
    kinds = [2 if pieces.is_unknown(i) else 3 if pieces.is_control(i) else 6 if pieces.is_byte(i) else 1 for i in ids]
    writer.add_tokenizer_model("llama")
    writer.add_token_list([pieces.id_to_piece(i) for i in ids])
    writer.add_token_scores([pieces.get_score(i) for i in ids])
    writer.add_token_types(kinds)
    writer.add_unk_token_id(pieces.unk_id())


def make_k_quant_decoder(directory: Path, family: str, seed: int = 0) -> Path:
    """An untrained decoder of ``family`` shaped for the k-quants (:data:`K_QUANT_SHAPE`), with the tiny decoders'
    tokenizer."""
    import torch
    import transformers

    from tests.tiny_models import DECODERS, byte_bpe_tokenizer

    config_class, kwargs = DECODERS[family]
    tokenizer = byte_bpe_tokenizer()
    config = getattr(transformers, config_class)(**{**kwargs, **K_QUANT_SHAPE}, vocab_size=len(tokenizer),
                                                 bos_token_id=1, eos_token_id=2)  # fmt: skip
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
