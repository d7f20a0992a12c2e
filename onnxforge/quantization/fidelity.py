"""Fidelity figures between a reference and a candidate output (numpy only; the benchmarks use them too)."""

from __future__ import annotations

import numpy as np


def row_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``candidate`` to the same row of ``reference``."""
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    return (ref * cand).sum(axis=1) / np.maximum(norms, 1e-30)


def neighbours(embeddings: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's ``k`` nearest other rows by cosine (the row itself excluded)."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-30)
    scores = unit @ unit.T
    np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall_at_k(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> float:
    """Mean share of each item's reference top-k neighbours that the candidate's top-k also finds."""
    if len(reference) <= k:
        raise ValueError(f"recall@{k} needs more than {k} items, got {len(reference)}")
    ref, cand = neighbours(reference, k), neighbours(candidate, k)
    hits = [len(np.intersect1d(r, c, assume_unique=True)) for r, c in zip(ref, cand)]
    return float(np.mean(hits) / k)


def embedding_fidelity(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> dict[str, float]:
    cos = row_cosines(reference, candidate)
    return {
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        f"recall_at_{k}": recall_at_k(reference, candidate, k),
    }
