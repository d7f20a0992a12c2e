"""Export of a tiny random-weight BERT: parity at many shapes, failure paths leave no artifact."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from onnxforge.artifact import read_manifest, verify
from onnxforge.export import ExportConfig, ParityError, Tolerance, export
from onnxforge.export.parity import reference_pool
from onnxforge.export.pooling import Pooling, pooling_of
from tests.util import siblings


def test_manifest_records_signature_parity_and_fusions(tiny_artifact):
    m = verify(tiny_artifact)
    assert m.task == "embed" and m.variant == "fp32" and m.name == "tiny-bert"
    assert [o.name for o in m.outputs] == ["sentence_embedding", "last_hidden_state"]
    assert m.outputs[0].shape == ["batch_size", 32]
    assert {i.name for i in m.inputs} >= {"input_ids", "attention_mask"}
    assert m.parity["min_cosine"] >= 0.99999 and m.parity["texts"] > 90
    assert m.graph["fused_ops"].get("MultiHeadAttention") == 2  # one per layer
    assert m.build["opset"] == 18 and m.build["torch"] and m.build["onnxruntime"]
    assert set(m.files) >= {"model.onnx", "tokenizer.json", "config.json"}


@pytest.mark.parametrize("batch,words", [(1, 1), (1, 300), (2, 7), (5, 40), (9, 3)])
def test_parity_at_shapes_not_seen_at_export(tiny_artifact, tiny_source, batch, words):
    """Batch 1 and a sequence longer than anything traced (300 words → 300+ tokens) included."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_source)
    model = AutoModel.from_pretrained(tiny_source).eval()
    rng = np.random.default_rng(batch * 1000 + words)
    vocab = ["model", "export", "graph", "runtime", "token", "batch", "the", "of", "onnx", "parity"]
    texts = [" ".join(rng.choice(vocab, size=rng.integers(1, words + 1))) for _ in range(batch)]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="np")
    with torch.no_grad():
        hidden = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).last_hidden_state.numpy()
    session = ort.InferenceSession(str(tiny_artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: enc[i.name] for i in session.get_inputs()}
    embedding, onnx_hidden = session.run(None, feeds)
    mask = enc["attention_mask"].astype(bool)
    np.testing.assert_allclose(onnx_hidden[mask], hidden[mask], atol=1e-4)
    np.testing.assert_allclose(embedding, reference_pool(hidden, enc["attention_mask"], Pooling()), atol=1e-5)


def test_missed_tolerance_fails_and_leaves_no_artifact(tmp_path, tiny_source):
    out = tmp_path / "tiny" / "fp32"
    strict = ExportConfig(tolerance=Tolerance(max_abs=1e-12))
    with pytest.raises(ParityError, match="hidden states differ from PyTorch"):
        export(tiny_source, out, "embed", config=strict)
    assert not out.exists() and siblings(out) == []


def test_unknown_task_and_missing_model_are_named(tmp_path, tiny_source):
    with pytest.raises(ValueError, match="unknown task 'transcribe'; supported tasks: answer, classify, embed, fill-mask"):
        export(tiny_source, tmp_path / "x", "transcribe")
    with pytest.raises(FileNotFoundError, match="never downloads from a model hub"):
        export(tmp_path / "no-such-model", tmp_path / "x", "embed")


def test_tolerance_must_be_sane():
    with pytest.raises(ValueError):
        Tolerance(max_abs=0)
    with pytest.raises(ValueError):
        Tolerance(min_cosine=1.5)


def _sbert_dir(tmp_path, pooling_config, normalize=True):
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    return tmp_path


def test_pooling_is_read_from_sentence_transformers_files(tmp_path):
    assert pooling_of(tmp_path) == Pooling("mean", True)  # plain encoder: the defaults
    cls = _sbert_dir(tmp_path, {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, normalize=False)
    assert pooling_of(cls) == Pooling("cls", False)


def test_unsupported_pooling_is_named(tmp_path):
    both = _sbert_dir(tmp_path, {"pooling_mode_max_tokens": True})
    with pytest.raises(ValueError, match=r"pooling \['max'\] is not supported"):
        pooling_of(both)


def test_cls_pooling_graph_matches_reference(tmp_path, tiny_source):
    import shutil

    source = tmp_path / "cls-source"
    shutil.copytree(tiny_source, source)
    _sbert_dir(source, {"pooling_mode_cls_token": True})
    out = tmp_path / "cls" / "fp32"
    manifest = export(source, out, "embed")
    assert manifest.preprocess.pooling == "cls" and read_manifest(out).parity["min_cosine"] >= 0.99999


def test_unsupported_architecture_lists_the_supported_ones(tmp_path, tiny_source):
    import shutil

    source = tmp_path / "source"
    shutil.copytree(tiny_source, source)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps(dict(config, model_type="t5")))
    with pytest.raises(ValueError, match=r"model type 't5' is not supported.*task 'embed'; supported: bert, distilbert"):
        export(source, tmp_path / "out" / "fp32", "embed")
    with pytest.raises(ValueError, match=r"model type 'bert' is not supported.*task 'translate'; supported: t5, mt5"):
        export(tiny_source, tmp_path / "out" / "fp32", "translate")
    with pytest.raises(ValueError, match=r"model type 'bert' is not supported.*task 'generate'; supported: llama"):
        export(tiny_source, tmp_path / "out" / "fp32", "generate")
    assert not (tmp_path / "out" / "fp32").exists()


def test_remote_code_in_a_model_directory_is_never_run(tmp_path, tiny_source):
    """A config that points at custom code: transformers' built-in class is used and the code is not imported."""
    import shutil

    source = tmp_path / "source"
    shutil.copytree(tiny_source, source)
    marker = tmp_path / "remote-code-ran"
    (source / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((source / "config.json").read_text())
    auto_map = {"AutoModel": "modeling_evil.EvilModel", "AutoConfig": "modeling_evil.EvilConfig"}
    (source / "config.json").write_text(json.dumps(dict(config, auto_map=auto_map)))
    manifest = export(source, tmp_path / "out" / "fp32", "embed")
    assert not marker.exists()
    assert manifest.parity["min_cosine"] > 0.9999  # the built-in BertModel was exported, parity-checked


def test_module_task_is_not_exported_from_a_directory(tmp_path, tiny_source):
    with pytest.raises(ValueError, match="exported with onnxforge.export.export_module"):
        export(tiny_source, tmp_path / "x", "module")


@pytest.mark.parametrize(("family", "positions", "usable"), [("roberta", 66, 65), ("roberta", 512, 511), ("mpnet", 512, 510)])
def test_a_tokenizer_longer_than_the_models_positions_is_cut_to_the_usable_length(tmp_path, family, positions, usable):
    """MiniLM's tokenizer allows 512 tokens; a RoBERTa or MPNet with fewer positions (ids start after the padding
    index: 0 and 1 here) embeds long text cut to what its positions can index, instead of an IndexError inside
    torch.embedding."""
    from onnxforge.runtime import load
    from tests.tiny_models import make_encoder

    source = make_encoder(tmp_path / "source", family, max_position_embeddings=positions)
    export(source, tmp_path / "out", "embed", name=f"short-{family}")
    assert read_manifest(tmp_path / "out").preprocess.max_length == usable
    vectors = load(tmp_path / "out", providers="cpu").embed(["word " * 1000])
    assert vectors.shape == (1, 32) and np.isfinite(vectors).all()


def test_a_sentence_transformers_length_beyond_the_positions_is_refused_with_both_numbers(tmp_path):
    from tests.tiny_models import make_encoder

    source = make_encoder(tmp_path / "source", "roberta", max_position_embeddings=66)
    (source / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    with pytest.raises(ValueError, match="max_seq_length is 128 but the model has 65 usable positions"):
        export(source, tmp_path / "out", "embed", name="short-roberta")
    assert not (tmp_path / "out").exists()


def test_a_model_directory_without_a_tokenizer_is_refused_by_name(tmp_path, tiny_source):
    source = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_source, source)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (source / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match="no usable tokenizer"):
        export(source, tmp_path / "out", "embed")
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_larger_than_the_vocabulary_is_refused_with_both_numbers(tmp_path):
    from tests.tiny_models import make_encoder

    source = make_encoder(tmp_path / "source", "bert", vocab_size=1000)  # MiniLM's tokenizer has 30,522 tokens
    with pytest.raises(ValueError, match="the tokenizer has 30522 tokens but the model's vocab_size is 1000"):
        export(source, tmp_path / "out", "embed")


def test_every_session_is_opened_by_the_session_factory():
    """Threads, providers and the integer-precision option are set in one place: runtime/session.py."""
    from pathlib import Path

    import onnxforge

    package = Path(onnxforge.__file__).parent
    callers = [p.relative_to(package).as_posix() for p in package.rglob("*.py") if "InferenceSession(" in p.read_text()]
    assert callers == ["runtime/session.py"]


@pytest.mark.parametrize("product_first", [True, False])
def test_a_split_skip_layer_norm_gives_the_fused_ops_output(tmp_path, product_first):
    """SkipLayerNormalization(input, skip, gamma, beta, bias) → Add(bias onto the MatMul's output) → Add(the other
    input) → LayerNormalization: the same output and the same input + skip + bias sum (output 3) within 1e-5, the
    MatMul's output read by the bias Add, and graphs below opset 17 left fused."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxforge.export.optimize import split_skip_norms

    rng = np.random.default_rng(5)
    weights = {name: rng.standard_normal(shape).astype(np.float32)
               for name, shape in (("W", (16, 16)), ("gamma", (16,)), ("beta", (16,)), ("bias", (16,)))}  # fmt: skip
    inputs = ["h", "residual"] if product_first else ["residual", "h"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("SkipLayerNormalization", [*inputs, "gamma", "beta", "bias"], ["y", "", "", "sum"],
                          domain="com.microsoft", epsilon=1e-5, name="norm")], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, 16]) for n in ("x", "residual")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, 16]) for n in ("y", "sum")],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=9)  # fmt: skip
    feeds = {"x": rng.standard_normal((2, 3, 16)).astype(np.float32),
             "residual": rng.standard_normal((2, 3, 16)).astype(np.float32)}  # fmt: skip
    fused = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    old = model.SerializeToString()
    assert split_skip_norms(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add", "Add", "LayerNormalization"]
    assert model.graph.node[1].input[:] == ["h", "bias"]
    for got, want in zip(ort.InferenceSession(model.SerializeToString()).run(None, feeds), fused):
        np.testing.assert_allclose(got, want, atol=1e-5)
    older = onnx.ModelProto.FromString(old)
    older.opset_import[0].version = 16
    assert split_skip_norms(older) == 0

