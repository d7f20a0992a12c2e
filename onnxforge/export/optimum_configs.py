"""ONNX export configs for families optimum-onnx 0.1.0 lacks, registered with its TasksManager on import.

StarCoder2 is Mistral's shape for the exporter (GQA key/value cache, position ids, sliding window in the model's
own mask); only its config names differ, which the GQA-aware normalized config reads. ERNIE 4.5, GLM-4 and HunYuan
dense are Qwen3's shape (GQA cache, position ids; their rotary and norms live in the traced model). PhiMoE is too,
but its expert loop skips experts no token was routed to, which tracing would freeze: the patcher below runs every
expert. ModernBERT's config lacks question answering, which transformers' ModernBertForQuestionAnswering has: the
same inputs, the task's outputs.
"""

from __future__ import annotations

import torch
from optimum.exporters.onnx.model_configs import (
    COMMON_TEXT_GENERATION_TASKS,
    GPTOssOnnxConfig,
    MistralOnnxConfig,
    ModernBertOnnxConfig,
    Qwen3OnnxConfig,
)
from optimum.exporters.onnx.model_patcher import ModelPatcher
from optimum.exporters.tasks import TasksManager
from optimum.utils import NormalizedTextConfigWithGQA
from transformers.models.gpt_oss import modeling_gpt_oss
from transformers.models.phimoe import modeling_phimoe


@TasksManager.create_register("onnx")("starcoder2", *COMMON_TEXT_GENERATION_TASKS)
class Starcoder2OnnxConfig(MistralOnnxConfig):
    NORMALIZED_CONFIG_CLASS = NormalizedTextConfigWithGQA


for _model_type in ("ernie4_5", "glm4", "hunyuan_v1_dense"):
    TasksManager.create_register("onnx")(_model_type, *COMMON_TEXT_GENERATION_TASKS)(
        type(f"{_model_type}OnnxConfig", (Qwen3OnnxConfig,), {})
    )


def _sum_over_experts(flat: torch.Tensor, selected: torch.Tensor, weight, experts: int, expert) -> torch.Tensor:
    """Each expert's output on the tokens routed to it (``selected``: token × rank → expert), times their routing
    weight (``weight(token, rank, index)``), summed per token; the loop runs every expert, routed to or not."""
    out = torch.zeros_like(flat)
    for index in range(experts):
        token, rank = torch.where(selected == index)
        out.index_add_(0, token, (expert(index, flat[token]) * weight(token, rank, index)[:, None]).to(flat.dtype))
    return out


def every_expert_forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PhimoeSparseMoeBlock.forward in eval mode, with every expert in the graph."""
    batch, length, width = hidden_states.shape
    flat = hidden_states.view(-1, width)
    router_logits = self.gate(flat)
    weights, selected = modeling_phimoe.sparsemixer(router_logits, jitter_eps=self.router_jitter_noise, training=False)
    out = _sum_over_experts(flat, selected, lambda token, rank, _: weights[token, rank], self.num_experts,
                            lambda index, x: self.experts[index](x))  # fmt: skip
    return out.view(batch, length, width), router_logits


def _gpt_oss_expert(self, index: int, x: torch.Tensor) -> torch.Tensor:
    """One gpt-oss expert: clamped SwiGLU over its own slices of the stacked weights (2-D, so int4 can take them)."""
    gate_up = x @ self.gate_up_proj[index] + self.gate_up_proj_bias[index]
    gate, up = gate_up[..., ::2].clamp(max=self.limit), gate_up[..., 1::2].clamp(min=-self.limit, max=self.limit)
    return ((up + 1) * (gate * torch.sigmoid(gate * self.alpha))) @ self.down_proj[index] + self.down_proj_bias[index]


def every_gpt_oss_expert_forward(self, hidden_states: torch.Tensor, router_indices=None, routing_weights=None):
    """GptOssExperts.forward's CPU path with every expert in the graph, each reading only its routed tokens
    (optimum's patch runs all experts on all tokens through 3-D weights, which no int4 kernel takes)."""
    flat = hidden_states.reshape(-1, self.hidden_size)
    out = _sum_over_experts(flat, router_indices, lambda token, _, index: routing_weights[token, index], self.num_experts,
                            lambda index, x: _gpt_oss_expert(self, index, x))  # fmt: skip
    return out.view(hidden_states.shape[0], -1, self.hidden_size)


class EveryExpertPatcher(ModelPatcher):
    """While exporting, mixture-of-experts blocks run ``EVERY_EXPERT``'s forwards."""

    def __enter__(self):
        super().__enter__()
        self._originals = {block: block.forward for block in EVERY_EXPERT}
        for block, forward in EVERY_EXPERT.items():
            block.forward = forward

    def __exit__(self, exc_type, exc_value, traceback):
        super().__exit__(exc_type, exc_value, traceback)
        for block, forward in self._originals.items():
            block.forward = forward


EVERY_EXPERT = {modeling_phimoe.PhimoeSparseMoeBlock: every_expert_forward,
                modeling_gpt_oss.GptOssExperts: every_gpt_oss_expert_forward}  # fmt: skip


@TasksManager.create_register("onnx")("phimoe", *COMMON_TEXT_GENERATION_TASKS)
class PhimoeOnnxConfig(Qwen3OnnxConfig):
    _MODEL_PATCHER = EveryExpertPatcher


@TasksManager.create_register("onnx", overwrite_existing=True)("gpt_oss", *COMMON_TEXT_GENERATION_TASKS)
class GptOssEveryExpertOnnxConfig(GPTOssOnnxConfig):
    _MODEL_PATCHER = EveryExpertPatcher


@TasksManager.create_register("onnx", overwrite_existing=True)(
    "modernbert", "feature-extraction", "fill-mask", "text-classification", "token-classification", "question-answering"
)
class ModernBertWithAnswersOnnxConfig(ModernBertOnnxConfig):
    pass
