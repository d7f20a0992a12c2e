"""The model families onnxforge exports: one row per Hugging Face ``model_type``, as data.

A row says which tasks the family serves (``kind``), which onnxruntime.transformers fusion rules apply
(``fusion``; None: the traced graph is kept and onnxruntime fuses at load), whether ``export.llama_graph`` can build
the fused decoder graph from its weights, the GGUF architecture transformers reads it from, and the mechanisms the
export must reproduce exactly (the parity check proves each on every export; tests/test_families.py on tiny models).
Adding a family is one row here plus its tiny config in ``tests/tiny_models.py``; the README's family table is
checked against this one.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = {"encoder": "embed, classify, token-classify, answer, fill-mask", "decoder": "generate",
         "seq2seq": "translate, summarize"}  # fmt: skip


@dataclass(frozen=True)
class Family:
    kind: str  # a key of KINDS
    fusion: str | None  # onnxruntime.transformers optimizer model type; None: left as traced
    fused_graph: bool = False  # export.llama_graph (decoders) or seq2seq_graph builds it on CPU where the config fits
    gguf: str | None = None  # export from a GGUF file of this architecture (tests/test_gguf_blocks.py writes one)
    mechanisms: tuple[str, ...] = ()  # what the export reproduces beyond a plain pre-norm transformer
    # fairseq's convention: position ids start after the padding index, so padding_idx + 1 fewer positions are usable
    positions_after_padding: bool = False
    rotary_interleaved: bool = False  # RoPE rotates adjacent pairs of dimensions (GLM's style), not the two halves
    norm_plus_one: bool = False  # RMSNorm scales by (1 + w) (Gemma)
    scaled_embeddings: bool = False  # embeddings times sqrt(hidden size) (Gemma)


FAMILIES: dict[str, Family] = {
    # encoders
    "bert": Family("encoder", "bert"),
    "distilbert": Family("encoder", "bert"),
    "roberta": Family("encoder", "bert", mechanisms=("positions after the padding index",), positions_after_padding=True),
    "xlm-roberta": Family("encoder", "bert", mechanisms=("positions after the padding index",), positions_after_padding=True),
    "albert": Family("encoder", "bert", mechanisms=("shared layers", "factorized embeddings")),
    "electra": Family("encoder", "bert"),
    "deberta-v2": Family("encoder", "bert", mechanisms=("disentangled relative attention",)),
    "mpnet": Family("encoder", "bert", mechanisms=("relative position bias", "positions after the padding index"),
                    positions_after_padding=True),
    "modernbert": Family("encoder", "bert", mechanisms=("RoPE", "alternating local (sliding-window) and global attention",
                                                        "GeGLU", "no token types")),
    # decoders
    "llama": Family("decoder", "qwen3", fused_graph=True, gguf="llama", mechanisms=("RMSNorm", "RoPE", "GQA")),
    "qwen2": Family("decoder", "qwen3", fused_graph=True, gguf="qwen2", mechanisms=("RMSNorm", "RoPE", "GQA", "QKV biases")),
    "qwen3": Family("decoder", "qwen3", fused_graph=True, gguf="qwen3", mechanisms=("RMSNorm", "RoPE", "GQA", "q/k norms")),
    "gpt2": Family("decoder", "gpt2", gguf="gpt2", mechanisms=("LayerNorm", "learned positions", "Conv1D weights")),
    "mistral": Family("decoder", "qwen3", fused_graph=True, mechanisms=("RMSNorm", "RoPE", "GQA", "sliding-window attention")),
    "phi3": Family("decoder", "qwen3", gguf="phi3", mechanisms=("RMSNorm", "partial rotary", "LongRoPE (short/long factors by length)",
                                                                 "packed QKV and gate/up weights")),
    "gemma2": Family("decoder", "qwen3", fused_graph=True, norm_plus_one=True, scaled_embeddings=True, gguf="gemma2", mechanisms=("(1 + w) RMSNorm", "embedding scaling", "sliding-window attention",
                                                                      "attention soft-capping", "logit soft-capping", "tanh GELU")),
    "gemma3_text": Family("decoder", "qwen3", fused_graph=True, norm_plus_one=True, scaled_embeddings=True, gguf="gemma3", mechanisms=("(1 + w) RMSNorm", "embedding scaling", "q/k norms",
                                                                          "local/global layers (sliding window, two RoPE bases)")),
    "granite": Family("decoder", "qwen3", fused_graph=True, mechanisms=("RMSNorm", "RoPE", "GQA", "embedding, residual, attention and logit multipliers")),
    "olmo2": Family("decoder", "qwen3", fused_graph=True, mechanisms=("post-norm RMSNorm", "q/k norms over all heads", "RoPE")),
    "smollm3": Family("decoder", "qwen3", fused_graph=True, mechanisms=("RMSNorm", "GQA", "layers without RoPE")),
    "stablelm": Family("decoder", "qwen3", gguf="stablelm", mechanisms=("LayerNorm", "partial rotary", "QKV biases")),
    "starcoder2": Family("decoder", "qwen3", gguf="starcoder2", mechanisms=("LayerNorm", "RoPE", "GQA", "sliding-window attention", "biases", "GELU MLP")),
    "gemma": Family("decoder", "qwen3", fused_graph=True, norm_plus_one=True, scaled_embeddings=True, mechanisms=("(1 + w) RMSNorm", "embedding scaling", "tanh GELU", "head_dim apart from width")),
    "phi": Family("decoder", "qwen3", mechanisms=("LayerNorm", "parallel attention and MLP", "partial rotary", "biases")),
    "olmo": Family("decoder", "qwen3", mechanisms=("LayerNorm without parameters", "RoPE", "QKV clipping")),
    "nemotron": Family("decoder", "qwen3", gguf="nemotron", mechanisms=("(1 + w) LayerNorm", "partial rotary", "squared-ReLU MLP")),
    "ernie4_5": Family("decoder", "qwen3", fused_graph=True, mechanisms=("RMSNorm", "interleaved RoPE", "GQA"),
                       rotary_interleaved=True),
    "glm": Family("decoder", "qwen3", mechanisms=("RMSNorm", "interleaved partial rotary", "QKV biases", "packed gate/up weights")),
    "glm4": Family("decoder", "qwen3", mechanisms=("RMSNorm", "interleaved partial rotary", "QKV biases", "post-attention and post-MLP norms")),
    "hunyuan_v1_dense": Family("decoder", "qwen3", mechanisms=("RMSNorm", "GQA", "q/k norms", "RoPE base from the NTK alpha")),
    "gpt_oss": Family("decoder", "qwen3", mechanisms=("mixture of experts (top-k routing; every expert in the graph, each on its routed tokens)", "attention sinks",
                                                      "alternating sliding-window layers", "clamped SwiGLU", "biases")),
    "phimoe": Family("decoder", "qwen3", mechanisms=("mixture of experts (sparsemixer routing; every expert in the graph, each on its routed tokens)",
                                                     "LongRoPE (short/long factors by length)", "LayerNorm", "GQA", "biases")),
    # encoder-decoders
    "t5": Family("seq2seq", "t5", mechanisms=("relative position buckets", "RMSNorm")),
    "mt5": Family("seq2seq", "t5", mechanisms=("relative position buckets", "RMSNorm", "gated GELU")),
    "bart": Family("seq2seq", "bart", fused_graph=True, mechanisms=("learned positions",)),
    "mbart": Family("seq2seq", "bart", fused_graph=True, mechanisms=("learned positions", "target language token")),
    "marian": Family("seq2seq", "bart", fused_graph=True, mechanisms=("sinusoidal positions",)),
}  # fmt: skip
# Families transformers has and onnxforge refuses, with what each lacks here (the error names it)
REFUSED = {
    "lfm2": "a convolution state cache beside the key/value cache (LFM2's short-convolution layers)",
    "granitemoehybrid": "a Mamba state cache beside the key/value cache (Granite 4's Mamba-2 layers)",
    "falcon_h1": "a Mamba state cache beside the key/value cache (Falcon-H1's Mamba-2 heads)",
}
# Fusion rules whose output holds a CUDA-only operator (T5's RelativePositionBias, applied unconditionally): on CPU
# their graphs are left as traced, and onnxruntime's session-level fusions (RMS norms) apply at load.
CUDA_ONLY_FUSIONS = {"t5"}


HEADERS = ("family", "tasks", "GGUF", "reproduced exactly", "graph")


def rows() -> list[tuple[str, str, str, str, str]]:
    """The table as text, one row per family (``onnxforge families``; the README's table holds the same)."""
    return [(name, KINDS[row.kind], row.gguf or "", ", ".join(row.mechanisms), _graph(row)) for name, row in FAMILIES.items()]


def _graph(row: Family) -> str:
    fused = f"{row.fusion} fusions" if row.fusion else "traced"
    return f"onnxforge's fused graph, else {fused}" if row.fused_graph else fused


def attention_implementation(config: dict) -> str | None:
    """transformers' attention to trace and to compare against: eager where the config soft-caps attention logits
    (Gemma 2), which SDPA, transformers' default, skips without a word; None (the default) elsewhere."""
    return "eager" if config.get("attn_logit_softcapping") else None


def of_kind(kind: str) -> list[str]:
    """The model types of one kind, in table order."""
    return [name for name, family in FAMILIES.items() if family.kind == kind]


def family(model_type: str, kind: str | None = None, task: str | None = None) -> Family:
    """The row for ``model_type``; an error listing the supported ones (of ``kind``, for ``task``) otherwise."""
    row = FAMILIES.get(model_type)
    if row is None or (kind and row.kind != kind):
        names = of_kind(kind) if kind else list(FAMILIES)
        wanted = f" for task {task!r}" if task else ""
        lacks = f": it needs {REFUSED[model_type]}, which onnxforge lacks" if model_type in REFUSED else ""
        raise ValueError(f"model type {model_type!r} is not supported by onnxforge export{wanted}{lacks}; "
                         f"supported: {', '.join(names)}")
    return row
