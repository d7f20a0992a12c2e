"""ORT format: an artifact gains model.ort and the operator config a minimal onnxruntime build needs; the runtime
then loads the .ort graph, whose outputs are those of model.onnx."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest

from onnxforge import corpus
from onnxforge.artifact import verify
from onnxforge.build import parse
from onnxforge.ort_format import OPERATORS, ORT_MODEL, to_ort_format
from onnxforge.runtime import load

TEXTS = corpus.split(corpus.load()).evaluation[:24]


def test_an_embed_artifact_in_ort_format_embeds_as_its_onnx_graph(tiny_artifact, tmp_path):
    artifact = tmp_path / "tiny-ort"
    shutil.copytree(tiny_artifact, artifact)
    expected = load(artifact, providers="cpu").embed(TEXTS)
    manifest = to_ort_format(artifact)
    assert manifest.model_file == ORT_MODEL and verify(artifact).files.keys() >= {ORT_MODEL, OPERATORS, "model.onnx"}
    assert manifest.graph["format"] == "ort" and manifest.graph["ort_vs_onnx_max_abs_diff"] <= 1e-4
    operators = (artifact / OPERATORS).read_text()
    # what a minimal build must compile in: the fused contrib ops by domain and opset, and no staging path
    assert "com.microsoft;1;" in operators and "EmbedLayerNormalization" in operators and "tmp" not in operators
    ort_session = ort.InferenceSession(str(artifact / ORT_MODEL), providers=["CPUExecutionProvider"])
    assert [i.name for i in ort_session.get_inputs()] == [s.name for s in manifest.inputs]
    np.testing.assert_allclose(load(artifact, providers="cpu").embed(TEXTS), expected, atol=1e-5)


def test_a_decoder_in_ort_format_generates_as_its_onnx_graph(decoder_source, tmp_path):
    from onnxforge.export import export

    artifact = tmp_path / "tiny-llama"
    export(decoder_source("llama"), artifact, "generate")
    expected = load(artifact, providers="cpu").generate("An edge app", max_new_tokens=16)
    to_ort_format(artifact)
    assert load(artifact, providers="cpu").generate("An edge app", max_new_tokens=16) == expected


def test_the_recipe_names_its_format(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[m]\nsource="x"\ntask="embed"\n[m.variants.fp32]\nformat="tflite"\n')
    with pytest.raises(ValueError, match="format 'tflite'; supported: onnx, ort"):
        parse(recipe)
