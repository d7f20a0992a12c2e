"""export_module: any torch.nn.Module (here a small transformer block written in the test) → artifact → run()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxforge.artifact import verify
from onnxforge.export import ParityError, Tolerance, export_module
from onnxforge.runtime import load


class Block(torch.nn.Module):
    """Token embedding, multi-head self-attention with a residual and layer norm, and a dict of outputs.

    (torch.nn.MultiheadAttention is not used on purpose: the TorchScript exporter bakes its traced sequence
    length into a Reshape, which this export's parity check on other lengths catches and refuses.)
    """

    def __init__(self, vocab: int = 50, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Embedding(vocab, dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, 3)

    def attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = (t.reshape(batch, length, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        scores = q @ k.transpose(-1, -2) / (dim // self.heads) ** 0.5
        scores = scores.masked_fill(mask[:, None, None, :] == 0, -1e9)
        mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, dim)
        return self.out(mixed)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.embed(ids)
        hidden = self.norm(x + self.attention(x, mask))
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return {"hidden": hidden, "scores": self.head(pooled)}


def _inputs(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[0, length // 2 :] = 0  # one padded row
    return ids, mask


DYNAMIC = {"ids": {0: "batch", 1: "sequence"}, "mask": {0: "batch", 1: "sequence"}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    module = Block().eval()
    out = tmp_path_factory.mktemp("module") / "block" / "fp32"
    manifest = export_module(module, _inputs(2, 6), out, input_names=["ids", "mask"], dynamic=DYNAMIC)
    return module, out, manifest


def test_manifest_and_parity_cover_other_shapes(exported):
    _, out, manifest = exported
    assert verify(out).task == "module" and manifest.parity["cases"] == 4
    shapes = {tuple(s[0]) for s in manifest.parity["input_shapes"]}
    assert {(1, 1), (2, 6)} <= shapes and len(shapes) == 4  # batch/sequence at 1, traced and larger
    assert manifest.parity["max_abs_diff"] <= 1e-4
    assert [o.name for o in manifest.outputs] == ["hidden", "scores"]
    assert manifest.inputs[0].shape == ["batch", "sequence"]


@pytest.mark.parametrize("batch,length", [(1, 1), (3, 9), (5, 20)])
def test_runtime_matches_the_module(exported, batch, length):
    module, out, _ = exported
    ids, mask = _inputs(batch, length, seed=batch)
    with torch.no_grad():
        expected = module(ids, mask)
    got = load(out)({"ids": ids.numpy(), "mask": mask.numpy()})
    assert set(got) == {"hidden", "scores"}
    for name in got:
        np.testing.assert_allclose(got[name], expected[name].numpy(), atol=1e-4)


def test_bad_feeds_are_named(exported):
    _, out, _ = exported
    runner = load(out)
    with pytest.raises(ValueError, match="input 'ids' has dtype int32"):
        runner({"ids": np.zeros((1, 2), np.int32), "mask": np.ones((1, 2), np.int64)})


def test_argument_errors(tmp_path):
    module = Block()
    with pytest.raises(ValueError, match="example_inputs must be 2 tensors"):
        export_module(module, _inputs(1, 2)[:1], tmp_path / "a", input_names=["ids", "mask"])
    with pytest.raises(ValueError, match=r"dynamic names unknown inputs \['tokens'\]"):
        export_module(module, _inputs(1, 2), tmp_path / "a", input_names=["ids", "mask"], dynamic={"tokens": {0: "b"}})
    with pytest.raises(TypeError, match="must return a tensor, a tuple or a dict"):
        export_module(_ReturnsString(), [torch.ones(1)], tmp_path / "a", input_names=["x"])


class _ReturnsString(torch.nn.Module):
    def forward(self, x):
        return "not a tensor"


def test_a_module_that_bakes_in_its_traced_shape_is_refused(tmp_path):
    """torch.nn.MultiheadAttention under the TorchScript exporter: parity on other sizes catches the baked shape."""

    class Baked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = torch.nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attention(x, x, x, need_weights=False)[0]

    out = tmp_path / "baked" / "fp32"
    with pytest.raises(ParityError, match="fails on input shapes .* traced size baked in"):
        export_module(Baked(), [torch.randn(2, 5, 8)], out, input_names=["x"], dynamic={"x": {0: "b", 1: "s"}})
    assert not out.exists()


def test_parity_miss_leaves_no_artifact(tmp_path):
    out = tmp_path / "block" / "fp32"
    with pytest.raises(ParityError, match="outputs differ from PyTorch"):
        export_module(Block(), _inputs(2, 4), out, input_names=["ids", "mask"], dynamic=DYNAMIC,
                      tolerance=Tolerance(max_abs=1e-30))  # fmt: skip
    assert not out.exists()
