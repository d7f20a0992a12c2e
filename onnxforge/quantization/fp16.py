"""fp16 weights and compute with fp32 inputs and outputs, numerically fragile ops kept in fp32.

The conversion is onnxconverter-common's float16 pass as vendored and maintained in onnxruntime.transformers
(``OnnxModel.convert_float_to_float16``): onnxconverter-common 1.16 itself emits a duplicate ``_output_cast_0``
on fused graphs with two outputs, which onnxruntime refuses; this one repeats casts of a tensor read by several
blocked nodes (:func:`_drop_repeated_casts`). Normalisations, reductions, softmax and pow/exp
stay fp32 (``FRAGILE_OPS``): their intermediate squares and sums overflow fp16's 65,504 on large activations.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..export.graph import save

FRAGILE_OPS = (
    "LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization", "ReduceMean", "ReduceSum", "ReduceL2", "ReduceMax", "Softmax", "Pow",
    "Exp", "Sqrt", "Div", "Erf", "Max", "Min", "Clip",
)  # fmt: skip


FUSED_NORMS = ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
               "SkipSimplifiedLayerNormalization")  # fmt: skip


@dataclass(frozen=True)
class Fp16Config:
    """fp16 conversion settings: the op types that stay fp32."""

    block: tuple[str, ...] = FRAGILE_OPS

    def describe(self) -> dict[str, object]:
        return {"weights": "float16", "activations": "float16", "io": "float32", "fp32_ops": list(self.block)}


def sandwiched(model: onnx.ModelProto, block: tuple[str, ...]) -> list[str]:
    """Nodes fed only by blocked nodes or constants that feed a blocked node, e.g. the ``+ eps`` between
    ReduceMean and Sqrt of a decomposed norm: left fp16, their output would be cast down and overflow there."""
    constants = {t.name for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    blocked = {id(node) for node in model.graph.node if node.op_type in block}
    names: list[str] = []
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if id(node) in blocked:
                continue
            fed = all(n in constants or (n in producer and id(producer[n]) in blocked) for n in node.input if n)
            feeds = any(id(r) in blocked for out in node.output for r in readers.get(out, []))
            if fed and feeds:
                blocked.add(id(node))
                names.append(node.name)
                changed = True
    return names


def to_fp16(src: Path, dst: Path, block: tuple[str, ...] = FRAGILE_OPS) -> None:
    """Convert the graph at ``src`` to fp16 into ``dst``, keeping fp32 I/O and the ops in ``block``."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(src)))
    if _distinct_branch_outputs(model.model.graph):
        # In a merged decoder the branches share the outer graph's weights, and the pass casts a weight to fp16
        # unless every reader it sees (outer nodes only) is blocked: a blocked fused norm inside a branch would get
        # fp16 gamma/beta. Those ops take fp16 as they are and accumulate in fp32 inside their kernels.
        block = tuple(op for op in block if op not in FUSED_NORMS)
    for node in model.model.graph.node:  # the converter blocks nodes by name
        node.name = node.name or f"{node.op_type}:{node.output[0]}"
    with warnings.catch_warnings():  # "number truncated" notes for constants of blocked ops' neighbours
        warnings.simplefilter("ignore")
        model.convert_float_to_float16(
            keep_io_types=True, op_block_list=list(block), node_block_list=sandwiched(model.model, block)
        )
    _drop_repeated_casts(model.model.graph)
    model.topological_sort()  # the pass appends its Cast nodes at the end; strict evaluators need order
    save(model.model, dst)


def _distinct_branch_outputs(graph: onnx.GraphProto) -> bool:
    """Give the outputs of each ``If`` branch names of their own. Optimum's merged decoder names them as the ``If``'s
    outputs, which are the graph's; the converter, casting the graph's outputs back to fp32 by name, would otherwise
    leave each branch returning the outer Cast's value, which onnxruntime refuses. Returns whether it found any."""
    found = False
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type != onnx.AttributeProto.GRAPH:
                continue
            branch = attribute.g
            renamed = {out.name: f"{attribute.name}/{out.name}" for out in branch.output}
            produced = {name for inner in branch.node for name in inner.output}
            for inner in branch.node:
                inner.output[:] = [renamed.get(name, name) for name in inner.output]
                inner.input[:] = [renamed.get(name, name) for name in inner.input]
            for old, new in renamed.items():  # an outer value returned as it is gets an Identity of its own
                if old not in produced:
                    branch.node.append(onnx.helper.make_node("Identity", [old], [new], name=f"Identity:{new}"))
            for out in branch.output:
                out.name = renamed[out.name]
            found = True
    return found


def _drop_repeated_casts(graph: onnx.GraphProto) -> None:
    """The pass inserts one Cast per blocked reader of a tensor, all with the same name and output (decoders: the
    embedding Gather read by two blocked nodes), which onnxruntime refuses: keep the first of each."""
    seen: set[tuple[str, ...]] = set()
    kept = []
    for node in graph.node:
        key = (node.op_type, *node.input, "->", *node.output)
        if node.op_type == "Cast" and key in seen:
            continue
        seen.add(key)
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
