"""Every decoder family in ``onnxforge.export.families``: a tiny config of it (tests/tiny_models.py, trained briefly)
exported, then checked against transformers here, not through the manifest's parity figures.

Per family: logits at lengths before and well past its sliding window (and Phi-3's LongRoPE switch); transformers
with the family's mechanism taken away disagrees, so the lengths and the config exercise it; decode steps through the
cache give transformers' logits at each position (``make cache-faults`` breaks that cache); greedy tokens equal
transformers' ``generate``; the int4 gate runs and its figures, recomputed here, hold.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxforge.artifact import read_manifest
from onnxforge.export.families import FAMILIES, HEADERS, of_kind, rows
from onnxforge.runtime import load
from onnxforge.runtime.decoder import greedy
from tests.conftest import ROOT
from tests.decoding import check_quantized, held_out_passages
from tests.tiny_models import SHORT_CONTEXT, WINDOW, WITHOUT_MECHANISM

DECODERS = of_kind("decoder")
LENGTHS = (8, 2 * WINDOW + 3, 150)  # before the window, past it, past it and past Phi-3's short context
ATOL = 1e-3


def _ids(generator, count: int) -> list[int]:
    """``count`` held-out tokens, passages joined."""
    ids = [i for passage in held_out_passages(generator, 4) for i in passage]
    assert len(ids) >= count
    return ids[:count]


@pytest.mark.parametrize("family", DECODERS)
def test_logits_match_transformers_at_every_length_and_the_mechanism_shows(decoder, decoder_source, family):
    from transformers import AutoModelForCausalLM

    reference, artifact = decoder(family)
    assert read_manifest(artifact).graph["builder"] == ("onnxforge" if FAMILIES[family].fused_graph else "optimum")
    generator = load(artifact, providers="cpu")
    ids = _ids(generator, max(LENGTHS))
    for length in LENGTHS:
        np.testing.assert_allclose(generator.decoder.logits(ids[:length]), reference.logits(ids[:length]), atol=ATOL)
    if WITHOUT_MECHANISM[family]:  # every decoder row names one ({} where no config switch takes it away)
        ablated = AutoModelForCausalLM.from_pretrained(decoder_source(family), **WITHOUT_MECHANISM[family]).eval()
        with torch.no_grad():
            without = ablated(torch.tensor([ids]), use_cache=False).logits[0].numpy()
        assert np.abs(generator.decoder.logits(ids) - without).max() > 100 * ATOL


def test_gemma2_attention_soft_capping_holds_where_transformers_default_drops_it(decoder, decoder_source):
    """transformers' default attention (SDPA) skips Gemma 2's attention soft-capping; export and its references use
    eager attention, which applies it, and the tiny config's cap of 5 moves the logits."""
    from transformers import AutoModelForCausalLM

    _, artifact = decoder("gemma2")
    generator = load(artifact, providers="cpu")
    ids = _ids(generator, 2 * WINDOW)
    sdpa = AutoModelForCausalLM.from_pretrained(decoder_source("gemma2"), attn_implementation="sdpa").eval()
    with torch.no_grad():
        dropped = sdpa(torch.tensor([ids]), use_cache=False).logits[0].numpy()
    assert np.abs(generator.decoder.logits(ids) - dropped).max() > 100 * ATOL


@pytest.mark.parametrize("family", DECODERS)
def test_decode_steps_through_the_cache_give_transformers_logits(decoder, family):
    """Prefill 8 tokens, then one per step past the sliding window (Phi-3: up to its short context, where a full
    pass and a cached one pick the same factors)."""
    reference, artifact = decoder(family)
    generator = load(artifact, providers="cpu")
    ids = _ids(generator, SHORT_CONTEXT)
    cache = generator.decoder.empty(len(ids))
    steps = [generator.decoder.forward(cache, ids[:8])] + [generator.decoder.forward(cache, [t]) for t in ids[8:]]
    np.testing.assert_allclose(np.stack(steps), reference.logits(ids)[7:], atol=ATOL)


@pytest.mark.parametrize("family", DECODERS)
def test_greedy_tokens_equal_transformers_generate(decoder, family):
    """From a prompt just short of Phi-3's short context, 24 new tokens: across LongRoPE's switch (transformers
    picks the factors per call, as the exported graph does) and far past every sliding window. The logits each step
    picked from equal generate's too: tokens alone survived a cache one position off (tiny Gemma 2 and OLMo)."""
    reference, artifact = decoder(family)
    generator = load(artifact, providers="cpu")
    ids = _ids(generator, SHORT_CONTEXT - 8)
    eos = sorted(generator.eos)
    with torch.no_grad():
        out = reference.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                       max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=eos[0],
                                       output_logits=True, return_dict_in_generate=True)  # fmt: skip
    expected = [t for t in out.sequences[0, len(ids) :].tolist() if t not in eos]
    seen: list[np.ndarray] = []

    def recording(logits: np.ndarray, previous) -> int:
        seen.append(logits.copy())
        return greedy(logits, previous)

    assert len(expected) >= 8
    assert list(generator.decoder.continuation(ids, 24, recording, frozenset(eos))) == expected
    steps = min(len(seen), len(out.logits))
    np.testing.assert_allclose(np.stack(seen[:steps]), torch.cat(out.logits[:steps]).numpy(), atol=ATOL)


@pytest.mark.parametrize("family", DECODERS)
def test_int4_gate_runs_and_its_figures_hold(decoder, family, tmp_path):
    import onnx

    from onnxforge.quantization import Gate, WeightOnlyConfig, quantize
    from onnxforge.quantization.smooth import weight_matmuls

    reference, artifact = decoder(family)
    out = tmp_path / f"tiny-{family}" / "int4"
    gate = {"next_token_agreement": 0.5}
    manifest = quantize(artifact, out, WeightOnlyConfig(bits=4), Gate(gate))
    assert manifest.graph["fused_ops"]["MatMulNBits"] >= 4 and not weight_matmuls(onnx.load(str(out / "model.onnx")))
    check_quantized(reference, manifest, out, gate)


def test_every_family_in_the_table_has_a_tiny_model_under_test():
    from tests.tiny_models import DECODERS, SEQ2SEQ
    from tests.tiny_models import FAMILIES as ENCODERS

    assert set(of_kind("encoder")) == set(ENCODERS) and set(of_kind("decoder")) == set(DECODERS) == set(WITHOUT_MECHANISM)
    assert set(of_kind("seq2seq")) == set(SEQ2SEQ)


def test_an_unsupported_family_is_refused_naming_the_supported_ones():
    from onnxforge.export.families import family

    with pytest.raises(ValueError, match=r"'mamba' is not supported by onnxforge export for task 'generate'; supported: llama"):
        family("mamba", "decoder", "generate")
    with pytest.raises(ValueError, match=r"'mistral' is not supported.*task 'embed'; supported: bert"):
        family("mistral", "encoder", "embed")


def test_the_fused_graph_takes_only_configs_it_implements():
    """Biases under any family's key, rope scaling or a head size GroupQueryAttention's CPU kernel lacks send a fused
    family to the traced export; a family without the row's flag never gets the fused graph."""
    from onnxforge.export.llama_graph import supported

    plain = {"hidden_size": 64, "num_attention_heads": 4}
    assert supported({**plain, "model_type": "ernie4_5"}) and supported({**plain, "model_type": "llama"})
    assert not supported({**plain, "model_type": "ernie4_5", "use_bias": True})
    assert not supported({**plain, "model_type": "llama", "attention_bias": True})
    assert not supported({**plain, "model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    assert not supported({**plain, "model_type": "llama", "head_dim": 24})
    assert not supported({**plain, "model_type": "glm"})


def test_a_family_that_needs_a_state_cache_is_refused_naming_what_it_lacks():
    from onnxforge.export.families import family

    with pytest.raises(ValueError, match=r"'lfm2' is not supported.*: it needs a convolution state cache .*which onnxforge lacks"):
        family("lfm2", "decoder", "generate")


def test_a_traced_mixture_of_experts_keeps_the_experts_its_trace_input_never_used():
    """PhiMoE's own forward skips experts no token was routed to: traced on such an input, they would be gone."""
    from transformers import PhimoeConfig
    from transformers.models.phimoe.modeling_phimoe import PhimoeSparseMoeBlock

    from onnxforge.export.optimum_configs import every_expert_forward

    torch.manual_seed(0)
    block = PhimoeSparseMoeBlock(PhimoeConfig(hidden_size=8, intermediate_size=16, num_local_experts=4)).eval()
    block.requires_grad_(False)
    with torch.no_grad():  # feature 0's sign routes: positive to experts 3 and 1, negative to 2 and 0
        block.gate.weight.zero_()
        block.gate.weight[:, 0] = torch.tensor([1.0, 2.0, -5.0, 5.0])
    positive = torch.rand(1, 3, 8) + 0.1
    with torch.no_grad():
        traced = torch.jit.trace(lambda hidden: every_expert_forward(block, hidden)[0], positive, check_trace=False)
        expected = block(-positive)[0]
        assert expected.abs().max() > 0.01
        torch.testing.assert_close(traced(-positive), expected)


def test_the_readme_family_table_is_the_table():
    """The README lists each family as ``onnxforge families`` does (tasks, GGUF, mechanisms, graph)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| " + " | ".join(HEADERS) + " |") :].split("\n\n")[0].splitlines()[2:]
    listed = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    expected = [[f"`{name}`", tasks, f"`{gguf}`" if gguf else "", mechanisms, graph] for name, tasks, gguf, mechanisms, graph in rows()]
    assert listed == expected


def test_the_cli_lists_every_family(capsys):
    from onnxforge.cli import main

    assert main(["families"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:]] == [row[0] for row in rows()]
    assert "LongRoPE" in next(line for line in lines if line.startswith("phi3 "))
