"""ONNX export configs for families optimum-onnx 0.1.0 lacks, registered with its TasksManager on import.

StarCoder2 is Mistral's shape for the exporter (GQA key/value cache, position ids, sliding window in the model's
own mask); only its config names differ, which the GQA-aware normalized config reads. ModernBERT's config lacks
question answering, which transformers' ModernBertForQuestionAnswering has: the same inputs, the task's outputs.
"""

from __future__ import annotations

from optimum.exporters.onnx.model_configs import (
    COMMON_TEXT_GENERATION_TASKS,
    MistralOnnxConfig,
    ModernBertOnnxConfig,
)
from optimum.exporters.tasks import TasksManager
from optimum.utils import NormalizedTextConfigWithGQA


@TasksManager.create_register("onnx")("starcoder2", *COMMON_TEXT_GENERATION_TASKS)
class Starcoder2OnnxConfig(MistralOnnxConfig):
    NORMALIZED_CONFIG_CLASS = NormalizedTextConfigWithGQA


@TasksManager.create_register("onnx", overwrite_existing=True)(
    "modernbert", "feature-extraction", "fill-mask", "text-classification", "token-classification", "question-answering"
)
class ModernBertWithAnswersOnnxConfig(ModernBertOnnxConfig):
    pass
