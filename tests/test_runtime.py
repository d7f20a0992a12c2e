"""The runtime embed pipeline: outputs, input checks, batching order, truncation, concurrency."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge import corpus
from onnxforge.artifact import ArtifactError
from onnxforge.runtime import load
from onnxforge.runtime.text import length_sorted_batches

TEXTS = corpus.load()[:40]


@pytest.fixture(scope="module")
def embedder(tiny_artifact):
    return load(tiny_artifact, providers="cpu", threads=1)


def test_embeddings_are_float32_unit_vectors(embedder):
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.provider == "CPUExecutionProvider"


def test_length_sorted_batches_come_back_in_input_order(embedder):
    mixed = [TEXTS[0], "short", " ".join(TEXTS[:10]), "a b", TEXTS[5], ""]
    batched = embedder.embed(mixed, batch_size=4)
    singly = np.stack([embedder.embed([t])[0] for t in mixed])
    np.testing.assert_allclose(batched, singly, atol=1e-5)
    assert len({tuple(np.round(v, 4)) for v in batched}) == len(mixed)  # really different rows


def test_batches_keep_padding_within_the_budget_and_cover_every_text():
    lengths = [40, 9, 10, 38, 11, 12, 100, 10, 9, 39]
    batches = [list(b) for b in length_sorted_batches(lengths, batch_size=3, max_padding=0.25)]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [6], "100 tokens next to 40 would pad more than a quarter"
    for b in batches:
        assert len(b) <= 3 and len(b) * max(lengths[i] for i in b) <= 1.25 * sum(lengths[i] for i in b)
    assert [len(b) for b in batches] == [1, 3, 3, 3]
    assert [len(b) for b in length_sorted_batches(lengths, batch_size=4, max_padding=100.0)] == [4, 4, 2]


def test_empty_input_gives_zero_rows(embedder):
    assert embedder.embed([]).shape == (0, 32)


def test_a_single_string_is_one_text(embedder):
    np.testing.assert_allclose(embedder.embed("hello world"), embedder.embed(["hello world"]))


@pytest.mark.parametrize("bad,message", [
    (["ok", "fine", 3], r"texts\[2\] is int, not str"),
    (["ok", None], r"texts\[1\] is NoneType, not str"),
    ([b"bytes"], r"texts\[0\] is bytes, not str"),
    (b"bytes", "texts must be a str or a list of str, got bytes"),
    (42, "texts must be a str or a list of str, got int"),
])  # fmt: skip
def test_wrong_types_are_named(embedder, bad, message):
    with pytest.raises(TypeError, match=message):
        embedder.embed(bad)


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_bad_batch_size(embedder, size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        embedder.embed(["x"], batch_size=size)


def test_texts_over_max_length_are_truncated(embedder):
    """Documented behaviour: only the first ``preprocess.max_length`` tokens count."""
    limit = embedder.loaded.manifest.preprocess.max_length
    long_text = " ".join(["word"] * (limit + 50))
    longer = long_text + " completely different ending " * 20
    a, b = embedder.embed([long_text, longer])
    np.testing.assert_allclose(a, b, atol=1e-6)
    short = embedder.embed(" ".join(["word"] * (limit // 4)))[0]
    assert not np.allclose(a, short, atol=1e-3)  # truncation, not a constant output


def test_damaged_artifact_is_refused_on_load(tiny_artifact, tmp_path):
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(tiny_artifact, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.onnx: sha256 does not match"):
        load(copy)


def test_missing_tokenizer_is_named(tiny_artifact, tmp_path):
    import shutil

    copy = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_artifact, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: missing"):
        load(copy)


def test_session_settings_pass_through_config(embedder, tiny_artifact):
    from onnxforge.runtime import SessionConfig

    config = SessionConfig(providers="cpu", threads=1, inter_op_threads=2, cpu_mem_arena=False,
                           graph_optimization="basic")  # fmt: skip
    other = load(tiny_artifact, config=config)
    np.testing.assert_allclose(other.embed(TEXTS[:8]), embedder.embed(TEXTS[:8]), atol=1e-5)
    with pytest.raises(ValueError, match="inside config="):
        load(tiny_artifact, threads=2, config=config)


@pytest.mark.parametrize("location", ["../outside.bin", "absolute"])
def test_external_data_outside_the_artifact_is_refused(tmp_path, location):
    """A model whose weights point outside its directory, with a manifest that hashes it correctly."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxforge.artifact import Manifest, TensorSpec, publish, staging

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, str(tmp_path / "inside.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "outside.bin").write_bytes((tmp_path / "w.bin").read_bytes())
    if location == "absolute":  # an absolute path to a file outside the artifact (inside this test's directory)
        location = str(tmp_path / "outside.bin")
    proto = onnx.load(str(tmp_path / "inside.onnx"), load_external_data=False)
    proto.graph.initializer[0].external_data[0].value = location
    final = tmp_path / "evil" / "fp32"
    spec = TensorSpec("x", "float32", [1, 4])
    with staging(final) as stage:
        (stage / "model.onnx").write_bytes(proto.SerializeToString())
        publish(stage, Manifest(name="evil", variant="fp32", task="module", source={}, inputs=[spec],
                                outputs=[TensorSpec("y", "float32", [1, 4])]), final)  # fmt: skip
    with pytest.raises(RuntimeError, match=r"model\.onnx: onnxruntime could not load the model"):
        load(final, providers="cpu")
