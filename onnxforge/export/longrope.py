"""LongRoPE (Phi-3 128k, Phi-4-mini): the rotary frequencies switch from the short to the long factors by length.

transformers picks the factors per forward call: long once the call's last position + 1 passes
``original_max_position_embeddings``, short otherwise. Tracing fixes whichever the dummy inputs chose, so the
exported graph would use the short factors at every length. Here the traced frequencies become
``Where(max(position_ids) + 1 > original, long, short)``: the same choice per call as transformers makes, with
and without a cache. onnxruntime's RotaryEmbedding fusion would bake one branch into its cos/sin caches, so
``optimize`` leaves these graphs' rotary embeddings unfused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def switch_length(config: dict) -> int | None:
    """The length past which a config.json's LongRoPE uses its long factors; None without LongRoPE."""
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) != "longrope":
        return None
    return int(config.get("original_max_position_embeddings") or config["max_position_embeddings"])


def frequencies(model_dir: Path) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(short, long inverse frequencies, original context) of a LongRoPE model, from transformers' own code."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = AutoConfig.from_pretrained(model_dir)
    original = switch_length(config.to_dict())
    if original is None:
        return None
    compute = ROPE_INIT_FUNCTIONS["longrope"]
    short, long = (compute(config, "cpu", seq_len=n)[0].numpy() for n in (None, original + 1))
    return short, long, original


def switch_by_length(onnx_path: Path, model_dir: Path) -> int:
    """Make the traced frequencies of ``onnx_path`` choose by length as transformers does; returns how many
    constants were switched (0 for models without LongRoPE). Refuses a graph without ``position_ids``."""
    found = frequencies(model_dir)
    if found is None:
        return 0
    short, long, original = found
    model = onnx.load(str(onnx_path), load_external_data=False)  # weights stay where they are; the graph is edited
    graph = model.graph
    if "position_ids" not in {i.name for i in graph.input}:
        raise ValueError(f"{onnx_path}: LongRoPE needs the position_ids input to pick its factors; the graph has none")
    switched, nodes = 0, []
    for node in graph.node:
        value = numpy_helper.to_array(node.attribute[0].t) if node.op_type == "Constant" and node.attribute[0].name == "value" else None
        traced = next((f for f in (short, long) if value is not None and value.size == f.size and np.array_equal(value.ravel(), f)), None)
        if traced is None:
            nodes.append(node)
            continue
        switched += 1
        out = node.output[0]
        nodes += [helper.make_node("Constant", [], [f"{out}/long"], value=numpy_helper.from_array(long.reshape(value.shape).astype(value.dtype))),
                  helper.make_node("Constant", [], [f"{out}/short"], value=numpy_helper.from_array(short.reshape(value.shape).astype(value.dtype))),
                  helper.make_node("Where", ["longrope/is_long", f"{out}/long", f"{out}/short"], [out], name=f"{out}/Where")]  # fmt: skip
    if not switched:
        raise ValueError(f"{onnx_path}: the traced rotary frequencies were not found; LongRoPE cannot be switched by length")
    # last position + 1 > original, as transformers compares
    graph.initializer.append(numpy_helper.from_array(np.array(original - 1, dtype=np.int64), "longrope/last_short"))
    nodes[:0] = [helper.make_node("ReduceMax", ["position_ids"], ["longrope/last"], keepdims=0, name="longrope/ReduceMax"),
                 helper.make_node("Greater", ["longrope/last", "longrope/last_short"], ["longrope/is_long"], name="longrope/Greater")]  # fmt: skip
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(onnx_path))
    return switched
