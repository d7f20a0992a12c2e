"""The task table: one row per task, read by export, the quantization gate and the runtime.

Adding a task is one row here, its pipeline in ``runtime.pipelines``, its figures in ``quantization.gate``
(a CLI runner in ``cli.RUNNERS`` if ``onnxforge run`` should show it), and a test; ``tests/test_tasks.py`` checks
that these tables name the same tasks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    exporter_task: str  # optimum's name for the task
    model_class: str  # the transformers Auto class parity runs against
    outputs: tuple[str, ...]  # graph outputs, the first being what the runtime reads first
    pooled: bool = False  # sentence pooling + normalisation appended to the graph
    text_pairs: bool = False  # inputs are (question, context) pairs
    generative: bool = False  # a decoder with a KV cache: generation settings, teacher-forced passages, decode feeds
    seq2seq: bool = False  # an encoder and a decoder with self- and cross-attention caches (two graphs)


TASKS: dict[str, Task] = {
    "embed": Task("embed", "feature-extraction", "AutoModel", ("sentence_embedding", "last_hidden_state"), pooled=True),
    "classify": Task("classify", "text-classification", "AutoModelForSequenceClassification", ("logits",)),
    "token-classify": Task("token-classify", "token-classification", "AutoModelForTokenClassification", ("logits",)),
    "answer": Task("answer", "question-answering", "AutoModelForQuestionAnswering", ("start_logits", "end_logits"),
                   text_pairs=True),
    "fill-mask": Task("fill-mask", "fill-mask", "AutoModelForMaskedLM", ("logits",)),
    "generate": Task("generate", "text-generation-with-past", "AutoModelForCausalLM", ("logits",), generative=True),
    "translate": Task("translate", "text2text-generation-with-past", "AutoModelForSeq2SeqLM", ("logits",), seq2seq=True),
    "summarize": Task("summarize", "text2text-generation-with-past", "AutoModelForSeq2SeqLM", ("logits",), seq2seq=True),
    # Any torch.nn.Module, exported by onnxforge.export.export_module (not from a Hugging Face directory).
    "module": Task("module", "", "", ()),
}  # fmt: skip
HF_TASKS = tuple(name for name, task in TASKS.items() if task.exporter_task)


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; supported tasks: {', '.join(sorted(TASKS))}") from None
