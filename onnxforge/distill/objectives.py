"""What a student learns per task, as a table: the output it matches, the loss, and the held-out form the task's
gate figures compare (``quantization.gate.FIGURES``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..export.pooling import pooling_of
from .losses import embedding_loss, soft_label_kl

Batch = Any  # a tokenizer's BatchEncoding of torch tensors


@dataclass(frozen=True)
class Objective:
    head: Callable[[Any, Batch, Any], torch.Tensor]  # (model output, batch, setup) → what the student matches
    loss: Callable[[torch.Tensor, torch.Tensor, Batch, float], torch.Tensor]  # (student, teacher, batch, temperature)
    held_out: Callable[[list[torch.Tensor], list[Batch]], Any]  # heads of all batches → the gate's outputs
    setup: Callable[[Path], Any] = lambda _: None  # read once from the teacher's directory


def _pooled(output: Any, batch: Batch, pooling: Any) -> torch.Tensor:
    """The sentence embedding before normalisation (the teacher's pooling, as the exported graph pools)."""
    hidden = output.last_hidden_state
    if pooling.mode == "cls":
        return hidden[:, 0]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _per_text(heads: list[torch.Tensor], batches: list[Batch]) -> list[np.ndarray]:
    """One row per text; per-token rows cut to the text's real tokens."""
    rows = []
    for head, batch in zip(heads, batches):
        for value, length in zip(head.numpy(), batch["attention_mask"].sum(1).tolist()):
            rows.append(value[:length] if head.ndim == 3 else value)
    return rows


OBJECTIVES: dict[str, Objective] = {
    "embed": Objective(
        head=_pooled, loss=lambda s, t, batch, temperature: embedding_loss(s, t),
        held_out=lambda heads, batches: F.normalize(torch.cat(heads), dim=-1).numpy(), setup=pooling_of),
    "classify": Objective(
        head=lambda output, batch, setup: output.logits,
        loss=lambda s, t, batch, temperature: soft_label_kl(s, t, temperature), held_out=_per_text),
    "token-classify": Objective(
        head=lambda output, batch, setup: output.logits,
        loss=lambda s, t, batch, temperature: soft_label_kl(s, t, temperature, batch["attention_mask"].bool()),
        held_out=_per_text),
}  # fmt: skip
