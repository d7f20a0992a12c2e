"""Parity of an exported encoder graph against the PyTorch model it came from, on real sentences.

For ``embed`` the reference pools and normalises PyTorch's hidden states in numpy, independently of the ONNX
pooling nodes; other tasks compare every graph output with the task's transformers model. Batches vary in size
(1 upwards) and length, and one text runs to the full ``max_length``, longer than anything the exporter traced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModel

from ..runtime.session import SessionConfig, create_session
from ..sources import tokenizer_of
from ..tasks import Task
from .pooling import Pooling

BATCH_SIZES = (1, 3, 16, 32)


class ParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model within tolerance."""


@dataclass(frozen=True)
class Tolerance:
    max_abs: float = 1e-4  # on hidden states, over real (unpadded) tokens
    min_cosine: float = 0.99999  # on pooled sentence embeddings
    max_logit_abs: float = 1e-3  # on a decoder's logits, prefill and every decode step

    def __post_init__(self) -> None:
        if self.max_abs <= 0 or self.max_logit_abs <= 0 or not 0 < self.min_cosine <= 1:
            raise ValueError(f"tolerance needs max_abs > 0 and 0 < min_cosine <= 1, got {self}")


def reference_pool(hidden: np.ndarray, mask: np.ndarray, pooling: Pooling) -> np.ndarray:
    if pooling.mode == "cls":
        pooled = hidden[:, 0]
    else:
        weights = mask[..., None].astype(np.float64)
        pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
    if pooling.normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def _batches(texts: list[str]) -> list[list[str]]:
    out, start, turn = [], 0, 0
    while start < len(texts):
        size = BATCH_SIZES[turn % len(BATCH_SIZES)]
        out.append(texts[start : start + size])
        start, turn = start + size, turn + 1
    return out


def check(onnx_path: Path, model_dir: Path, texts: list[str], pooling: Pooling, max_length: int,
          tolerance: Tolerance = Tolerance()) -> dict[str, float]:  # fmt: skip
    """Figures of the ONNX graph vs PyTorch; raises :class:`ParityError` naming the figure that missed."""
    tokenizer = tokenizer_of(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    session = create_session(onnx_path, SessionConfig(providers="cpu"))
    wanted = [i.name for i in session.get_inputs()]
    long_text = " ".join(texts[:64])
    max_abs, cosines, shapes = 0.0, [], set()
    for batch in _batches([long_text, *texts]):
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        with torch.no_grad():
            hidden_ref = model(**{k: torch.from_numpy(enc[k]) for k in wanted}).last_hidden_state.numpy()
        embedding, hidden = session.run(["sentence_embedding", "last_hidden_state"], {k: enc[k] for k in wanted})
        mask = enc["attention_mask"].astype(bool)
        max_abs = max(max_abs, float(np.abs(hidden - hidden_ref)[mask].max()))
        cosines.append(_cosines(embedding, reference_pool(hidden_ref, enc["attention_mask"], pooling)))
        shapes.add(enc["input_ids"].shape)
    cos = np.concatenate(cosines)
    figures = {
        "texts": len(cos), "batch_shapes": len(shapes), "max_sequence": max(s[1] for s in shapes),
        "max_abs_diff": max_abs, "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
        "tolerance_max_abs": tolerance.max_abs, "tolerance_min_cosine": tolerance.min_cosine,
    }  # fmt: skip
    if max_abs > tolerance.max_abs:
        raise ParityError(f"{onnx_path.name}: hidden states differ from PyTorch by {max_abs:.3g} > {tolerance.max_abs:g}")
    if figures["min_cosine"] < tolerance.min_cosine:
        raise ParityError(
            f"{onnx_path.name}: sentence embedding cosine to PyTorch {figures['min_cosine']:.7f} < {tolerance.min_cosine}"
        )
    return figures


def _rows(got: np.ndarray, want: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Comparable rows of one output: per real token for (batch, sequence, …), per text otherwise."""
    if got.ndim == 3:
        return got[mask], want[mask]
    if got.ndim == 2 and got.shape[1] == mask.shape[1]:  # (batch, sequence) logits: padded positions zeroed
        return np.where(mask, got, 0.0), np.where(mask, want, 0.0)
    return got, want


def check_task(onnx_path: Path, model_dir: Path, texts: list[str], task: Task, max_length: int,
               tolerance: Tolerance = Tolerance()) -> dict[str, float]:  # fmt: skip
    """Every output of the graph vs the task's transformers model; :class:`ParityError` names the output."""
    tokenizer = tokenizer_of(model_dir)
    model = getattr(transformers, task.model_class).from_pretrained(model_dir).eval()
    session = create_session(onnx_path, SessionConfig(providers="cpu"))
    wanted = [i.name for i in session.get_inputs()]
    long_text = " ".join(texts[:64])
    max_abs, cosines, shapes = {name: 0.0 for name in task.outputs}, [], set()
    for batch in _batches([long_text, *texts]):
        pairs = (batch, batch[::-1]) if task.text_pairs else (batch,)
        enc = tokenizer(*pairs, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        with torch.no_grad():
            reference = model(**{k: torch.from_numpy(enc[k]) for k in wanted})
        mask = enc["attention_mask"].astype(bool)
        for name, got in zip(task.outputs, session.run(list(task.outputs), {k: enc[k] for k in wanted})):
            rows, want = _rows(got, getattr(reference, name).numpy(), mask)
            max_abs[name] = max(max_abs[name], float(np.abs(rows - want).max()))
            cosines.append(_cosines(rows.reshape(len(rows), -1), want.reshape(len(want), -1)))
        shapes.add(enc["input_ids"].shape)
    cos = np.concatenate(cosines)
    worst = max(max_abs, key=max_abs.get)
    figures = {
        "texts": len(texts) + 1, "batch_shapes": len(shapes), "max_sequence": max(s[1] for s in shapes),
        "max_abs_diff": max_abs[worst], "max_abs_by_output": max_abs, "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()), "tolerance_max_abs": tolerance.max_abs,
        "tolerance_min_cosine": tolerance.min_cosine,
    }  # fmt: skip
    if max_abs[worst] > tolerance.max_abs:
        raise ParityError(f"{onnx_path.name}: {worst} differs from PyTorch by {max_abs[worst]:.3g} > {tolerance.max_abs:g}")
    if figures["min_cosine"] < tolerance.min_cosine:
        raise ParityError(f"{onnx_path.name}: output cosine to PyTorch {figures['min_cosine']:.7f} < {tolerance.min_cosine}")
    return figures
