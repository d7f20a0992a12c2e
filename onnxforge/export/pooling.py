"""Sentence pooling and L2 normalisation appended to an encoder graph, so the artifact returns embeddings.

Which pooling a model uses comes from its sentence-transformers files when present (modules.json and the
Pooling module's config.json); a plain Hugging Face encoder gets mean pooling and normalisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from .graph import save

OUTPUT = "sentence_embedding"


@dataclass(frozen=True)
class Pooling:
    mode: str = "mean"  # "mean" | "cls"
    normalize: bool = True


def pooling_of(model_dir: Path) -> Pooling:
    """Read sentence-transformers' pooling settings, or the defaults for a plain encoder."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return Pooling()
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    mode = "mean"
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            config = json.loads((model_dir / module["path"] / "config.json").read_text(encoding="utf-8"))
            modes = [k.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
                     for k, v in config.items() if k.startswith("pooling_mode_") and v]  # fmt: skip
            if modes not in (["mean"], ["cls"]):
                raise ValueError(f"{model_dir}: pooling {modes} is not supported; supported: mean, cls")
            mode = modes[0]
    return Pooling(mode=mode, normalize=normalize)


def _const(name: str, values: list, dtype: int = TensorProto.INT64) -> onnx.TensorProto:
    return helper.make_tensor(name, dtype, [len(values)], values)


def _mean_nodes(hidden: str, mask: str) -> tuple[list[onnx.NodeProto], str]:
    n = helper.make_node
    nodes = [
        n("Cast", [mask], ["/pooling/mask_f"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["/pooling/mask_f", "/pooling/axis2"], ["/pooling/mask3"]),
        n("Mul", [hidden, "/pooling/mask3"], ["/pooling/masked"]),
        n("ReduceSum", ["/pooling/masked", "/pooling/axis1"], ["/pooling/sum"], keepdims=0),
        n("ReduceSum", ["/pooling/mask3", "/pooling/axis1"], ["/pooling/count"], keepdims=0),
        n("Max", ["/pooling/count", "/pooling/eps_count"], ["/pooling/count_safe"]),
        n("Div", ["/pooling/sum", "/pooling/count_safe"], ["/pooling/pooled"]),
    ]
    return nodes, "/pooling/pooled"


def _cls_nodes(hidden: str, mask: str) -> tuple[list[onnx.NodeProto], str]:
    node = helper.make_node("Gather", [hidden, "/pooling/zero"], ["/pooling/pooled"], axis=1)
    return [node], "/pooling/pooled"


def _normalize_nodes(pooled: str) -> list[onnx.NodeProto]:
    n = helper.make_node
    return [
        n("Mul", [pooled, pooled], ["/normalize/square"]),
        n("ReduceSum", ["/normalize/square", "/pooling/axis1"], ["/normalize/sumsq"], keepdims=1),
        n("Sqrt", ["/normalize/sumsq"], ["/normalize/norm"]),
        n("Max", ["/normalize/norm", "/pooling/eps_norm"], ["/normalize/norm_safe"]),
        n("Div", [pooled, "/normalize/norm_safe"], [OUTPUT]),
    ]


_MODES = {"mean": _mean_nodes, "cls": _cls_nodes}


def append_pooling(path: Path, pooling: Pooling, hidden: str = "last_hidden_state") -> None:
    """Rewrite the graph at ``path`` in place with a ``sentence_embedding`` output (batch, hidden_size)."""
    model = onnx.load(str(path))
    graph = model.graph
    out = next(o for o in graph.output if o.name == hidden)
    dims = out.type.tensor_type.shape.dim
    graph.initializer.extend([
        _const("/pooling/axis1", [1]), _const("/pooling/axis2", [2]),
        helper.make_tensor("/pooling/zero", TensorProto.INT64, [], [0]),
        _const("/pooling/eps_count", [1e-9], TensorProto.FLOAT), _const("/pooling/eps_norm", [1e-12], TensorProto.FLOAT),
    ])  # fmt: skip
    nodes, pooled = _MODES[pooling.mode](hidden, "attention_mask")
    if pooling.normalize:
        nodes += _normalize_nodes(pooled)
    else:
        nodes.append(helper.make_node("Identity", [pooled], [OUTPUT]))
    graph.node.extend(nodes)
    batch = dims[0].dim_param or dims[0].dim_value
    graph.output.insert(0, helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch, dims[2].dim_value]))
    onnx.checker.check_model(model)
    save(model, path)
