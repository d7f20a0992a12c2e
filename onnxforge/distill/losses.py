"""Distillation losses: what the student is trained to reproduce of the teacher (torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_label_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                  rows: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """KL(teacher ‖ student) of the temperature-softened class probabilities, times T² so its gradients keep their
    scale as T changes (Hinton et al.), averaged over rows (the last axis is the classes; ``rows``: which count)."""
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    per_row = (log_teacher.exp() * (log_teacher - log_student)).sum(-1)
    if rows is not None:
        per_row = per_row[rows]
    return per_row.mean() * temperature**2


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the pooled sentence embeddings plus their mean cosine distance (1 − cosine)."""
    return F.mse_loss(student, teacher) + (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


def hidden_loss(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], tokens: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each student layer's output against the teacher layer it was copied from, over real
    (unpadded) tokens, averaged over layers."""
    return torch.stack([F.mse_loss(s[tokens], t[tokens]) for s, t in zip(student, teacher)]).mean()
