"""Small helpers over ONNX graphs shared by the export and quantization stages."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..artifact import EXTERNAL_DATA_SUFFIX, SHARED_FILE, TensorSpec

MS = "com.microsoft"

FUSED_OPS = (
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "LayerNormalization", "BiasGelu", "FastGelu",
    "Gelu", "RotaryEmbedding", "QAttention", "QEmbedLayerNormalization", "MatMulNBits", "MatMulIntegerToFloat",
)  # fmt: skip


class Builder:
    """Nodes and weights of a graph written op by op (the decoder graphs built from weights)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def weight(self, name: str, array: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | int, name: str, domain: str = "", **attrs) -> list[str]:
        names = [f"{name}/out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, domain=domain, **attrs))
        return names



ALIGN = 4096  # each tensor starts on a page: onnxruntime can map it instead of copying


def write_shared(paths: list[Path], names: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Save the graphs at ``paths`` with the initializers ``names`` stored once, in :data:`SHARED_FILE` beside
    them, each page-aligned; every graph that holds a name must hold the same bytes under it. ``names`` None: every
    initializer of at least a page that two or more of the graphs hold with equal bytes. Returns the names stored."""
    models = [onnx.load(str(path)) for path in paths]
    copies: dict[str, list[bytes]] = {}
    for model in models:
        for tensor in model.graph.initializer:
            copies.setdefault(tensor.name, []).append(_stored_bytes(tensor))
    if names is None:
        names = tuple(sorted(name for name, held in copies.items()
                             if len(held) > 1 and len(set(held)) == 1 and len(held[0]) >= ALIGN))  # fmt: skip
    entries, offset = {}, 0
    with open(paths[0].parent / SHARED_FILE, "wb") as out:
        for name in names:
            data = copies[name][0]
            offset = -(-offset // ALIGN) * ALIGN
            out.seek(offset)
            out.write(data)
            entries[name] = {"location": SHARED_FILE, "offset": str(offset), "length": str(len(data))}
            offset += len(data)
    for model, path in zip(models, paths):
        for tensor in model.graph.initializer:
            if tensor.name in entries:
                if _stored_bytes(tensor) != copies[tensor.name][0]:
                    raise ValueError(f"{path.name} holds other bytes under {tensor.name}")
                tensor.ClearField("raw_data")
                tensor.data_location = TensorProto.EXTERNAL
                del tensor.external_data[:]
                for key, value in entries[tensor.name].items():
                    tensor.external_data.add(key=key, value=value)
        path.write_bytes(model.SerializeToString())  # as it is: onnx.save would re-check the external file
    return names


def _stored_bytes(tensor: onnx.TensorProto) -> bytes:
    """A loaded tensor's bytes as an external-data file holds them (4-bit values packed two to a byte)."""
    return tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()


# Protobuf cannot serialize a message over 2 GiB: a graph whose weights pass this goes out with external data.
PROTOBUF_LIMIT = 2**31 - 1 - (64 << 20)  # less room for the graph itself


def save(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` (weights loaded) to ``path``, its weights in ``<file>.data`` beside it when they pass
    :data:`PROTOBUF_LIMIT` (a 1.7B decoder in fp32): 1.7B and larger models export, quantize and load alike."""
    path = Path(path)
    if not any(o.domain == MS for o in model.opset_import) and any(n.domain == MS for g in graphs(model.graph) for n in g.node):
        model.opset_import.add(domain=MS, version=1)  # as onnxruntime's OnnxModel.save adds it after its fusions
    data = path.with_name(path.name + EXTERNAL_DATA_SUFFIX)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file; a smaller rewrite must not keep it
    weights = sum(t.ByteSize() for g in graphs(model.graph) for t in g.initializer)
    if weights < PROTOBUF_LIMIT:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                  size_threshold=1024)  # fmt: skip


def onnx_opset(model: onnx.ModelProto) -> int:
    """The version of the standard (ai.onnx) operator set ``model`` imports."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph in it (an ``If``'s branches: a merged decoder's weights are read there), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from graphs(attribute.g)


def tensor_specs(values: list[onnx.ValueInfoProto]) -> list[TensorSpec]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        specs.append(TensorSpec(name=value.name, dtype=dtype, shape=shape))
    return specs


def signature(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs a caller must feed and outputs of the graph in ``path`` (its weights are not loaded): an input with a
    default (an initializer of its name, such as ``logits_to_keep``) is left out, as onnxruntime's ``get_inputs``
    leaves it out."""
    model = onnx.load(str(path), load_external_data=False)
    defaulted = {t.name for t in model.graph.initializer}
    return (tensor_specs([i for i in model.graph.input if i.name not in defaulted]),
            tensor_specs(list(model.graph.output)))  # fmt: skip


def op_counts(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def fused_ops(counts: dict[str, int]) -> dict[str, int]:
    """The fused (contrib) operators among an op histogram."""
    return {op: n for op, n in counts.items() if op in FUSED_OPS}


# Where a graph's bytes are: each initializer counted once, in the group of the first node that reads it (by that
# node's name, as exporters and the fused decoder graph name them), then the shared vocabulary table's consumers.
BYTE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("embeddings", ("embed", "word_embeddings", "position_embeddings", "token_type")),
    ("head", ("lm_head", "classifier", "pooler", "qa_outputs", "/cls/", "pre_classifier")),
    ("attention", ("attention", "attn", "qkv", "self_attn", "/query", "/key", "/value")),
    ("ffn", ("intermediate", "output/dense", "mlp", "ffn", "gate_up", "down_proj", "lin1", "lin2")),
)


def byte_groups(path: Path) -> dict[str, int]:
    """Initializer bytes per group (embeddings, attention, ffn, head, other): what ``inspect`` and the summary show."""
    model = onnx.load(str(path))
    readers: dict[str, str] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, f"{node.name} {node.op_type} {name}".lower())
    totals = {group: 0 for group, _ in BYTE_GROUPS} | {"other": 0}
    for tensor in model.graph.initializer:
        where = readers.get(tensor.name, tensor.name.lower())
        group = next((g for g, keys in BYTE_GROUPS if any(k in where for k in keys)), "other")
        totals[group] += len(tensor.raw_data) or onnx.numpy_helper.to_array(tensor).nbytes
    return totals
