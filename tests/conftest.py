"""Shared fixtures: tiny random-weight artifacts (fast) and the real MiniLM build (marker ``model``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `make test` runs the suite on one pytest-xdist worker per core: each worker's onnxruntime and torch then take its
# share of the cores instead of all of them (spinning thread pools that outnumber the cores slow every worker down).
if (workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    share = str(max(1, len(os.sched_getaffinity(0)) // workers))
    os.environ.setdefault("ONNXFORGE_NUM_THREADS", share)
    os.environ.setdefault("OMP_NUM_THREADS", share)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory) -> Path:
    from tests.tiny_models import make_encoder

    return make_encoder(tmp_path_factory.mktemp("tiny-bert-source"))


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, tiny_source) -> Path:
    from onnxforge.export import export

    out = tmp_path_factory.mktemp("artifacts") / "tiny-bert" / "fp32"
    export(tiny_source, out, "embed", name="tiny-bert")
    return out


@pytest.fixture(scope="session")
def decoder_source(tmp_path_factory):
    """family → the source directory of a tiny decoder trained on the corpus (trained once per session)."""
    from tests.tiny_models import make_decoder

    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = make_decoder(tmp_path_factory.mktemp(f"decoder-{family}-source"), family)
        return made[family]

    return get


@pytest.fixture(scope="session")
def decoder(decoder_source, tmp_path_factory):
    """(family, graph) → (transformers reference, artifact dir), exported once per session."""
    from onnxforge.export import ExportConfig, export
    from tests.decoding import TorchReference

    made: dict[tuple[str, str], tuple] = {}

    def get(family: str, graph: str = "auto"):
        if (family, graph) not in made:
            out = tmp_path_factory.mktemp(f"decoder-{family}-{graph}") / f"tiny-{family}" / "fp32"
            export(decoder_source(family), out, "generate", config=ExportConfig(graph=graph))
            made[family, graph] = (TorchReference(decoder_source(family)), out)
        return made[family, graph]

    return get


@pytest.fixture(scope="session")
def minilm_root(tmp_path_factory) -> Path:
    """The default recipe's MiniLM variants (artifacts.toml) built from scratch into a temporary root."""
    return _built(tmp_path_factory, "minilm-l6")


@pytest.fixture(scope="session")
def smollm2_root(tmp_path_factory) -> Path:
    """The default recipe's SmolLM2 fp32 and int4 (GGUF → HF → ONNX, gated int4) built into a temporary root."""
    return _built(tmp_path_factory, "smollm2-135m", ("fp32", "int4"))


def _built(tmp_path_factory, model: str, variants: tuple[str, ...] | None = None) -> Path:
    from onnxforge.build import build, parse

    root = tmp_path_factory.mktemp(f"{model}-build")
    wanted = [v.key for v in parse(ROOT / "artifacts.toml") if v.model == model and v.name in (variants or (v.name,))]
    build(ROOT / "artifacts.toml", root, only=wanted)
    return root


@pytest.fixture(scope="session")
def outlier_artifact(tmp_path_factory, tiny_source):
    """The tiny BERT with a few hidden channels scaled up 40x in every LayerNorm but the last: the activation
    outliers real transformers have and random weights lack, which make per-tensor int8 activations lossy.

    The last LayerNorm (whose output is pooled into the embedding) zeroes those channels: left in, they held over
    99.7 % of each embedding's squared norm, cosine saw differences of 1e-8 only and no gate could fail. The
    embedding is then the other channels, which carry what int8 did to every layer.
    """
    import torch
    from transformers import AutoModel

    from onnxforge.export import ExportConfig, Tolerance, export

    root = tmp_path_factory.mktemp("outliers")
    model = AutoModel.from_pretrained(tiny_source)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    with torch.no_grad():
        for norm in norms[:-1]:
            norm.weight[:3] *= 40.0
        norms[-1].weight[:3] = norms[-1].bias[:3] = 0.0
    model.save_pretrained(root / "source")
    for path in tiny_source.iterdir():
        if path.suffix in (".json", ".txt") and path.name != "config.json":
            (root / "source" / path.name).write_bytes(path.read_bytes())
    out = root / "outliers" / "fp32"
    export(root / "source", out, "embed", name="outliers", config=ExportConfig(tolerance=Tolerance(max_abs=1e-3)))
    return out

