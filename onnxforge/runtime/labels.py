"""Softmax / sigmoid and the label table of a classification artifact (from its config.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


@dataclass(frozen=True)
class Labels:
    """``id2label`` of the model, and whether its scores are independent (multi-label → sigmoid)."""

    names: tuple[str, ...]
    multi_label: bool = False

    @classmethod
    def from_config(cls, directory: Path) -> Labels:
        path = directory / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; classification artifacts carry their labels there")
        config = json.loads(path.read_text(encoding="utf-8"))
        id2label = {int(k): v for k, v in config.get("id2label", {}).items()}
        names = tuple(id2label.get(i, f"LABEL_{i}") for i in range(len(id2label)))
        multi = config.get("problem_type") == "multi_label_classification" or len(names) == 1
        return cls(names=names, multi_label=multi)

    def scores(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits) if self.multi_label else softmax(logits)
