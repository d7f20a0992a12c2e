"""Bad input, property-tested: every input gets a documented result or a TypeError / ValueError naming it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxforge.runtime import load

# Every Unicode category, lone surrogates (Cs) and control characters (Cc) included.
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=200)
NOT_STR = st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text(max_size=3), max_size=2))
DTYPES = st.sampled_from([np.int64, np.int32, np.float32, np.float64, np.bool_, np.uint8])
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def embedder(tiny_artifact):
    return load(tiny_artifact, providers="cpu", threads=1)


def _unit_rows(vectors: np.ndarray, count: int, dim: int) -> None:
    assert vectors.shape == (count, dim) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@SETTINGS
@given(texts=st.lists(ANY_TEXT, max_size=12))
def test_any_unicode_text_embeds_to_unit_vectors(embedder, texts):
    _unit_rows(embedder.embed(texts, batch_size=5), len(texts), embedder.dim)


@SETTINGS
@given(texts=st.lists(st.text(max_size=20), max_size=6), bad=NOT_STR, data=st.data())
def test_a_non_str_item_is_a_type_error_naming_its_index(embedder, texts, bad, data):
    index = data.draw(st.integers(0, len(texts)))
    texts.insert(index, bad)
    with pytest.raises(TypeError, match=rf"texts\[{index}\] is {type(bad).__name__}, not str"):
        embedder.embed(texts)


@pytest.mark.parametrize("bad", [None, b"bytes", bytearray(b"x"), 3, {"a": 1}.keys(), np.array(["a"])])
def test_whole_input_of_the_wrong_type(embedder, bad):
    with pytest.raises(TypeError, match="texts must be a str or a list of str"):
        embedder.embed(bad)


def test_lone_surrogate_is_replaced_not_an_error(embedder):
    a, b = embedder.embed(["caf\udce9 au lait", "caf\ufffd au lait"])
    np.testing.assert_array_equal(a, b)


def test_huge_inputs(embedder):
    """A 1 MB string is truncated to max_length tokens; a 10k-item list comes back in order."""
    big = "lorem ipsum dolor sit amet " * 40_000
    assert len(big) > 1_000_000
    truncated = " ".join(big.split()[: embedder.manifest.preprocess.max_length])
    np.testing.assert_allclose(embedder.embed(big), embedder.embed(truncated), atol=1e-6)
    many = [f"sentence number {i}" for i in range(10_000)]
    vectors = embedder.embed(many, batch_size=256)
    _unit_rows(vectors, 10_000, embedder.dim)
    np.testing.assert_allclose(vectors[[0, 4321, 9999]], embedder.embed([many[0], many[4321], many[9999]]), atol=1e-5)


def _feeds(embedder, rows=2, width=7):
    ids = np.full((rows, width), 1000, dtype=np.int64)
    return {name: (ids if name == "input_ids" else np.ones_like(ids)) for name in embedder.loaded.input_names}


def test_raw_run_returns_every_output_by_name(embedder):
    out = embedder.run(_feeds(embedder))
    assert set(out) == {spec.name for spec in embedder.manifest.outputs}
    _unit_rows(out["sentence_embedding"], 2, embedder.dim)


@SETTINGS
@given(dtype=DTYPES, shape=st.lists(st.integers(0, 4), max_size=3), name=st.sampled_from(["input_ids", "attention_mask"]))
def test_raw_run_rejects_wrong_dtypes_and_shapes_by_name(embedder, dtype, shape, name):
    feeds = _feeds(embedder)
    valid_shape = feeds[name].shape
    feeds[name] = np.ones(shape, dtype=dtype)
    if dtype == np.int64 and tuple(shape) == valid_shape:
        embedder.run(feeds)  # that one is valid
        return
    with pytest.raises(ValueError, match=name):
        embedder.run(feeds)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda f: f.pop("attention_mask"), ValueError, r"missing \['attention_mask'\]"),
        (lambda f: f.update(extra=np.ones((2, 7), np.int64)), ValueError, r"unknown \['extra'\]"),
        (lambda f: f.update(input_ids=[[1, 2]]), TypeError, "input 'input_ids' must be a numpy array, got list"),
        (lambda f: f.update(attention_mask=np.ones((2, 5), np.int64)), ValueError, "axis 'sequence_length': input 'attention_mask' has 5"),
        (lambda f: f.update(input_ids=np.full((2, 7), 10**9, np.int64)), ValueError, "onnxruntime rejected the feeds"),
    ],
)
def test_raw_run_errors_name_the_problem(embedder, change, error, message):
    feeds = _feeds(embedder)
    change(feeds)
    with pytest.raises(error, match=message):
        embedder.run(feeds)


def test_raw_run_needs_a_mapping(embedder):
    with pytest.raises(TypeError, match="feeds must be a dict"):
        embedder.run([np.ones((1, 1), np.int64)])
