"""The task table: one row per task, read by export, the quantization gate and the runtime.

Adding a task is one row here, its pipeline in ``runtime.pipelines``, its metric in ``quantization.gate``,
and a test.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    exporter_task: str  # optimum's name for the task
    outputs: tuple[str, ...]  # graph outputs, the first being what the runtime returns
    metric: str  # fidelity figure the quantization gate reads first
    summary: str


TASKS: dict[str, Task] = {
    "embed": Task(
        name="embed",
        exporter_task="feature-extraction",
        outputs=("sentence_embedding", "last_hidden_state"),
        metric="mean_cosine",
        summary="pooled, L2-normalised sentence embeddings (pooling inside the graph)",
    ),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; supported tasks: {', '.join(sorted(TASKS))}") from None
