"""The task table: one row per task, read by export, the quantization gate and the runtime.

Adding a task is one row here, its pipeline in ``runtime.pipelines``, its figures in ``quantization.gate``,
and a test.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    exporter_task: str  # optimum's name for the task
    model_class: str  # the transformers Auto class parity runs against
    outputs: tuple[str, ...]  # graph outputs, the first being what the runtime reads first
    metric: str  # fidelity figure the quantization gate reads first
    summary: str
    pooled: bool = False  # sentence pooling + normalisation appended to the graph
    text_pairs: bool = False  # inputs are (question, context) pairs


TASKS: dict[str, Task] = {
    "embed": Task(
        name="embed", exporter_task="feature-extraction", model_class="AutoModel",
        outputs=("sentence_embedding", "last_hidden_state"), metric="mean_cosine",
        summary="pooled, L2-normalised sentence embeddings (pooling inside the graph)", pooled=True,
    ),
    "classify": Task(
        name="classify", exporter_task="text-classification", model_class="AutoModelForSequenceClassification",
        outputs=("logits",), metric="top1_agreement", summary="sequence classification: labels and scores",
    ),
    "token-classify": Task(
        name="token-classify", exporter_task="token-classification", model_class="AutoModelForTokenClassification",
        outputs=("logits",), metric="token_agreement", summary="per-token labels grouped into entities (NER)",
    ),
    "answer": Task(
        name="answer", exporter_task="question-answering", model_class="AutoModelForQuestionAnswering",
        outputs=("start_logits", "end_logits"), metric="span_agreement",
        summary="extractive question answering over long contexts", text_pairs=True,
    ),
    "fill-mask": Task(
        name="fill-mask", exporter_task="fill-mask", model_class="AutoModelForMaskedLM",
        outputs=("logits",), metric="top5_overlap", summary="masked-word prediction",
    ),
    "generate": Task(
        name="generate", exporter_task="text-generation-with-past", model_class="AutoModelForCausalLM",
        outputs=("logits",), metric="next_token_agreement",
        summary="causal language model with a KV cache: generate, chat, streaming",
    ),
    # Any torch.nn.Module, exported by onnxforge.export.export_module (not from a Hugging Face directory).
    "module": Task(
        name="module", exporter_task="", model_class="", outputs=(), metric="max_abs_diff",
        summary="any torch.nn.Module: feeds in, a dict of arrays out",
    ),
}  # fmt: skip
HF_TASKS = tuple(name for name, task in TASKS.items() if task.exporter_task)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; supported tasks: {', '.join(sorted(TASKS))}") from None
