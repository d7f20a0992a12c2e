"""Decoders: tiny Llama, GPT-2 and Qwen2 (trained briefly on the corpus) exported with a KV cache, then generate /
chat / stream / sample.

Every decoding test compares with a reference that never touches the runtime's cache: transformers running the
whole sequence again for each token (tests/decoding.py), or the same graph re-reading the decoded text in one pass.
``make cache-faults`` proves it: with the cache forgotten, zeroed or shifted by one position, each of them fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from onnxforge.artifact import read_manifest
from onnxforge.runtime import load
from onnxforge.runtime.generate import Generator, Request
from onnxforge.runtime.sampling import Sampling
from tests.decoding import (
    PROMPTS,
    TorchReference,
    assert_cache_exact,
    check_quantized,
    held_out_passages,
)

GRAPHS = [("llama", "auto"), ("qwen2", "auto"), ("gpt2", "auto"), ("llama", "optimum"), ("qwen2", "optimum")]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_the_tiny_decoders_predict_from_their_context(decoder, family):
    """Trained, not random: many next-token predictions change when the earlier context is taken away (random
    weights predict from the current token alone, so a decoder without its cache would go unnoticed)."""
    reference, artifact = decoder(family)
    ids = [i for passage in held_out_passages(load(artifact, providers="cpu"), 4) for i in passage[:64]]
    with_context = np.concatenate([reference.logits(ids[s : s + 64]).argmax(-1) for s in range(0, len(ids), 64)])
    alone = np.array([reference.logits([token])[-1].argmax() for token in ids])
    assert (with_context != alone).mean() > 0.3
    # and the training taught something: the true next token is top-1 far above chance (1 / 512)
    assert (with_context[:-1] == np.array(ids[1:])).mean() > 0.1


@pytest.mark.parametrize(("family", "graph"), GRAPHS)
def test_greedy_generation_matches_transformers(decoder, family, graph):
    reference, artifact = decoder(family, graph)
    manifest = read_manifest(artifact)
    assert manifest.task == "generate" and any(spec.name.startswith("past_key_values.") for spec in manifest.inputs)
    generator = load(artifact, providers="cpu")
    assert isinstance(generator, Generator)
    for prompt in PROMPTS:
        expected = reference.text(prompt, 24)
        assert len(expected) > 20 and generator.generate(prompt, max_new_tokens=24) == expected


@pytest.mark.parametrize(("family", "graph"), GRAPHS)
def test_each_decode_step_gives_transformers_logits_at_its_position(decoder, family, graph):
    """A prefill, then one token per step through the cache: every step's logits are those transformers computes
    for that position reading the whole passage at once."""
    reference, artifact = decoder(family, graph)
    generator = load(artifact, providers="cpu")
    ids = held_out_passages(generator, 1)[0][:40]
    cache = generator.decoder.empty(len(ids))
    steps = [generator.decoder.forward(cache, ids[:8])] + [generator.decoder.forward(cache, [t]) for t in ids[8:]]
    np.testing.assert_allclose(np.stack(steps), reference.logits(ids)[7:], atol=1e-3)


def test_repetition_penalty_counts_the_prompt_as_transformers_does(decoder):
    import torch

    reference, artifact = decoder("llama")
    generator = load(artifact, providers="cpu")
    ids = generator.encode(PROMPTS[1])
    with torch.no_grad():
        out = reference.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                       max_new_tokens=24, do_sample=False, repetition_penalty=1.3, eos_token_id=2,
                                       pad_token_id=2)  # fmt: skip
    expected = reference.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    assert expected != reference.text(PROMPTS[1], 24)  # the penalty changes this continuation
    assert generator.generate(PROMPTS[1], max_new_tokens=24, repetition_penalty=1.3) == expected
    assert_cache_exact(generator, ids, 24, Sampling(repetition_penalty=1.3).picker(), prompt_counts=True)


def test_generation_stops_at_the_context(decoder):

    reference, artifact = decoder("llama")
    generator = load(artifact, providers="cpu")
    endless = TorchReference(reference.source, eos=-1)  # no end-of-sequence: only the context stops it
    passage = [i for p in held_out_passages(generator, 2) for i in p]
    for room in (1, 6):
        ids = passage[: generator.context - room]
        tokens = assert_cache_exact(generator, ids, 40, eos=frozenset())
        assert tokens == endless.continuation(ids, room) and len(tokens) == room


def test_a_graph_without_a_kv_cache_is_not_a_decoder(tiny_artifact):
    from onnxforge.runtime.decoder import Decoder

    with pytest.raises(ValueError, match=r"not a generate graph with a KV cache: inputs are \['attention_mask', "):
        Decoder(load(tiny_artifact, providers="cpu").loaded.session, 64)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_llama_families_get_the_fused_graph_and_the_traced_one_is_fused_too(decoder, family):
    built = read_manifest(decoder(family)[1]).graph
    assert built["builder"] == "onnxforge"
    assert built["fused_ops"]["GroupQueryAttention"] == 2 and built["fused_ops"]["SkipSimplifiedLayerNormalization"] == 4
    traced = read_manifest(decoder(family, "optimum")[1]).graph
    assert traced["builder"] == "optimum"
    assert traced["fused_ops"]["RotaryEmbedding"] >= 2 and traced["fused_ops"]["SkipSimplifiedLayerNormalization"] >= 2


def test_both_graphs_of_one_model_agree(decoder):
    fused, traced = load(decoder("qwen2")[1], providers="cpu"), load(decoder("qwen2", "optimum")[1], providers="cpu")
    ids = fused.encode(PROMPTS[1])
    np.testing.assert_allclose(fused.decoder.logits(ids), traced.decoder.logits(ids), atol=1e-4)


def test_stream_joins_to_the_same_text(decoder):
    reference, artifact = decoder("qwen2")
    generator = load(artifact, providers="cpu")
    whole = generator.generate(PROMPTS[1], max_new_tokens=30)
    pieces = list(generator.generate(PROMPTS[1], max_new_tokens=30, stream=True))
    assert whole == reference.text(PROMPTS[1], 30)
    assert len(pieces) > 1 and "".join(pieces) == whole
    assert not any("\ufffd" in piece and "\ufffd" not in whole for piece in pieces)


def test_seeded_sampling_is_reproducible(decoder):
    reference, artifact = decoder("qwen2")
    generator = load(artifact, providers="cpu")
    settings = {"max_new_tokens": 24, "temperature": 1.5, "top_p": 0.95}
    first = generator.generate(PROMPTS[0], seed=7, **settings)
    assert first == reference.text(PROMPTS[0], 24, Sampling(temperature=1.5, top_p=0.95, seed=7).picker())
    assert generator.generate(PROMPTS[0], seed=7, **settings) == first
    others = {generator.generate(PROMPTS[0], seed=s, **settings) for s in range(8, 12)}
    assert others - {first}, "different seeds never changed the sample"
    # top_k=1 leaves one candidate: sampling then is greedy whatever the temperature
    assert generator.generate(PROMPTS[0], max_new_tokens=16, temperature=2.0, top_k=1, seed=3) == generator.generate(
        PROMPTS[0], max_new_tokens=16
    )


def test_max_new_tokens_and_stop_strings(decoder):
    reference, artifact = decoder("qwen2")
    generator = load(artifact, providers="cpu")
    ids = generator.encode(PROMPTS[2])
    assert list(generator.tokens(ids, Request.check(12, None))) == reference.continuation(ids, 12)
    assert generator.generate(PROMPTS[2], max_new_tokens=0) == ""
    text = generator.generate(PROMPTS[2], max_new_tokens=40)
    assert text == reference.text(PROMPTS[2], 40)
    assert_cache_exact(generator, ids, 40)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"no stop string to cut at in {text!r}"
    cut = generator.generate(PROMPTS[2], max_new_tokens=40, stop=[stop, "\u2603never"])
    assert cut == text[: text.index(stop)]


def test_chat_uses_the_models_template(decoder):
    reference, artifact = decoder("llama")
    generator = load(artifact, providers="cpu")
    tokenizer = AutoTokenizer.from_pretrained(reference.source)
    conversations = [
        [{"role": "user", "content": "Hi there"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    ]  # fmt: skip
    for messages in conversations:
        assert generator.chat_prompt(messages) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
    reply = generator.chat(conversations[0], max_new_tokens=10)
    assert reply == reference.text("Hi there", 10, chat=True)
    prompt_ids = generator.encode(generator.chat_prompt(conversations[0]), add_special_tokens=False)
    assert_cache_exact(generator, prompt_ids, 10)
    with pytest.raises(ValueError, match="role 'robot'"):
        generator.chat([{"role": "robot", "content": "beep"}])
    with pytest.raises(TypeError, match="non-empty list"):
        generator.chat([])


def test_a_template_that_is_not_prefix_suffix_shaped_is_not_compiled():
    from onnxforge.export.generation import compile_chat_template
    from tests.tiny_models import byte_bpe_tokenizer

    tokenizer = byte_bpe_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}\n{% endfor %}"
    assert compile_chat_template(tokenizer) is None
    assert compile_chat_template(byte_bpe_tokenizer()) is not None


@pytest.mark.parametrize(
    ("settings", "error", "match"),
    [
        ({"max_new_tokens": -1}, ValueError, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, ValueError, "max_new_tokens"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"temperature": -0.1}, ValueError, "temperature"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"repetition_penalty": 0}, ValueError, "repetition_penalty"),
        ({"seed": -3}, ValueError, "seed"),
        ({"stop": 5}, TypeError, "stop"),
        ({"stop": ["ok", ""]}, TypeError, "stop"),
    ],
)
def test_bad_parameters_fail_before_any_compute(decoder, settings, error, match):
    generator = load(decoder("llama")[1], providers="cpu")
    calls = []
    generator.decoder.forward = lambda *a, **k: calls.append(a)  # any compute would land here
    with pytest.raises(error, match=match):
        generator.generate("hello", stream=True, **settings)
    assert not calls


def test_prompts_that_cannot_run_are_refused(decoder):
    generator = load(decoder("llama")[1], providers="cpu")
    with pytest.raises(TypeError, match="prompt must be a str"):
        generator.generate(b"bytes")
    with pytest.raises(ValueError, match="empty"):
        generator.generate("")
    with pytest.raises(ValueError, match="context is 256"):
        generator.generate("word " * 400)


def test_text_stream_never_splits_characters_and_holds_stop_prefixes():
    from tokenizers import Tokenizer

    from onnxforge.runtime.streaming import TextStream
    from tests.tiny_models import byte_bpe_tokenizer

    tokenizer: Tokenizer = byte_bpe_tokenizer().backend_tokenizer
    text = "Grüße aus Köln 😀 — naïve café. The end."
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text.split())  # multi-byte characters span several byte-level tokens
    stream = TextStream(tokenizer)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    stream = TextStream(tokenizer, stop=["café", "Kölsch"])
    pieces = [stream.push(i) for i in ids if not stream.stopped]
    assert "".join(pieces) + stream.flush() == "Grüße aus Köln 😀 — naïve "
    held = TextStream(tokenizer, stop=["The end!"])
    shown = "".join(held.push(i) for i in ids)
    assert not shown.endswith("The end") and shown + held.flush() == text


def test_int4_weights_pass_their_gate_and_a_missed_gate_writes_nothing(decoder, tmp_path):
    from onnxforge.quantization import Gate, GateError, WeightOnlyConfig, quantize

    reference, artifact = decoder("llama")
    out = tmp_path / "tiny-llama" / "int4"
    gate = {"next_token_agreement": 0.5}
    manifest = quantize(artifact, out, WeightOnlyConfig(bits=4), Gate(gate))
    assert manifest.precision["weights"] == "int4" and manifest.graph["fused_ops"].get("MatMulNBits", 0) >= 8
    check_quantized(reference, manifest, out, gate | {"perplexity_retention": 0.5})
    with pytest.raises(GateError, match="perplexity_retention"):
        quantize(artifact, tmp_path / "tiny-llama" / "int4-strict", WeightOnlyConfig(bits=4),
                 Gate({"perplexity_retention": 2.0}))  # fmt: skip
    assert not (tmp_path / "tiny-llama" / "int4-strict").exists()


def test_a_graph_past_protobufs_limit_keeps_its_weights_in_a_file_beside_it(decoder_source, monkeypatch, tmp_path):
    """A 1.7B decoder is over protobuf's 2 GiB in fp32. With the limit lowered to nothing, a tiny decoder's export and
    its int4 write their weights to model.onnx.data, the manifest hashes that file, and both decode as transformers."""
    from onnxforge.export import export, graph
    from onnxforge.quantization import Gate, WeightOnlyConfig, quantize

    monkeypatch.setattr(graph, "PROTOBUF_LIMIT", 1)
    source = decoder_source("llama")
    fp32, int4 = tmp_path / "tiny" / "fp32", tmp_path / "tiny" / "int4"
    export(source, fp32, "generate")
    quantize(fp32, int4, WeightOnlyConfig(bits=4), Gate({"next_token_agreement": 0.5}))
    reference = TorchReference(source)
    for out in (fp32, int4):
        data = out / "model.onnx.data"
        assert "model.onnx.data" in read_manifest(out).files
        assert (out / "model.onnx").stat().st_size < data.stat().st_size / 4
    assert load(fp32).generate(PROMPTS[0], max_new_tokens=16) == reference.text(PROMPTS[0], 16)
    assert load(int4).generate(PROMPTS[0], max_new_tokens=16)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_encoders_int8_procedure_applies_unchanged_to_decoders(decoder, family, tmp_path):
    """Per-token activations, GPTQ and smoothing calibrate on teacher-forced passages (plain feeds with an empty
    cache) and gate on next-token agreement; naming activations is what makes a decoder's int8 more than weights."""
    from onnxforge.quantization import Gate, Int8Config, WeightOnlyConfig, config_for, quantize

    assert isinstance(config_for("int8", "generate", {}), WeightOnlyConfig)
    settings = {"activations": "per-token", "weight_rounding": "gptq", "smooth_alpha": 0.6}
    config = config_for("int8", "generate", settings)
    assert isinstance(config, Int8Config)
    reference, artifact = decoder(family)
    out = tmp_path / f"tiny-{family}" / "int8"
    gate = {"next_token_agreement": 0.9, "perplexity_retention": 0.97}
    manifest = quantize(artifact, out, config, Gate(gate))
    assert manifest.precision["activations"] == "uint8-per-token"
    import onnx

    from onnxforge.quantization.smooth import weight_matmuls

    assert manifest.graph["fused_ops"]["MatMulIntegerToFloat"] >= 6
    assert not weight_matmuls(onnx.load(str(out / "model.onnx")))  # every weight MatMul went int8
    check_quantized(reference, manifest, out, gate)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fp16_decoders_load_and_decode_as_fp32_does(decoder, family, tmp_path):
    """The fp16 pass repeats the Cast of a tensor that several fp32-kept nodes read (Llama: the embedding Gather;
    GPT-2: a LayerNorm bias), which onnxruntime refused as duplicate node names."""
    from onnxforge.quantization import Fp16Config, Gate, quantize

    reference, artifact = decoder(family)
    out = tmp_path / f"tiny-{family}" / "fp16"
    gate = {"next_token_agreement": 0.99}
    manifest = quantize(artifact, out, Fp16Config(), Gate(gate))
    assert manifest.precision["weights"] == "float16"
    fp16 = check_quantized(reference, manifest, out, gate)
    for prompt in PROMPTS:
        assert fp16.generate(prompt, max_new_tokens=16) == reference.text(prompt, 16)


def test_cli_generate_streams_and_chat_answers_each_line(decoder, capsys, monkeypatch):
    import io

    from onnxforge.cli import main

    reference, artifact = decoder("llama")
    assert main(["generate", str(artifact), PROMPTS[0], "--max-new-tokens", "12", "--providers", "cpu"]) == 0
    assert capsys.readouterr().out == reference.text(PROMPTS[0], 12) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n\nHow are you?\n"))
    assert main(["chat", str(artifact), "--max-new-tokens", "8", "--providers", "cpu"]) == 0
    first = reference.text("Hello", 8, chat=True)
    conversation = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "How are you?"}]  # fmt: skip
    prompt = reference.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    second = reference.tokenizer.decode(reference.continuation(reference.tokenizer(prompt).input_ids, 8))
    assert capsys.readouterr().out == f"{first}\n{second}\n"
    assert main(["generate", str(artifact), "hi", "--top-p", "1.5"]) == 1
    assert "top_p must be None or in (0, 1]" in capsys.readouterr().err


def test_in_place_cache_matches_a_grown_cache(decoder):
    from onnxforge.runtime.decoder import Decoder, greedy

    reference, artifact = decoder("llama")
    generator = load(artifact, providers="cpu")
    assert generator.decoder.in_place
    grown = Decoder(generator.loaded.session, generator.context, in_place=False)
    ids = generator.encode(PROMPTS[0])
    expected = reference.continuation(ids, 40)
    assert len(expected) > 20
    assert list(generator.decoder.continuation(ids, 40, greedy, frozenset([2]))) == expected
    assert list(grown.continuation(ids, 40, greedy, frozenset([2]))) == expected
    cache = generator.decoder.empty(len(ids) + 3)
    assert cache.capacity == len(ids) + 3
    generator.decoder.forward(cache, ids)
    with pytest.raises(ValueError, match="exceed the cache"):
        generator.decoder.forward(cache, [5, 6, 7, 8])


def test_a_prefill_projects_only_its_last_position_onto_the_vocabulary(decoder, tmp_path):
    """The fused graph's ``logits_to_keep`` (default 0, every position): a prefill of n tokens runs the vocabulary
    product on its last position alone, with the logits it had among all n; a caller that does not feed it
    (Optimum, the gate, a plain session) gets every position's logits."""
    from onnxforge.runtime.decoder import LOGITS_TO_KEEP, Decoder
    from tests.util import node_shapes, profiled_session

    _, artifact = decoder("llama")
    generator = load(artifact, providers="cpu")
    session = profiled_session(artifact / read_manifest(artifact).model_file, tmp_path / "prefill")
    assert LOGITS_TO_KEEP not in {i.name for i in session.get_inputs()}
    assert LOGITS_TO_KEEP not in {spec.name for spec in read_manifest(artifact).inputs}
    profiled = Decoder(session, generator.context, in_place=True)
    ids = generator.encode(PROMPTS[0])
    every = profiled.logits(ids)
    last = profiled.forward(profiled.empty(len(ids)), ids)
    plain = session.run(["logits"], profiled.feeds(ids))[0][0]
    rows = [shape[1] for name, _, shape in node_shapes(session) if name.startswith("/lm_head/MatMul")]
    assert len(ids) > 4 and rows == [len(ids), 1, len(ids)]
    assert every.shape == plain.shape == (len(ids), generator.decoder.session.get_outputs()[0].shape[2])
    np.testing.assert_array_equal(last, every[-1])
    np.testing.assert_allclose(plain, every, atol=1e-5)
