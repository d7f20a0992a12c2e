"""transformers.js layout (onnxforge/transformers_js.py): an artifact that transformers.js loads as it is, its graph
at the name transformers.js reads for its precision, and whose outputs there are the Python runtime's.

The JavaScript half runs where node and npm are (tests/js, packages from npm into .cache/js-tests, once); the layout
itself is checked everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

from onnxforge import corpus
from onnxforge.artifact import verify
from onnxforge.export import export
from onnxforge.quantization import Gate, Int8Config, WeightOnlyConfig, quantize
from onnxforge.runtime import load
from onnxforge.transformers_js import CONFIG_KEY, to_transformers_js
from tests.npm import JS_TESTS, node_json, project, web_page
from tests.tiny_models import make_encoder
from tests.util import cosines

TEXTS = corpus.split(corpus.load()).evaluation[:8] + ["word " * 600]  # the last one is cut to max_length


@pytest.fixture(scope="module")
def laid_out(tiny_artifact, tmp_path_factory):
    """The tiny embed artifact in transformers.js layout, and quantized from that layout: per-token int8, and 4-bit
    (GPTQ MatMulNBits, 4-bit vocabulary rows) as the web variant is."""
    root = tmp_path_factory.mktemp("transformers-js") / "tiny-bert"
    shutil.copytree(tiny_artifact, root / "fp32")
    to_transformers_js(root / "fp32")
    quantize(root / "fp32", root / "int8", Int8Config(activations="per-token"), Gate({}))
    quantize(root / "fp32", root / "q4", WeightOnlyConfig(bits=4, weight_rounding="gptq", calibration_texts=128), Gate({}))
    for variant in ("int8", "q4"):
        to_transformers_js(root / variant)
    return root


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("transformers-js-classify")
    out = root / "tiny-classify" / "fp32"
    export(make_encoder(root / "source", "bert", task="classify"), out, "classify", name="tiny-classify")
    to_transformers_js(out)
    return out


@pytest.fixture(scope="module")
def js_tests():
    """tests/js with its packages (transformers.js, puppeteer-core), in .cache/js-tests."""
    return project(*JS_TESTS)


@pytest.fixture(scope="module")
def node_pipeline(js_tests):
    return js_tests / "pipeline.mjs"


@pytest.mark.parametrize(("variant", "name", "dtype"), [("fp32", "onnx/model.onnx", "fp32"),
                                                        ("int8", "onnx/model_quantized.onnx", "q8"),
                                                        ("q4", "onnx/model_q4.onnx", "q4")])  # fmt: skip
def test_the_graph_sits_where_transformers_js_reads_it_and_every_loader_finds_it(laid_out, variant, name, dtype):
    directory = laid_out / variant
    manifest = verify(directory)  # the moved graph and the edited config.json are hashed like every file
    assert manifest.model_file == name and manifest.graph["layout"] == "transformers.js"
    assert {name, "config.json", "tokenizer.json"} <= set(manifest.files) and "model.onnx" not in manifest.files
    assert sorted(p.name for p in (directory / "onnx").iterdir()) == [name.split("/")[1]]
    assert json.loads((directory / "config.json").read_text())[CONFIG_KEY]["dtype"] == dtype
    expected = load(directory).embed(TEXTS)
    session = ort.InferenceSession(str(directory / name), providers=["CPUExecutionProvider"])  # plain onnxruntime
    assert [o.name for o in session.get_outputs()] == [o.name for o in manifest.outputs]
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    model = ORTModelForFeatureExtraction.from_pretrained(directory, subfolder="onnx", file_name=name.split("/")[1])
    batch = AutoTokenizer.from_pretrained(directory)(TEXTS[:4], padding=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state.numpy()
    mask = batch["attention_mask"].numpy()[..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    assert cosines(expected[:4], pooled).min() >= 0.9999


def test_laying_out_twice_changes_nothing_and_other_tasks_are_refused(laid_out, decoder, tmp_path):
    copy = tmp_path / "again"
    shutil.copytree(laid_out / "int8", copy)
    before = verify(copy).files
    assert to_transformers_js(copy).files == before
    _, generate = decoder("llama")
    with pytest.raises(ValueError, match="a generate artifact has no transformers.js layout"):
        to_transformers_js(generate)


@pytest.mark.parametrize("variant", ["fp32", "int8", "q4"])
def test_transformers_js_embeds_as_the_python_runtime(node_pipeline, laid_out, variant):
    got = np.array(node_json(node_pipeline, "embed", laid_out / variant, TEXTS)["vectors"], np.float32)
    expected = load(laid_out / variant).embed(TEXTS)
    assert got.shape == expected.shape
    assert cosines(expected, got).min() >= 0.9999


def test_transformers_js_classifies_as_the_python_runtime(node_pipeline, classifier):
    got = node_json(node_pipeline, "classify", classifier, TEXTS)["labels"]
    expected = load(classifier).classify(TEXTS, top_k=None)
    for theirs, ours in zip(got, expected, strict=True):
        assert [r["label"] for r in theirs] == [r["label"] for r in ours]
        np.testing.assert_allclose([r["score"] for r in theirs], [r["score"] for r in ours], atol=1e-4)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.parametrize(("variant", "least_cosine"), [("fp32", 0.9999), ("int8", 0.999), ("q4", 0.999)])
def test_the_web_page_searches_with_the_python_runtimes_vectors_in_chromium(js_tests, laid_out, tmp_path, variant,
                                                                            least_cosine):  # fmt: skip
    """The page (examples/web) in headless Chromium: onnxruntime-web's WASM kernels embed the sentences and a query
    typed into its box. fp32 equals the Python runtime; int8's per-token activations round a few ties differently
    in WASM (MiniLM int8: 25 of 300 sentences below 0.9999, the least 0.99963), and 4-bit MatMulNBits computes in
    float there where native onnxruntime quantizes its activations (accuracy level 4; MiniLM web: least 0.9991),
    hence their own bound."""
    if not CHROMIUM:  # make test-browser installs Debian's chromium and requires the test to run
        if os.environ.get("ONNXFORGE_REQUIRE_BROWSER"):
            pytest.fail("ONNXFORGE_REQUIRE_BROWSER is set but no chromium is on PATH")
        pytest.skip("no chromium on this machine (make test-browser installs Debian's)")
    query = "how do I read a file line by line"
    shot = tmp_path / f"page-{variant}.png"
    with web_page(laid_out / variant, js_tests / "node_modules") as url:
        done = subprocess.run(["node", str(js_tests / "browser.mjs"), url + "?count=96", query, str(shot), CHROMIUM],
                              capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    page = json.loads(done.stdout)
    assert page["isolated"] and len(page["sentences"]) == 96 and shot.stat().st_size > 10_000
    runtime = load(laid_out / variant)
    vectors, query_vector = np.array(page["vectors"]), np.array(page["queryVector"])
    assert cosines(runtime.embed(page["sentences"]), vectors).min() >= least_cosine
    assert cosines(runtime.embed([query]), query_vector[None]).min() >= least_cosine
    # the page ranks by its own vectors, best first, and shows those sentences
    ranking = np.argsort(-(vectors @ query_vector), kind="stable")[: len(page["hits"])]
    assert [h["index"] for h in page["hits"]] == ranking.tolist()
    assert page["sentences"][ranking[0]] in page["shown"]
    if variant == "fp32":  # the Python runtime's own search finds the same sentence first
        expected = runtime.embed(page["sentences"]) @ runtime.embed([query])[0]
        assert page["hits"][0]["index"] == int(np.argmax(expected))
