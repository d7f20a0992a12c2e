"""Graph optimization: onnxruntime's transformer fusions (attention, layer norm, GELU), offline.

Attention is fused to ``MultiHeadAttention`` with the Q, K and V projections left as separate MatMuls: fp32
speed is the same as the packed ``Attention`` op (measured on MiniLM, 2 threads), and every projection stays a
plain weight MatMul that quantization can treat, measure and keep in float on its own.
Fusions run with ``opt_level=0`` (pattern fusions only, no hardware-specific constant folding), so the saved
graph runs on any CPU; onnxruntime applies its own session-level optimizations at load time.

For the CPU, each fused ``SkipLayerNormalization`` is split back into ``Add`` + ``LayerNormalization``: onnxruntime
1.31's CPU kernel for it ran 2-4x slower than the two plain ops at 16 rows and more (512 wide, 2 threads: 2.6 vs 0.7
ms on 16 x 80 tokens; 48 vs 26 us on 16 decoder rows; equal at 1 row), which made MiniLM int8 7-10 % and the Marian
encoder ~8 % slower. The bias is added to the product first, where per-token int8 folds its shift into it. CPU
sessions keep them split (``runtime.session.CPU_UNFUSED``): onnxruntime's load-time SkipLayerNormFusion would
join them again.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model

from ..tasks import Task
from . import longrope
from .families import CUDA_ONLY_FUSIONS, Family, family
from .graph import fused_ops, graphs, onnx_opset, op_counts, save

TARGETS = ("cpu", "cuda")


def check_family(model_type: str, task: Task) -> Family:
    """The family row of ``model_type``; an error listing the families ``task`` takes (encoder-decoders for
    translate/summarize, decoders for generate, encoders otherwise) unless it is one of them."""
    kind = "seq2seq" if task.seq2seq else "decoder" if task.generative else "encoder"
    return family(model_type, kind, task.name)


def optimize(src: Path, dst: Path, model_type: str, target: str = "cpu", config: dict | None = None) -> dict[str, int]:
    """Fuse the graph at ``src`` into ``dst`` for ``target``; returns the fused operators it now has.

    ``config``: the model's config.json, for the head count and width some fusion rules need (0: detect).
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; supported: {', '.join(TARGETS)}")
    ort_type = family(model_type).fusion
    if ort_type is None or (ort_type in CUDA_ONLY_FUSIONS and target == "cpu"):
        save(onnx.load(str(src)), dst)
        return fused_ops(op_counts(dst))
    options = FusionOptions(ort_type)
    options.enable_gelu_approximation = False  # exact GELU: fidelity first, it costs little on CPU
    options.use_multi_head_attention = True
    options.enable_rotary_embeddings = longrope.switch_length(config or {}) is None  # the fusion would bake one factor set
    model = optimize_model(
        str(src), model_type=ort_type,
        num_heads=_first(config, "num_attention_heads", "n_head", "num_heads", "encoder_attention_heads"),
        hidden_size=_first(config, "hidden_size", "n_embd", "d_model"), opt_level=0,
        optimization_options=options, use_gpu=target == "cuda",
    )  # fmt: skip
    if target == "cpu":
        split_skip_norms(model.model)
    save(model.model, dst)
    return fused_ops(op_counts(dst))


PRODUCTS = {"MatMul", "MatMulIntegerToFloat", "MatMulNBits", "DynamicQuantizeMatMul"}
LAYER_NORM_OPSET = 17


def split_skip_norms(model: onnx.ModelProto) -> int:
    """Replace every ``SkipLayerNormalization`` (in the graph and its subgraphs) by ``Add`` (its bias, onto the input
    a MatMul made), ``Add`` (the other input) and ``LayerNormalization``; returns how many. Left as they are below
    opset 17 (no LayerNormalization) and where a node's mean or inverse deviation is read."""
    if onnx_opset(model) < LAYER_NORM_OPSET:
        return 0
    read = {name for graph in graphs(model.graph) for node in graph.node for name in node.input}
    count = 0
    for graph in graphs(model.graph):
        made = {o: n for n in graph.node for o in n.output}
        nodes = []
        for node in graph.node:
            if node.op_type != "SkipLayerNormalization" or read & (set(node.output[1:3]) - {""}):
                nodes.append(node)
                continue
            count += 1
            name, inputs = node.name or node.output[0], list(node.input) + [""] * (5 - len(node.input))
            first = 1 if getattr(made.get(inputs[1]), "op_type", None) in PRODUCTS else 0
            product, other = inputs[first], inputs[1 - first]
            if inputs[4]:
                nodes.append(helper.make_node("Add", [product, inputs[4]], [f"{name}/biased"], name=f"{name}/Bias"))
                product = f"{name}/biased"
            total = node.output[3] if len(node.output) > 3 and node.output[3] else f"{name}/sum"
            nodes.append(helper.make_node("Add", [product, other], [total], name=f"{name}/Add"))
            epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
            nodes.append(helper.make_node("LayerNormalization", [total, inputs[2]] + ([inputs[3]] if inputs[3] else []),
                                          [node.output[0]], name=name, axis=-1, epsilon=epsilon))  # fmt: skip
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def _first(config: dict | None, *keys: str) -> int:
    return next((int(config[k]) for k in keys if config and config.get(k)), 0)
