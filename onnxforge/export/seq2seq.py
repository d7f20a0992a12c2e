"""Export of an encoder-decoder model (T5, BART, Marian, …) for ``translate`` / ``summarize``.

Optimum traces three graphs: the encoder, the decoder's first step (which computes the cross-attention keys and
values from the encoder's states) and its later steps (which take them, and the self-attention cache, as inputs).
Each is fused by onnxruntime's optimizer, then the two decoders are merged into one graph with an ``If`` on
``use_cache_branch``, so their shared weights are stored once: the artifact holds ``encoder_model.onnx`` and
``decoder_model_merged.onnx``, the names Optimum's ``ORTModelForSeq2SeqLM`` loads. BART-style models are not traced:
``seq2seq_graph`` builds their graphs from the weights (:func:`build_from_weights`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..artifact import Preprocess
from ..sources import tokenizer_of
from . import seq2seq_graph
from .generation import id_set
from .graph import fused_ops, op_counts, write_shared
from .optimize import optimize

ENCODER = "encoder_model.onnx"
DECODER = "decoder_model_merged.onnx"
DEFAULT_SOURCE_LENGTH = 512
# generation_config fields the runtime takes as its defaults (with max_new_tokens, where the model sets a length)
GENERATION_FIELDS = ("num_beams", "length_penalty", "no_repeat_ngram_size", "early_stopping")
# special tokens that name a target language, which the runtime's target_language forces as the first token
LANGUAGE_TOKEN = re.compile(r"[a-z]{2}_[A-Z]{2}")  # mBART's (en_XX, de_DE, …)


def build(model_dir: Path, traced: Path, stage: Path, model_type: str, target: str, config: dict) -> dict[str, int]:
    """Fuse optimum's three traced graphs in ``traced`` and write the encoder and the merged decoder into ``stage``.
    Returns the fused operators of the graphs written."""
    from optimum.onnx import merge_decoders

    fused = optimize(traced / ENCODER, stage / ENCODER, model_type, target, config)
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        for op, count in optimize(traced / name, traced / f"fused-{name}", model_type, target, config).items():
            fused[op] = fused.get(op, 0) + count
    # strict=False: the first step also returns the cross-attention caches, which later steps only read
    merge_decoders(traced / "fused-decoder_model.onnx", traced / "fused-decoder_with_past_model.onnx",
                   save_path=stage / DECODER, strict=False)  # fmt: skip
    return fused


def build_from_weights(model_dir: Path, stage: Path, opset: int) -> dict[str, int]:
    """The encoder, the merged decoder and the step graph built from the weights (``seq2seq_graph``), the two
    decoders' weights stored once; returns the fused operators of the three."""
    graphs = [stage / ENCODER, stage / DECODER, stage / seq2seq_graph.STEP]
    seq2seq_graph.build(model_dir, *graphs, opset=opset)
    write_shared(graphs[1:])
    fused: dict[str, int] = {}
    for graph in graphs[:2]:  # the step graph repeats the merged decoder's layers
        for op, count in fused_ops(op_counts(graph)).items():
            fused[op] = fused.get(op, 0) + count
    return fused


def text2text_settings(model_dir: Path) -> Preprocess:
    """Source length, pad/start/end tokens, forced and suppressed tokens, the decoder's positions, the model's
    generation defaults and its language tokens: what the runtime's :class:`~onnxforge.runtime.text2text.Text2Text`
    needs."""
    from transformers import AutoConfig, GenerationConfig

    tokenizer = tokenizer_of(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    if (model_dir / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(model_dir)
    else:
        generation = GenerationConfig.from_model_config(config)
    positions = getattr(config, "max_position_embeddings", None)  # None: relative positions (T5), no limit
    source = min(int(tokenizer.model_max_length), int(positions or DEFAULT_SOURCE_LENGTH), DEFAULT_SOURCE_LENGTH)
    eos = id_set(generation.eos_token_id) or id_set(config.eos_token_id)
    start = generation.decoder_start_token_id
    start = config.decoder_start_token_id if start is None else start
    if start is None or not eos or tokenizer.pad_token_id is None:
        raise ValueError(f"{model_dir}: the config lacks a decoder_start_token_id, eos_token_id or pad token")
    if longer := [ids for ids in generation.bad_words_ids or () if len(ids) > 1]:
        raise ValueError(f"{model_dir}: generation_config's bad_words_ids has sequences of several tokens ({longer}); the "
                         "runtime bans single tokens only, so it would generate them: remove or split them")  # fmt: skip
    suppressed = sorted({ids[0] for ids in generation.bad_words_ids or ()} | set(generation.suppress_tokens or ()))
    defaults = {name: getattr(generation, name) for name in GENERATION_FIELDS}
    if generation.max_new_tokens is not None:
        defaults["max_new_tokens"] = int(generation.max_new_tokens)
    elif generation.max_length != GenerationConfig().max_length:  # set by the model, counting the start token
        defaults["max_new_tokens"] = int(generation.max_length) - 1
    return Preprocess(
        max_length=source, pad_token_id=int(tokenizer.pad_token_id), eos_token_ids=tuple(sorted(eos)),
        decoder_start_token_id=int(start), forced_bos_token_id=generation.forced_bos_token_id,
        forced_eos_token_id=generation.forced_eos_token_id, suppressed_token_ids=tuple(suppressed),
        target_length=None if positions is None else int(positions), generation=defaults,
        clean_up_tokenization_spaces=bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)),
        languages=_languages(tokenizer),
    )  # fmt: skip


def _languages(tokenizer) -> dict[str, int] | None:
    """The tokenizer's language tokens → ids (None: it has none)."""
    found = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in tokenizer.additional_special_tokens
             if LANGUAGE_TOKEN.fullmatch(token)}  # fmt: skip
    return dict(sorted(found.items())) or None
