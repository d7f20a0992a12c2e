"""A GGUF's own blocks kept exactly: each ggml format decodes as the ``gguf`` package de-quantizes it, and decoders
written to real GGUF files (one format per file, and formats mixed per tensor) run in onnxforge with the logits and
greedy tokens of PyTorch on the file's de-quantized weights."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxforge import sources
from onnxforge.export import export
from onnxforge.export.families import FAMILIES
from onnxforge.quantization import Gate, WeightOnlyConfig, quantize
from onnxforge.quantization.ggml_blocks import FORMATS, decode
from onnxforge.quantization.smooth import weight_matmuls
from onnxforge.runtime import load
from onnxforge.runtime.decoder import greedy
from tests.decoding import TorchReference, held_out_passages
from tests.gguf_files import make_k_quant_decoder, random_blocks, write_gguf

LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")
# Formats mixed per tensor, as published files mix them: packed projections (q/k/v, gate/up) join different ones.
MIXED = {"attn_q": "Q4_0", "attn_k": "Q4_1", "attn_v": "Q8_0", "attn_output": "Q5_1", "ffn_gate": "Q4_1",
         "ffn_up": "Q5_0", "ffn_down": "Q8_0", "token_embd": "Q8_0", "output": "Q4_0"}  # fmt: skip
MIXED_K = {"attn_q": "Q4_K", "attn_k": "Q5_K", "attn_v": "Q6_K", "attn_output": "Q5_K", "ffn_gate": "Q4_K",
           "ffn_up": "Q6_K", "ffn_down": "Q4_K", "token_embd": "Q4_K", "output": "Q6_K"}  # fmt: skip
CASES = [("llama", f) for f in LEGACY + K_QUANTS] + [("qwen2", "mixed"), ("qwen2", "mixed-k")]
# Every other family with a GGUF route in export.families, one legacy format each (their traced graphs keep q, k
# and v apart, GPT-2's projections are transposed Conv1Ds, Nemotron's norms are stored as 1 + w)
CASES += list(zip([f for f, row in FAMILIES.items() if row.gguf and f not in ("llama", "qwen2")], LEGACY * 2))
RELATIVE = 1e-4  # logits at accuracy level 0, relative to the largest logit


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_decodes_as_the_gguf_package_dequantizes(fmt):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    raw = random_blocks(fmt, (8, 512), np.random.default_rng(1))
    blocks = decode(fmt, raw)
    assert np.array_equal(blocks.values(), dequantize(raw, GGMLQuantizationType[fmt]))
    assert blocks.codes.max() < 1 << (4 if FORMATS[fmt].bits == 4 else 6 if fmt == "Q6_K" else 8)
    assert blocks.split(16).values().tobytes() == blocks.values().tobytes()
    centred = blocks.centred()  # offsets moved onto integer zero points where they fit: same weights
    assert np.array_equal(centred.values(), blocks.values())
    if blocks.offsets is not None:
        assert np.abs(centred.offsets).mean() < np.abs(blocks.offsets).mean()


def test_an_unknown_format_is_named():
    with pytest.raises(ValueError, match="Q2_K.*not supported"):
        decode("Q2_K", np.zeros((1, 84), np.uint8))


def _format_of(case: str):
    if case in ("mixed", "mixed-k"):
        table = MIXED if case == "mixed" else MIXED_K
        return lambda name: table[name.split(".")[-2]]
    return lambda name: case


def _expected(case: str) -> set[str]:
    """The formats each node of the file's weights must report (packed projections join theirs)."""
    if case == "mixed":
        return {"Q4_0+Q4_1+Q8_0", "Q5_1", "Q4_1+Q5_0", "Q8_0", "Q4_0"}
    if case == "mixed-k":
        return {"Q4_K+Q5_K+Q6_K", "Q5_K", "Q4_K+Q6_K", "Q4_K", "Q6_K"}
    return {case}


@pytest.fixture(scope="module")
def k_quant_source(tmp_path_factory):
    made = {}

    def get(family: str):
        if family not in made:
            made[family] = make_k_quant_decoder(tmp_path_factory.mktemp(f"k-{family}"), family)
        return made[family]

    return get


@pytest.mark.parametrize(("family", "case"), CASES)
def test_a_gguf_decoder_keeps_the_files_blocks_exactly(family, case, decoder_source, k_quant_source, tmp_path,
                                                        monkeypatch):  # fmt: skip
    monkeypatch.setenv("ONNXFORGE_CACHE", str(tmp_path / "cache"))
    k_shaped = case == "mixed-k" or case.endswith("_K")
    hf = k_quant_source(family) if k_shaped else decoder_source(family)
    gguf = write_gguf(hf, tmp_path / f"{family}-{case}.gguf", _format_of(case))
    source = sources.resolve(gguf)  # transformers de-quantizes the file: the reference runs on exactly its weights
    assert source.gguf == gguf
    _assert_rotary_kept(json.loads((hf / "config.json").read_text()), source.config)
    export(gguf, tmp_path / "fp32", "generate", name=f"{family}-{case}")
    manifest = quantize(tmp_path / "fp32", tmp_path / "int4", WeightOnlyConfig(bits=4, accuracy_level=0), Gate({}),
                        gguf=gguf)  # fmt: skip

    kept = manifest.precision["gguf_blocks"]
    assert kept["file"] == gguf.name and set(kept["nodes"].values()) == _expected(case)
    fp32 = onnx.load(str(tmp_path / "fp32" / "model.onnx"))
    tables = {t.name for t in fp32.graph.initializer}
    products = sum(map(len, weight_matmuls(fp32).values()))
    products += sum(n.op_type == "Gather" and n.input[0] in tables for n in fp32.graph.node)
    assert len(kept["nodes"]) == products  # every weight product and embedding table holds the file's blocks
    if family in ("llama", "qwen2"):  # the fused graph: packed QKV and gate/up, so 4 a layer, the table and the head
        assert len(kept["nodes"]) == 4 * (1 if k_shaped else 2) + 2
    generator = load(tmp_path / "int4", providers="cpu")
    reference = TorchReference(source.path)
    ids = held_out_passages(generator, 1)[0][:48]
    logits = generator.loaded.session.run(["logits"], generator.decoder.feeds(ids))[0][0]
    want = reference.logits(ids)
    error = float(np.abs(logits - want).max() / np.abs(want).max())
    print(f"{family} {case}: max logit error {error:.2e} relative to the largest logit")
    assert error <= RELATIVE
    prompt = ids[:16]
    assert list(generator.decoder.continuation(prompt, 16, greedy, generator.eos)) == reference.continuation(prompt, 16)


def _assert_rotary_kept(original: dict, imported: dict) -> None:
    """The imported config rotates as the original: partial rotary and LongRoPE's factors, which transformers'
    conversion drops for Phi-3 (onnxforge.sources.gguf.rotary_settings puts them back from the file)."""
    for key in ("partial_rotary_factor", "original_max_position_embeddings"):
        if key in original:
            assert imported.get(key) == pytest.approx(original[key]), key
    if scaling := original.get("rope_scaling"):
        for key in ("short_factor", "long_factor"):
            assert np.allclose(imported["rope_scaling"][key], scaling[key]), key


def test_requantize_ignores_the_files_blocks(decoder_source, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXFORGE_CACHE", str(tmp_path / "cache"))
    gguf = write_gguf(decoder_source("llama"), tmp_path / "q4_1.gguf", lambda name: "Q4_1")
    export(gguf, tmp_path / "fp32", "generate", name="requantized")
    manifest = quantize(tmp_path / "fp32", tmp_path / "int4", WeightOnlyConfig(bits=4, requantize=True), Gate({}),
                        gguf=gguf)  # fmt: skip
    assert "gguf_blocks" not in manifest.precision and manifest.precision["requantize"] is True
