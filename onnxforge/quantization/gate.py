"""Quality gates: a candidate artifact's task figures against its fp32 reference, on held-out real text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..progress import bar
from ..runtime.pipelines import PIPELINES, Loaded
from .metrics import embedding_fidelity


class GateError(RuntimeError):
    """A quantized candidate missed its quality gate; no artifact was written."""


@dataclass(frozen=True)
class Gate:
    """Minimum value of each named figure, e.g. ``{"mean_cosine": 0.99, "recall_at_10": 0.85}``."""

    minimums: dict[str, float] = field(default_factory=dict)

    def failures(self, figures: dict[str, float]) -> list[str]:
        unknown = sorted(set(self.minimums) - set(figures))
        if unknown:
            raise ValueError(f"gate names unknown figures {unknown}; this task reports {sorted(figures)}")
        return [f"{name} {figures[name]:.5f} < {low}" for name, low in self.minimums.items() if figures[name] < low]

    def record(self, figures: dict[str, float]) -> dict[str, object]:
        """The manifest's ``quality`` section: figures, gate and verdict."""
        return {"reference": "fp32", **figures, "gate": dict(self.minimums), "passed": not self.failures(figures)}


def _embed_figures(reference: Loaded, candidate: Loaded, texts: list[str]) -> dict[str, float]:
    pipelines = [PIPELINES["embed"](loaded) for loaded in (reference, candidate)]
    chunks = [texts[i : i + 256] for i in range(0, len(texts), 256)]
    outputs = [[], []]
    for chunk in bar(chunks, "gate"):
        for out, pipeline in zip(outputs, pipelines):
            out.append(pipeline.embed(chunk))
    return {"texts": len(texts), **embedding_fidelity(np.concatenate(outputs[0]), np.concatenate(outputs[1]))}


FIGURES: dict[str, Callable[[Loaded, Loaded, list[str]], dict[str, float]]] = {"embed": _embed_figures}


def measure(task: str, reference: Loaded, candidate: Loaded, texts: list[str]) -> dict[str, float]:
    if task not in FIGURES:
        raise ValueError(f"no quality figures for task {task!r}; supported: {', '.join(sorted(FIGURES))}")
    return FIGURES[task](reference, candidate, texts)
