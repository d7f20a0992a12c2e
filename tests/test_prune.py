"""Width pruning of a student's feed-forward blocks: which neurons stay, how they are re-fitted, and what that keeps."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from onnxforge import corpus
from onnxforge.distill import DistillConfig, distill
from onnxforge.distill.objectives import OBJECTIVES
from onnxforge.distill.prune import FFNS, kept_count, narrow, surgeon
from onnxforge.quantization.fidelity import embedding_fidelity
from onnxforge.runtime import load
from tests.tiny_models import make_encoder

TEACHER = {"num_hidden_layers": 3, "initializer_range": 0.2}  # random blocks that move the embedding (see test_distill)


def test_kept_neurons_are_a_whole_number_of_tiles():
    assert [kept_count(1536, f) for f in (1.0, 0.75, 0.6, 0.5)] == [1536, 1152, 928, 768]
    assert kept_count(64, 0.1) == 32 and kept_count(48, 1.0) == 48  # at least one tile; never more than there are
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=rf"ffn_keep {bad}: .* must be in \(0, 1\]"):
            kept_count(1536, bad)
    with pytest.raises(ValueError, match=r"ffn_keep 2"):
        DistillConfig(ffn_keep=2)  # refused before a model is loaded


def test_the_surgeon_finds_the_neurons_a_target_is_made_of():
    rng = np.random.default_rng(0)
    inputs = torch.tensor(rng.normal(size=(400, 12)))
    weights, bias = torch.tensor(rng.normal(size=(3, 5))), torch.tensor(rng.normal(size=5))
    noise = 1e-3 * torch.tensor(rng.normal(size=(400, 5)))
    targets = inputs[:, [1, 4, 7]] @ weights + bias + noise + 0.05 * inputs[:, [0]]  # a faint fourth neuron
    kept, fit = surgeon(inputs, targets, 3, ridge=1e-9)
    assert kept.tolist() == [1, 4, 7]
    np.testing.assert_allclose(fit.numpy(), torch.cat([weights, bias[None]]).numpy(), atol=0.02)
    kept, fit = surgeon(inputs, targets, 4, ridge=1e-9)  # one more: the faint one
    assert kept.tolist() == [0, 1, 4, 7] and fit[0].abs().max() == pytest.approx(0.05, abs=0.01)



def test_the_kept_neurons_are_refitted_by_the_same_ridge_regression_the_choice_used():
    # a ridge large enough to matter: the final weights must be the ridge solution over the kept columns, with the
    # penalty counted once (ridge × the mean diagonal of the whole design's Gram matrix, bias column included)
    rng = np.random.default_rng(4)
    inputs = torch.tensor(rng.normal(size=(200, 8)))
    targets = inputs[:, :5] @ torch.tensor(rng.normal(size=(5, 2))) + 0.3 * torch.tensor(rng.normal(size=(200, 2)))
    kept, fit = surgeon(inputs, targets, 5, ridge=0.2)
    design = torch.cat([inputs, torch.ones(200, 1, dtype=inputs.dtype)], 1)
    penalty = 0.2 * (design.T @ design).diagonal().mean()
    columns = design[:, [*kept.tolist(), 8]]
    wanted = torch.linalg.solve(columns.T @ columns + penalty * torch.eye(6, dtype=columns.dtype), columns.T @ targets)
    np.testing.assert_allclose(fit.numpy(), wanted.numpy(), rtol=1e-9, atol=1e-12)

def _backward_elimination(inputs: torch.Tensor, targets: torch.Tensor, keep: int) -> list[int]:
    """The reference: drop, one at a time, the column whose removal leaves the smallest least-squares error, each
    candidate re-fitted from scratch."""

    def error(columns: list[int]) -> float:
        design = torch.cat([inputs[:, columns], torch.ones(len(inputs), 1, dtype=inputs.dtype)], 1)
        fit = torch.linalg.lstsq(design, targets).solution
        return float((design @ fit - targets).pow(2).sum())

    alive = list(range(inputs.shape[1]))
    while len(alive) > keep:
        alive.remove(min(alive, key=lambda j: error([c for c in alive if c != j])))
    return alive


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_surgeon_removes_neurons_as_refitting_each_candidate_would(seed):
    # correlated neurons, so that which one goes depends on what has gone before
    rng = np.random.default_rng(seed)
    inputs = torch.tensor(rng.normal(size=(300, 4)) @ rng.normal(size=(4, 10)) + 0.3 * rng.normal(size=(300, 10)))
    targets = inputs @ torch.tensor(rng.normal(size=(10, 3))) + 0.1 * torch.tensor(rng.normal(size=(300, 3)))
    kept, _ = surgeon(inputs, targets, 4, ridge=1e-12)
    assert kept.tolist() == _backward_elimination(inputs, targets, 4)


def _largest(model: nn.Module, keep: int) -> nn.Module:
    """The naive baseline: each block keeps the neurons of largest |up| · |down| weight, unchanged."""
    from onnxforge.distill.student import layer_stack

    ffn = FFNS[model.config.model_type]
    for block in model.get_submodule(layer_stack(model)):
        up, down = block.get_submodule(ffn.up), block.get_submodule(ffn.down)
        kept = torch.topk(up.weight.norm(dim=1) * down.weight.norm(dim=0), keep).indices
        narrow(block, ffn, kept, down.weight[:, kept], down.bias)
    return model


@pytest.mark.parametrize("family", sorted(FFNS))
def test_a_pruned_student_keeps_its_teacher_far_better_than_its_largest_neurons(tmp_path, family):
    import transformers

    from onnxforge.export import export

    teacher = make_encoder(tmp_path / "teacher", family, **TEACHER)
    record = distill(teacher, tmp_path / "student", "embed", DistillConfig(layers=(0, 1, 2), ffn_keep=0.5, epochs=0))
    assert record["ffn_neurons"] == [32, 64] and record["steps"] == 0
    assert json.loads((tmp_path / "student" / "config.json").read_text())[FFNS[family].size_key] == 32
    # measured on the exported graphs (parity-checked against the pruned weights), not read from the record
    export(teacher, tmp_path / "teacher-onnx", task="embed")
    export(tmp_path / "student", tmp_path / "student-onnx", task="embed")
    texts = corpus.split(corpus.load()).evaluation[:300]
    wanted = load(tmp_path / "teacher-onnx").embed(texts)
    pruned = embedding_fidelity(wanted, load(tmp_path / "student-onnx").embed(texts))
    naive = _largest(transformers.AutoModel.from_pretrained(teacher).eval(), 32)
    batch = transformers.AutoTokenizer.from_pretrained(teacher)(texts, padding=True, truncation=True, return_tensors="pt")
    embed = OBJECTIVES["embed"]
    with torch.no_grad():
        pooled = torch.nn.functional.normalize(embed.head(naive(**batch), batch, embed.setup(teacher)), dim=-1).numpy()
    largest = embedding_fidelity(wanted, pooled)
    assert pruned["mean_cosine"] > 0.95 and largest["mean_cosine"] < 0.8, (pruned, largest)
    assert pruned["mean_cosine"] == pytest.approx(record["held_out"]["mean_cosine"], abs=0.01)


def test_an_architecture_without_a_pruning_entry_is_refused_by_name(tmp_path):
    teacher = make_encoder(tmp_path / "teacher", "modernbert", **TEACHER)  # a gated MLP, pre-LayerNorm: not the rule
    with pytest.raises(ValueError, match=r"modernbert: no feed-forward pruning for this architecture; supported: bert"):
        distill(teacher, tmp_path / "student", "embed", DistillConfig(layers=(0, 1, 2), ffn_keep=0.5, epochs=0))


def test_each_pruned_block_fits_the_teachers_sum_not_only_its_own_feed_forward(tmp_path):
    """A block's output (its input plus its feed-forward) is the least-squares fit of the teacher block's on the
    calibration tokens: the residual is orthogonal to the kept neurons, so the block also undoes the drift of the
    blocks pruned before it."""
    import transformers

    from onnxforge.distill.prune import _captured, prune_ffn

    teacher_dir = make_encoder(tmp_path / "teacher", **TEACHER)
    teacher = transformers.AutoModel.from_pretrained(teacher_dir).eval()
    texts = corpus.split(corpus.load()).calibration[:256]
    tokenizer = transformers.AutoTokenizer.from_pretrained(teacher_dir)
    batches = [tokenizer(texts[i : i + 64], padding=True, return_tensors="pt") for i in range(0, len(texts), 64)]
    student = prune_ffn(copy.deepcopy(teacher), teacher, (0, 1, 2), 0.5, batches)
    ffn, last = FFNS["bert"], 2
    mine = _captured(student, [(last, "up_in"), (last, "down_in"), (last, "down_out")], ffn, batches)
    theirs = _captured(teacher, [(last, "up_in"), (last, "down_out")], ffn, batches)
    residual = (mine[last, "up_in"] + mine[last, "down_out"]) - (theirs[last, "up_in"] + theirs[last, "down_out"])
    neurons = torch.cat([mine[last, "down_in"], torch.ones(len(residual), 1)], 1)
    assert residual.abs().max() > 0.01  # the teacher is not reproduced exactly: the test below has something to show
    overlap = (neurons.T @ residual).norm() / (neurons.norm() * residual.norm())
    assert overlap < 1e-3, overlap.item()
