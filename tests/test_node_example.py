"""The Node.js example (examples/node): an app in another language embeds with an artifact, no Python at run time.

Run when ``node`` and ``npm`` are on the machine (its packages come from npm into .cache/node-example, once);
skipped with the reason otherwise. Its vectors must be the Python runtime's.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from onnxforge import corpus
from onnxforge.runtime import load
from tests.conftest import ROOT
from tests.npm import project

EXAMPLE = ROOT / "examples" / "node"


@pytest.fixture(scope="module")
def example():
    """examples/node with its node_modules, in .cache/node-example."""
    return project(EXAMPLE, "node-example", ("embed.mjs",), "onnxruntime-node") / "embed.mjs"


def _node_embed(script, artifact, texts: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(script), str(artifact), *texts], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def test_node_vectors_are_the_python_runtimes(example, tiny_artifact):
    texts = corpus.split(corpus.load()).evaluation[:8] + ["word " * 2000]  # the last one is cut to max_length
    done = _node_embed(example, tiny_artifact, texts)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    vectors = np.array(result["vectors"], dtype=np.float32)
    expected = load(tiny_artifact, providers="cpu").embed(texts)
    assert vectors.shape == expected.shape and result["dim"] == expected.shape[1]
    cosines = (vectors * expected).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= 0.9999


def test_node_refuses_an_artifact_whose_file_changed(example, tiny_artifact, tmp_path):
    copy = tmp_path / "changed"
    shutil.copytree(tiny_artifact, copy)
    tokenizer = copy / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"[CLS]"', '"[CLX]"', 1))
    done = _node_embed(example, copy, ["text"])
    assert done.returncode != 0 and "tokenizer.json: sha256 differs from the manifest's" in done.stderr
