"""Width pruning: each feed-forward block of the student keeps a fraction of its neurons, chosen and re-fitted layer by
layer on calibration tokens so that the block reproduces the teacher's.

Per block: the kept neurons are picked by greedy optimal brain surgeon over the block's output projection (remove the
neuron whose loss of least-squares fit is smallest, update the rest, repeat), then the projection is re-fitted by
least squares. Blocks are pruned in order and each one's target is the teacher's residual sum minus the student's own
residual, so a block also corrects the error of the blocks pruned before it. No gradient step: minutes on 2 cores.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .student import layer_stack

ALIGN = 32  # kept neurons per block: a multiple of this, so the narrower MatMuls keep whole kernel tiles


@dataclass(frozen=True)
class Ffn:
    up: str  # the block's first Linear (hidden → neurons), relative to a layer
    down: str  # its output projection (neurons → hidden), whose output is added to the up projection's input
    size_key: str  # the config field holding the neuron count


# Post-LayerNorm encoders whose feed-forward output is added to its own input: LayerNorm(x + down(act(up(x)))).
FFNS: dict[str, Ffn] = {
    "bert": Ffn("intermediate.dense", "output.dense", "intermediate_size"),
    "roberta": Ffn("intermediate.dense", "output.dense", "intermediate_size"),
    "xlm-roberta": Ffn("intermediate.dense", "output.dense", "intermediate_size"),
    "distilbert": Ffn("ffn.lin1", "ffn.lin2", "hidden_dim"),
}  # fmt: skip


def kept_count(neurons: int, fraction: float) -> int:
    """Neurons a block keeps: ``fraction`` of ``neurons`` rounded to a multiple of :data:`ALIGN` (at least one)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"ffn_keep {fraction}: the fraction of feed-forward neurons kept must be in (0, 1]")
    return min(neurons, max(ALIGN, round(fraction * neurons / ALIGN) * ALIGN))


def surgeon(inputs: torch.Tensor, targets: torch.Tensor, keep: int, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns of ``inputs`` (tokens × neurons) to keep and the weights ((keep + 1) × outputs, bias last) that best
    map them to ``targets`` by least squares: neurons removed one at a time, each the one whose removal raises the
    fit's error least (w·w / [H⁻¹]ⱼⱼ), the others' weights and H⁻¹ updated after each; then the kept ones re-fitted
    (with the same ridge)."""
    neurons = inputs.shape[1]
    biased = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], 1).double()
    hessian = _regularised(biased.T @ biased, ridge)
    inverse = torch.linalg.inv(hessian)
    moment = biased.T @ targets.double()
    weights = inverse @ moment
    alive = torch.ones(neurons + 1, dtype=torch.bool)
    for _ in range(neurons - keep):
        cost = weights.pow(2).sum(1) / inverse.diagonal()
        cost[~alive] = torch.inf
        cost[neurons] = torch.inf  # the bias stays
        j = int(torch.argmin(cost))
        weights -= torch.outer(inverse[:, j], weights[j]) / inverse[j, j]
        inverse -= torch.outer(inverse[:, j], inverse[j]) / inverse[j, j]
        alive[j] = False
    kept = torch.nonzero(alive[:neurons]).flatten()
    rows = torch.cat([kept, torch.tensor([neurons])])
    return kept, torch.linalg.solve(hessian[rows][:, rows], moment[rows])  # the ridge is in hessian already


def _regularised(hessian: torch.Tensor, ridge: float) -> torch.Tensor:
    return hessian + ridge * hessian.diagonal().mean() * torch.eye(len(hessian), dtype=hessian.dtype)


def prune_ffn(student: nn.Module, teacher: nn.Module, layers: tuple[int, ...], fraction: float,
              batches: Iterable[dict]) -> nn.Module:  # fmt: skip
    """Shrink each of ``student``'s feed-forward blocks (block i is the teacher's ``layers[i]``) in place to
    ``fraction`` of its neurons, fitted on ``batches``' real tokens; returns ``student``."""
    model_type = student.config.model_type
    if model_type not in FFNS:
        raise ValueError(f"{model_type}: no feed-forward pruning for this architecture; supported: {', '.join(FFNS)}")
    ffn, batches = FFNS[model_type], list(batches)
    keep = kept_count(getattr(student.config, ffn.size_key), fraction)
    wanted = _captured(teacher, [(layers[i], s) for i in range(len(layers)) for s in ("up_in", "down_out")], ffn, batches)
    blocks = student.get_submodule(layer_stack(student))
    with torch.no_grad():
        for i, block in enumerate(blocks):
            got = _captured(student, [(i, "up_in"), (i, "down_in")], ffn, batches)
            x, neurons = got[i, "up_in"], got[i, "down_in"]
            target = wanted[layers[i], "down_out"] + wanted[layers[i], "up_in"] - x  # the teacher's sum, less ours
            kept, fit = surgeon(neurons, target, keep)
            narrow(block, ffn, kept, fit[:-1].T, fit[-1])
    setattr(student.config, ffn.size_key, keep)
    return student


def narrow(block: nn.Module, ffn: Ffn, kept: torch.Tensor, down_weight: torch.Tensor, down_bias: torch.Tensor) -> None:
    """Replace ``block``'s two projections by ones over the ``kept`` neurons only: the up projection's rows of them,
    and an output projection of the weights and bias given."""
    up, down = block.get_submodule(ffn.up), block.get_submodule(ffn.down)
    narrow_up, narrow_down = nn.Linear(up.in_features, len(kept)), nn.Linear(len(kept), down.out_features)
    with torch.no_grad():
        narrow_up.weight.copy_(up.weight[kept])
        narrow_up.bias.copy_(up.bias[kept])
        narrow_down.weight.copy_(down_weight)
        narrow_down.bias.copy_(down_bias)
    for name, module in ((ffn.up, narrow_up), (ffn.down, narrow_down)):
        parent, _, attribute = name.rpartition(".")
        setattr(block.get_submodule(parent), attribute, module)


class _Enough(Exception):
    """Raised after the deepest block wanted has run: the blocks after it need not."""


def _captured(model: nn.Module, wanted: list[tuple[int, str]], ffn: Ffn, batches: list[dict]) -> dict:
    """{(layer, what): real-token rows} of ``model`` in eval mode; what is up_in (the block's input), down_in (its
    neurons) or down_out (its output projection's result)."""
    blocks = model.get_submodule(layer_stack(model))
    last = max(layer for layer, _ in wanted)
    rows: dict = {key: [] for key in wanted}
    mask: list[torch.Tensor] = []

    def hook(key: tuple[int, str]):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            rows[key].append((output if key[1] == "down_out" else args[0])[mask[0]])

        return record

    def stop(module: nn.Module, args: tuple, output: object) -> None:
        raise _Enough

    handles = [blocks[layer].get_submodule(ffn.up if what == "up_in" else ffn.down).register_forward_hook(hook((layer, what)))
               for layer, what in wanted]  # fmt: skip
    handles.append(blocks[last].register_forward_hook(stop))
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                mask[:] = [batch["attention_mask"].bool()]
                try:
                    model(**batch)
                except _Enough:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return {key: torch.cat(value) for key, value in rows.items()}
