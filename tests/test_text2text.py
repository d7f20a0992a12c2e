"""Encoder-decoder models (T5, BART, Marian) from export to the torch-free ``translate`` / ``summarize`` pipeline.

Each family is a tiny model taught to copy the corpus's sentences (``tests/tiny_models.make_seq2seq``), exported
through the same path as a real one. Its tokens must equal transformers' ``generate`` for greedy decoding and
beam search under several settings; quantized variants must pass a chrF / token-agreement gate against fp32.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from onnxforge import corpus
from onnxforge.artifact import graph_files
from onnxforge.export.families import FAMILIES
from onnxforge.export.graph import graphs
from onnxforge.quantization.saturation import integer_products, saturating_products
from onnxforge.runtime import SessionConfig, load
from onnxforge.runtime.text import pad_batch
from tests.decoding import cut_at_end
from tests.tiny_models import LANGUAGES, SEQ2SEQ, make_seq2seq
from tests.util import node_shapes, profiled_session

TEXTS = ["The cat sat on the mat.", "Edge apps ship the runtime and nothing else.",
         "A build engineer runs make artifacts."] + corpus.split(corpus.load()).evaluation[:9]  # fmt: skip


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """family → (source dir, fp32 artifact dir, manifest), made once per module."""
    from onnxforge.export import export

    made: dict[str, tuple] = {}

    def get(family: str):
        if family not in made:
            root = tmp_path_factory.mktemp(f"seq2seq-{family}")
            source = make_seq2seq(root / "source", family)
            task = "summarize" if family == "bart" else "translate"
            made[family] = (source, root / "artifacts" / f"tiny-{family}" / "fp32")
            made[family] += (export(source, made[family][1], task, name=f"tiny-{family}"),)
        return made[family]

    return get


def _transformers(source, texts, max_new_tokens=24, **search):
    """transformers' generated tokens per text, start token dropped and cut before the end token."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    batch = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, **search)
    eos = model.generation_config.eos_token_id
    return cut_at_end(out[:, 1:].tolist(), eos)


@pytest.mark.parametrize("family", SEQ2SEQ)
def test_export_parity_figures(build, family):
    _, out, manifest = build(family)
    parity = manifest.parity
    assert parity["max_abs_diff"] < 1e-4 and parity["encoder_max_abs_diff"] < 1e-4
    assert parity["greedy_identical"] and parity["beam4_identical"] and parity["beam4_lp2_ngram3_identical"]
    assert manifest.encoder_file == "encoder_model.onnx" and manifest.model_file == "decoder_model_merged.onnx"
    hand_built = FAMILIES[family].fused_graph  # BART-style decoders built from the weights, with a step graph
    assert manifest.graph["builder"] == ("onnxforge" if hand_built else "optimum")
    assert manifest.step_file == ("decoder_step.onnx" if hand_built else None)
    assert {*graph_files(manifest), "tokenizer.json"} <= set(manifest.files)
    for graph in graph_files(manifest):  # plain onnxruntime loads every graph
        ort.InferenceSession(str(out / graph), providers=["CPUExecutionProvider"])
    if hand_built:  # a few fused nodes a layer, not the traced graph's shape arithmetic
        config = json.loads((out / "config.json").read_text())
        step = onnx.load(out / manifest.step_file)
        assert "If" not in {n.op_type for n in step.graph.node} and len(step.graph.node) < 20 * (config["decoder_layers"] + 1)
        # the logits' bias added only where the model has one (tiny BART's; parity holds with and without)
        assert ("/lm_head/Add" in {n.name for n in step.graph.node}) == SEQ2SEQ[family].logits_bias
        encoder = [n.op_type for n in onnx.load(out / manifest.encoder_file).graph.node]  # built too, its norms split
        assert encoder.count("MultiHeadAttention") == config["encoder_layers"] and "SkipLayerNormalization" not in encoder
        assert len(encoder) < 20 * (config["encoder_layers"] + 1)


SEARCHES = [
    {"num_beams": 1, "no_repeat_ngram_size": 2},
    {"num_beams": 4, "length_penalty": 0.6, "early_stopping": True},
    {"num_beams": 3, "length_penalty": 1.5, "early_stopping": "never"},
    {"num_beams": 4, "length_penalty": 2.0, "no_repeat_ngram_size": 3},
]


@pytest.mark.parametrize("family", SEQ2SEQ)
@pytest.mark.parametrize("search", SEARCHES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_tokens_equal_transformers_generate(build, family, search):
    source, out, _ = build(family)
    pipeline = load(out, providers="cpu")
    ours = pipeline.token_ids(TEXTS, pipeline.decoding(24, **search), batch_size=5)
    assert ours == _transformers(source, TEXTS, 24, **search)
    assert any(len(ids) > 3 for ids in ours)  # real output, not an immediate end token


def _texts(pipeline, source, texts, max_new_tokens, **search) -> list[str]:
    """transformers' outputs as the pipeline's text: the reference a test's decoded strings must equal."""
    return [pipeline.text_of(ids) for ids in _transformers(source, texts, max_new_tokens, **search)]


def test_output_depends_on_the_source(build):
    source, out, _ = build("t5")
    pipeline = load(out, providers="cpu")
    outputs = pipeline.translate(TEXTS[:6], max_new_tokens=16)
    assert len(set(outputs)) >= 4, outputs
    assert outputs == _texts(pipeline, source, TEXTS[:6], 16)


@pytest.mark.parametrize("family", ["t5", "marian"])
def test_batches_streams_and_single_texts_agree(build, family):
    source, out, _ = build(family)
    pipeline = load(out, providers="cpu")
    for beams in (1, 4):
        batched = pipeline.translate(TEXTS, max_new_tokens=20, num_beams=beams, batch_size=4)
        assert batched == [pipeline.translate(t, max_new_tokens=20, num_beams=beams) for t in TEXTS]
        assert batched == _texts(pipeline, source, TEXTS, 20, num_beams=beams)
    streamed = "".join(pipeline.translate(TEXTS[1], max_new_tokens=20, stream=True))
    assert streamed == pipeline.translate(TEXTS[1], max_new_tokens=20)


def test_texts_of_any_length_share_a_batch_and_beams_share_a_first_step(build):
    """Each decoder step reads every weight once per batch, so a call's texts are decoded in full batches however
    much their lengths differ; beam search runs the first step once per input and gives its caches to every beam.
    The tokens stay transformers'."""
    source, out, _ = build("marian")
    pipeline = load(out, providers="cpu")
    started, start = [], pipeline.model.start
    pipeline.model.start = lambda hidden, mask, tokens: started.append(len(tokens)) or start(hidden, mask, tokens)
    texts = ["Hi.", " ".join(TEXTS[1:4]), TEXTS[4], "No."]
    for beams in (1, 3):
        assert pipeline.translate(texts, max_new_tokens=12, num_beams=beams, batch_size=4) == \
            _texts(pipeline, source, texts, 12, num_beams=beams)
    assert started == [4, 4]


def test_sampling_is_seeded(build):
    source, out, _ = build("marian")
    pipeline = load(out, providers="cpu")
    # sampling from the top token alone is greedy decoding: transformers' tokens, whatever the seed
    assert pipeline.translate(TEXTS[:4], max_new_tokens=16, temperature=1.5, top_k=1, seed=3) == \
        _texts(pipeline, source, TEXTS[:4], 16)
    first = pipeline.translate(TEXTS[:4], max_new_tokens=16, temperature=1.5, seed=7)
    assert first == pipeline.translate(TEXTS[:4], max_new_tokens=16, temperature=1.5, seed=7)
    others = {tuple(pipeline.translate(TEXTS[:4], max_new_tokens=16, temperature=1.5, seed=s)) for s in range(4)}
    assert len(others) > 1
    # one random stream per text, as if alone: the same text gets the same sample alone, in a batch, in any batch size
    alone = [pipeline.translate(t, max_new_tokens=16, temperature=1.5, seed=7) for t in TEXTS[:4]]
    assert first == alone
    assert pipeline.translate(TEXTS[:4], max_new_tokens=16, temperature=1.5, seed=7, batch_size=3) == alone
    assert pipeline.translate(TEXTS[0], max_new_tokens=0) == ""


@pytest.mark.parametrize(("settings", "message"), [
    ({"num_beams": 0}, "num_beams"),
    ({"num_beams": 2, "temperature": 0.5}, "do not combine"),
    ({"num_beams": 2, "repetition_penalty": 1.2}, "repetition_penalty"),
    ({"length_penalty": float("nan")}, "length_penalty"),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ({"early_stopping": "sometimes"}, "early_stopping"),
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"top_p": 0}, "top_p"),
    ({"stream": True, "num_beams": 2}, "num_beams=1"),
])  # fmt: skip
def test_bad_settings_name_the_problem(build, settings, message):
    pipeline = load(build("t5")[1], providers="cpu")
    with pytest.raises(ValueError, match=message):
        pipeline.translate("A text.", **settings)
    with pytest.raises(ValueError, match="one text"):
        pipeline.translate(["a", "b"], stream=True, num_beams=1)
    with pytest.raises(TypeError, match="texts"):
        pipeline.translate(b"bytes")


def test_summarize_gives_transformers_summaries(build):
    """``summarize`` against transformers' generate on the same BART (not against ``translate``: the same function)."""
    source, artifact, _ = build("bart")
    pipeline = load(artifact, providers="cpu")
    assert pipeline.task == "summarize"
    for beams in (1, 3):
        # corpus sentences: the tiny BART copies those, and what it makes of the three made-up ones barely depends on
        # them, so a broken cross-attention cache would pass unseen
        wanted = _transformers(source, TEXTS[3:7], max_new_tokens=12, num_beams=beams)
        got = pipeline.summarize(TEXTS[3:7], max_new_tokens=12, num_beams=beams)
        assert got == [pipeline.text_of(tokens) for tokens in wanted]
        assert all(got)


def test_mbart_forces_the_target_language_first_never_says_a_suppressed_token_and_ends_at_the_limit(build, capsys):
    """The tiny mBART has language tokens and a generation config that suppresses "Ġthe": ``target_language`` forces
    its token first (transformers' ``forced_bos_token_id``), greedy and beam alike; "Ġthe", common in the copied
    sources, never comes (transformers without the suppression says it); at the length limit the end token is forced
    (forced_eos_token_id), so a text cut there has one token less than the budget."""
    source, out, manifest = build("mbart")
    pipeline = load(out, providers="cpu")
    languages = manifest.preprocess.languages
    assert sorted(languages) == LANGUAGES
    the = pipeline.encoder.tokenizer.token_to_id("Ġthe")
    assert manifest.preprocess.suppressed_token_ids == (the,)
    texts = TEXTS[3:9]
    for search in ({"num_beams": 3}, {}):
        ours = pipeline.token_ids(texts, pipeline.decoding(10, target_language="de_DE", **search))
        assert ours == _transformers(source, texts, 10, forced_bos_token_id=languages["de_DE"], **search)
        assert all(ids[0] == languages["de_DE"] for ids in ours) and any(len(ids) == 9 for ids in ours)
    _check_language_over_cli_and_server(out, texts[0], pipeline.text_of(ours[0]), capsys)
    plain = pipeline.token_ids(texts, pipeline.decoding(16))
    assert plain == _transformers(source, texts, 16)
    unsuppressed = _transformers(source, texts, 16, suppress_tokens=[])
    assert all(the not in ids for ids in plain) and any(the in ids for ids in unsuppressed)
    with pytest.raises(ValueError, match="unknown target_language 'xx_XX'; this model's languages: de_DE, en_XX"):
        pipeline.translate("Hi.", target_language="xx_XX")
    with pytest.raises(ValueError, match="this model has no language tokens"):
        load(build("marian")[1], providers="cpu").translate("Hi.", target_language="de_DE")


def _check_language_over_cli_and_server(out, text, wanted, capsys) -> None:
    """``--target-language`` and /v1/completions' ``target_language`` give ``wanted`` (greedy, 10 new tokens); an
    unknown language is a 400 naming it."""
    from starlette.testclient import TestClient

    from onnxforge.cli import main
    from onnxforge.server.app import create_app

    main(["translate", str(out), text, "--max-new-tokens", "10", "--target-language", "de_DE"])
    assert capsys.readouterr().out.strip() == wanted
    with TestClient(create_app([out])) as client:
        name = client.get("/v1/models").json()["data"][0]["id"]
        ask = lambda language: client.post("/v1/completions", json={"model": name, "prompt": text, "max_tokens": 10,
                                                                     "target_language": language})  # fmt: skip
        assert ask("de_DE").json()["choices"][0]["text"] == wanted
        refused = ask("xx_XX")
        assert refused.status_code == 400 and "xx_XX" in refused.text


@pytest.mark.parametrize("family", ["t5", "marian"])  # Optimum's traced decoders, and ours
def test_optimum_ortmodel_loads_the_artifact(build, family):
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    from transformers import AutoTokenizer

    _, out, _ = build(family)
    model = ORTModelForSeq2SeqLM.from_pretrained(out)
    batch = AutoTokenizer.from_pretrained(out)(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
    theirs = model.generate(**batch, max_new_tokens=24, do_sample=False)[:, 1:].tolist()
    ours = load(out, providers="cpu").token_ids(TEXTS, load(out).decoding(24))
    eos = model.generation_config.eos_token_id  # Optimum's rows end with the end token, then padding
    assert cut_at_end(theirs, eos) == ours
    assert any(len(ids) > 3 for ids in ours)


def test_int8_and_fp16_pass_their_gate_and_a_strict_gate_refuses(build, tmp_path):
    from onnxforge.quantization import Fp16Config, Gate, GateError, Int8Config, config_for, quantize

    source, out, fp32 = build("marian")
    # the reference every gate below compares with decodes as transformers does
    reference = load(out, providers="cpu")
    assert reference.token_ids(TEXTS[:4], reference.decoding(16)) == _transformers(source, TEXTS[:4], 16)
    settings = {"activations": "per-token", "weight_rounding": "gptq"}
    int8 = quantize(out, out.parent / "int8", config_for("int8", "translate", settings), Gate({"chrf": 60.0}))
    assert int8.precision["activations"] == "uint8-per-token" and int8.precision["weight_rounding"] == "gptq"
    assert int8.precision["decoder"]["activations"] == "per-token int8" and int8.quality["passed"]
    assert {"chrf", "token_agreement", "exact_match"} <= set(int8.quality)
    assert len(int8.precision["computed_positions"]) == 3  # Marian's sinusoids, one table in each graph
    weight_bytes = lambda manifest: sum(e.bytes for name, e in manifest.files.items() if name.endswith((".onnx", "_data")))
    assert weight_bytes(int8) < 0.4 * weight_bytes(fp32)
    for graph in graph_files(int8):
        model = onnx.load(out.parent / "int8" / graph)
        weights = {t.name for t in model.graph.initializer}
        nodes = [n for g in graphs(model.graph) for n in g.node]
        assert "MatMulIntegerToFloat" in {n.op_type for n in nodes}, graph  # every weight product on u8·s8
        assert not [n.name for n in nodes if n.op_type == "MatMul" and n.input[1] in weights], graph
        # the pair rule's audit sees every product (the If's, the projection's transposed rows) and passes them all
        assert len(integer_products(model)) == sum(n.op_type == "MatMulIntegerToFloat" for n in nodes), graph
        assert saturating_products(model) == [], graph
    _check_one_vocabulary(out.parent / "int8", source, int8)
    fp16 = quantize(out, out.parent / "fp16", Fp16Config(), Gate({"chrf": 90.0, "token_agreement": 0.8}))
    assert fp16.quality["chrf"] > 90
    assert load(out.parent / "fp16").translate(TEXTS[0], max_new_tokens=12)
    with pytest.raises(GateError, match="chrf"):
        quantize(out, out.parent / "int4", config_for("int4", "translate", {}), Gate({"chrf": 99.99}))
    assert not (out.parent / "int4").exists()
    with pytest.raises(ValueError, match="max_keep=0"):
        quantize(out, tmp_path / "search", Int8Config(max_keep=4), Gate({"chrf": 50.0}))
    assert not (tmp_path / "search").exists()


def _check_one_vocabulary(directory, source, int8) -> None:
    """Each weight is stored once: the decoders name the same bytes in the shared file (the merged one also holds its
    cross-attention projections), the encoder names the vocabulary there, and no graph keeps a table of its own; the
    encoder's rows are the projection's int8 codes (fp32's table within half a step, where the pair rule left the
    value alone); Optimum's ORTModelForSeq2SeqLM loads the artifact and decodes as the runtime does."""
    from onnx import numpy_helper
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    from transformers import AutoTokenizer

    from onnxforge.export.graph import SHARED_FILE

    vocab = _transformers_table(source)
    assert int8.precision["shared_table"] and SHARED_FILE in int8.files
    named = {}
    for graph in graph_files(int8):
        model = onnx.load(directory / graph, load_external_data=False)
        named[graph] = {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
        inline = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
        assert not [t.name for t in inline if np.prod(t.dims) >= vocab.size], graph  # no copy of the table left
    encoder, merged, step = (named[name] for name in graph_files(int8))
    (codes_name,) = encoder  # the projection's codes (its scales too, where they fill a page)
    assert encoder < step and step == merged and codes_name.endswith("/weight_rows")
    stored = sum(np.prod(t.dims) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
                 for t in onnx.load(directory / int8.step_file, load_external_data=False).graph.initializer
                 if t.name in step)  # fmt: skip
    assert stored <= int8.files[SHARED_FILE].bytes < stored + 4096 * len(step)  # once each, page-aligned
    encoder = onnx.load(directory / "encoder_model.onnx")  # with the shared file: rows as the encoder gathers them
    weights = {t.name: numpy_helper.to_array(t) for t in encoder.graph.initializer}
    codes, scales = weights[codes_name], weights[codes_name.replace("/weight_rows", "/weight_scale")]
    steps = scales.reshape(-1, 1) * 127
    rows = codes.astype(np.float32) * steps
    within = np.abs(rows - vocab) <= steps / 2 + 1e-6
    assert within.mean() > 0.99 and np.abs(rows - vocab).max() < 2 * steps.max() and not np.array_equal(rows, vocab)
    texts = TEXTS[:3]
    model = ORTModelForSeq2SeqLM.from_pretrained(directory)
    batch = AutoTokenizer.from_pretrained(directory)(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    theirs = model.generate(**batch, max_new_tokens=12, do_sample=False)[:, 1:].tolist()
    pipeline = load(directory, providers="cpu")
    assert cut_at_end(theirs, model.generation_config.eos_token_id) == pipeline.token_ids(texts, pipeline.decoding(12))


def _transformers_table(source) -> np.ndarray:
    """The source model's token embedding table (tied to its logits projection)."""
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(source).get_input_embeddings().weight.detach().numpy()


def test_cli_server_and_triton(build, tmp_path, capsys):
    from starlette.testclient import TestClient

    from onnxforge.cli import main
    from onnxforge.server.app import create_app
    from onnxforge.triton import write_repository

    source, out, _ = build("marian")
    expected = _texts(load(out), source, TEXTS[:2], 10)
    main(["translate", str(out), TEXTS[0], "--max-new-tokens", "10"])
    assert expected[0] in capsys.readouterr().out
    with TestClient(create_app([out])) as client:
        name = client.get("/v1/models").json()["data"][0]["id"]
        reply = client.post("/v1/completions", json={"model": name, "prompt": TEXTS[1], "max_tokens": 10})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["text"] == expected[1]
        assert client.post("/v1/completions", json={"model": name, "prompt": "x", "stream": True}).status_code == 400
        assert client.post("/v1/embeddings", json={"model": name, "input": "x"}).status_code == 400
    with pytest.raises(ValueError, match="encoder-decoder"):
        write_repository(out, tmp_path / "triton")
    assert json.loads((out / "manifest.json").read_text())["encoder_file"] == "encoder_model.onnx"


def test_concurrent_translations_share_a_batch_and_get_what_they_get_alone(build):
    """Concurrent /v1/completions on a Marian: requests with the same settings are decoded as one batch (the batch
    histogram shows several sources a batch), requests with other settings (beams, a seed) in batches of their own,
    and each answer is the same request's alone: transformers' for greedy and beam search, the runtime's own for
    seeded sampling."""
    from starlette.testclient import TestClient

    from onnxforge.server import Limits
    from onnxforge.server.app import create_app

    source, out, _ = build("marian")
    pipeline = load(out)
    settings = [{}] * 6 + [{"num_beams": 3}] * 3 + [{"temperature": 1.5, "seed": 5}] * 3
    jobs = [(TEXTS[i % len(TEXTS)], extra) for i, extra in enumerate(settings)]
    alone = _texts(pipeline, source, [t for t, _ in jobs[:6]], 10) + _texts(pipeline, source, [t for t, _ in jobs[6:9]], 10,
                                                                            num_beams=3)  # fmt: skip
    alone += [pipeline.translate(text, max_new_tokens=10, **extra) for text, extra in jobs[9:]]
    with TestClient(create_app([out], Limits(max_wait_ms=300, max_generations=8))) as client:
        name = client.get("/v1/models").json()["data"][0]["id"]
        post = lambda job: client.post("/v1/completions", json={"model": name, "prompt": job[0], "max_tokens": 10, **job[1]})
        with ThreadPoolExecutor(len(jobs)) as pool:
            replies = list(pool.map(post, jobs))
        metrics = client.get("/metrics").text
    assert [r.json()["choices"][0]["text"] for r in replies] == alone
    figures = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("onnxforge_batch_size_"))
    batches, sources = float(figures["onnxforge_batch_size_count"]), float(figures["onnxforge_batch_size_sum"])
    assert sources == len(jobs) and 3 <= batches <= len(jobs) / 2, metrics


def test_bad_words_of_several_tokens_are_refused_by_name(build, tmp_path):
    """The runtime bans single tokens: a generation config with a multi-token bad word fails at export, naming it,
    instead of being dropped in silence; single-token ones become suppressed tokens."""
    import shutil

    from onnxforge.export.seq2seq import text2text_settings

    source, _, _ = build("marian")
    copy = tmp_path / "source"
    shutil.copytree(source, copy)
    written = copy / "generation_config.json"
    config = json.loads(written.read_text()) if written.is_file() else {}
    written.write_text(json.dumps({**config, "bad_words_ids": [[7], [5, 6]]}))
    with pytest.raises(ValueError, match=r"\[\[5, 6\]\]"):
        text2text_settings(copy)
    written.write_text(json.dumps({**config, "bad_words_ids": [[7]]}))
    assert 7 in text2text_settings(copy).suppressed_token_ids


@pytest.mark.parametrize("family", ["t5", "marian"])  # the merged decoder runs every step; a step graph relieves it
def test_only_the_graph_run_every_token_spins(build, family):
    """Idle threads of a graph run once a batch would spin into the per-token graph's runs on the same cores."""

    def spins(session) -> bool:
        try:
            return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") != "0"
        except RuntimeError:  # not set: onnxruntime's default, spinning
            return True

    model = load(build(family)[1], providers="cpu").model
    assert not spins(model.encoder)
    assert spins(model.decoder) == (family == "t5")
    assert model.stepper is None if family == "t5" else spins(model.stepper)
    quiet = load(build(family)[1], config=SessionConfig(providers="cpu", spin=False)).model  # a server's setting holds
    assert not any(spins(s) for s in (quiet.encoder, quiet.decoder, quiet.stepper) if s is not None)


@pytest.mark.parametrize("family", ["t5", "marian"])  # the merged decoder's later steps, and the step graph
def test_cross_attention_cache_is_computed_once(build, family):
    """Later steps read the first step's cross-attention caches: their logits are transformers' for the same target,
    and fed zeros instead, the logits change."""
    from transformers import AutoModelForSeq2SeqLM

    source, out, _ = build(family)
    pipeline = load(out, providers="cpu")
    feeds = pipeline.encoder.tokenizer.encode(TEXTS[0])
    ids, mask = np.array([feeds.ids]), np.ones((1, len(feeds.ids)), dtype=np.int64)
    hidden = pipeline.model.encode(ids, mask)
    start = np.array([[pipeline.start]])
    logits, caches = pipeline.model.start(hidden, mask, start)
    token = np.array([int(logits[0].argmax())])
    kept = pipeline.model.step(caches, token)
    with torch.no_grad():
        wanted = AutoModelForSeq2SeqLM.from_pretrained(source).eval()(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
            decoder_input_ids=torch.tensor([[pipeline.start, int(token[0])]])).logits[:, -1].numpy()  # fmt: skip
    np.testing.assert_allclose(kept, wanted, atol=1e-4)
    _, fresh = pipeline.model.start(hidden, mask, start)
    fresh.cross = {name: np.zeros_like(value) for name, value in fresh.cross.items()}
    assert np.abs(pipeline.model.step(fresh, token) - kept).max() > 1e-3


def _padded(pipeline, texts: list[str]) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """Each text's source ids, and the right-padded batch of them (ids, attention mask) as the runtime pads it."""
    encodings = [pipeline.encoder.tokenizer.encode(text) for text in texts]
    feeds = pad_batch(encodings, pipeline.encoder.pad_id, ["input_ids", "attention_mask"])
    return [e.ids for e in encodings], feeds["input_ids"], feeds["attention_mask"]


@pytest.mark.parametrize("family", ["t5", "marian"])
def test_beams_read_their_sources_cross_caches(build, family):
    """A built step graph's beams read one copy of their source's cross caches (Optimum's graphs: a copy per beam),
    and every beam's logits are transformers' for its own source and token: beams of one source are not mixed
    with another's."""
    from transformers import AutoModelForSeq2SeqLM

    source, out, _ = build(family)
    pipeline = load(out, providers="cpu")
    model = pipeline.model
    sources, ids, mask = _padded(pipeline, TEXTS[:2])
    _, caches = model.start(model.encode(ids, mask), mask, np.full((2, 1), pipeline.start, np.int64))
    beams = model.beams(caches, 3)
    assert len(next(iter(beams.cross.values()))) == (2 if family == "marian" else 6)
    tokens = np.arange(5, 11)  # a different token in every row
    reference = AutoModelForSeq2SeqLM.from_pretrained(source).eval()
    with torch.no_grad():
        wanted = np.concatenate([reference(input_ids=torch.tensor([sources[row // 3]]),
                                           decoder_input_ids=torch.tensor([[pipeline.start, int(token)]])).logits[:, -1].numpy()
                                 for row, token in enumerate(tokens)])  # fmt: skip
    np.testing.assert_allclose(model.step(beams, tokens), wanted, atol=1e-4)


@pytest.mark.parametrize("family", ["marian", "mbart"])  # post-norm and pre-norm decoders built from the weights
def test_a_built_decoder_reads_a_whole_target_at_once(build, family):
    """Several target tokens in one first step (a forced prefix, Optimum without a cache) attend causally: every
    position's logits are transformers' for the same target."""
    from transformers import AutoModelForSeq2SeqLM

    source, out, _ = build(family)
    pipeline = load(out, providers="cpu")
    ids = np.array([pipeline.encoder.tokenizer.encode(TEXTS[1]).ids])
    mask = np.ones_like(ids)
    target = np.array([[pipeline.start, *ids[0, :5]]])
    model = pipeline.model
    empty = np.zeros((1, model.heads, 0, model.head_dim), np.float32)
    feeds = {"input_ids": target, "encoder_hidden_states": model.encode(ids, mask), "encoder_attention_mask": mask,
             "use_cache_branch": np.array([False])} | {name: empty for name in model.own + model.cross}  # fmt: skip
    (logits,) = model.decoder.run(["logits"], feeds)
    with torch.no_grad():
        wanted = AutoModelForSeq2SeqLM.from_pretrained(source).eval()(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
            decoder_input_ids=torch.from_numpy(target)).logits.numpy()  # fmt: skip
    np.testing.assert_allclose(logits, wanted, atol=1e-4)


def _product_rows(path, feeds: dict, tmp_path) -> dict[str, int]:
    """Each product node's (MatMul, or Gemm as onnxruntime fuses MatMul + Add) rows in onnxruntime's profile of one
    run of the graph at ``path``, subgraphs' nodes included."""
    session = profiled_session(path, tmp_path / path.stem)
    session.run(None, feeds)
    return {name: shape[0] for name, op, shape in node_shapes(session) if op in ("MatMul", "Gemm")}


@pytest.mark.parametrize("family", ["marian", "mbart"])  # post-norm and pre-norm
def test_a_built_encoder_and_first_step_project_real_positions_only(build, family, tmp_path):
    """As CTranslate2's encoder does, the built encoder's products (and the first step's cross-attention keys and
    values) run over the batch's real positions, not its padding; its states are transformers' there and zeros at
    padded positions, and the runtime hands it a batch of mixed lengths in one run."""
    from transformers import AutoModelForSeq2SeqLM

    source, out, manifest = build(family)
    pipeline = load(out, providers="cpu")
    _, ids, mask = _padded(pipeline, [TEXTS[0], TEXTS[5], TEXTS[1]])
    real = int(mask.sum())
    assert real < mask.size
    rows = _product_rows(out / manifest.encoder_file, {"input_ids": ids, "attention_mask": mask}, tmp_path)
    assert len(rows) == 4 * json.loads((out / "config.json").read_text())["encoder_layers"]  # QKV, out, fc1, fc2
    assert set(rows.values()) == {real}, rows
    runs = []
    encoder_run = pipeline.model.encoder.run
    pipeline.model.encoder.run = lambda *args: runs.append(args) or encoder_run(*args)
    states = pipeline.model.encode(ids, mask)
    assert len(runs) == 1
    with torch.no_grad():
        wanted = AutoModelForSeq2SeqLM.from_pretrained(source).eval().get_encoder()(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))[0].numpy()  # fmt: skip
    np.testing.assert_allclose(states[mask == 1], wanted[mask == 1], atol=1e-4)
    assert not states[mask == 0].any()
    model = pipeline.model
    empty = np.zeros((len(ids), model.heads, 0, model.head_dim), np.float32)
    feeds = {"input_ids": np.full((len(ids), 1), pipeline.start), "encoder_hidden_states": states, "encoder_attention_mask": mask,
             "use_cache_branch": np.array([False])} | {name: empty for name in model.own + model.cross}  # fmt: skip
    rows = _product_rows(out / manifest.model_file, feeds, tmp_path)
    projections = {name: count for name, count in rows.items() if "encoder_attn/kv_proj" in name}
    assert projections and set(projections.values()) == {real}, rows


def test_decoders_are_built_only_where_the_builder_implements_the_config():
    from onnxforge.export import seq2seq_graph

    assert seq2seq_graph.supported({"model_type": "marian", "activation_function": "swish"})  # OPUS-MT's
    assert seq2seq_graph.supported({"model_type": "bart", "activation_function": "gelu"})
    assert not seq2seq_graph.supported({"model_type": "marian", "activation_function": "quick_gelu"})  # traced instead
    assert not seq2seq_graph.supported({"model_type": "t5"})  # relative positions: Optimum's graphs


def test_beam_top_k_of_wide_rows_matches_a_full_stable_sort():
    """Wide rows (beams × vocabulary) are partitioned before sorting: the same indices, in the same order, as a
    full stable sort, ties at the k-th value included (lowest index first)."""
    from onnxforge.runtime.beam_search import _top

    rng = np.random.default_rng(0)
    for values in (rng.integers(0, 6, (5, 4000)).astype(np.float32), rng.standard_normal((5, 4000)).astype(np.float32)):
        for k in (1, 8, 12):
            assert np.array_equal(_top(values, k), np.argsort(-values, axis=1, kind="stable")[:, :k])
