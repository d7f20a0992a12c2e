"""Small helpers shared by test modules."""

from __future__ import annotations

from pathlib import Path


def siblings(final: Path) -> list[str]:
    """What lies beside an artifact directory, less its build lock file (kept on purpose: deleting lock files races)."""
    return sorted(p.name for p in final.parent.iterdir() if not p.name.endswith(".lock"))


def cosines(expected, got):
    """Row-wise cosine of two (rows, dims) arrays, in float64: the tests' own, not the gate's (metrics.row_cosines)."""
    import numpy as np

    a, b = np.asarray(expected, np.float64), np.asarray(got, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def first_outputs(directory: Path, texts: list[str]):
    """The first output of ``directory``'s model.onnx for ``texts`` (padded batch), from a plain onnxruntime session
    fed by the transformers tokenizer: no onnxforge runtime code in between. Returns (output, attention mask)."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = AutoTokenizer.from_pretrained(directory)(texts, padding=True, return_tensors="np")
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v.astype("int64") for k, v in batch.items() if k in names}
    return session.run(None, feeds)[0], batch["attention_mask"]


def profiled_session(path: Path, prefix: Path):
    """A CPU onnxruntime session of the graph at ``path`` that profiles its runs into files named from ``prefix``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(prefix)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def node_shapes(session) -> list[tuple[str, str, list[int]]]:
    """(node name, operator, first input's shape) of every node ``session`` (:func:`profiled_session`) has run, in
    order, subgraphs' nodes included; ends its profiling."""
    import json

    events = json.loads(Path(session.end_profiling()).read_text())
    return [(e["name"], e["args"]["op_name"], next(iter(e["args"]["input_type_shape"][0].values()))) for e in events
            if e.get("cat") == "Node" and "op_name" in e.get("args", {})]  # fmt: skip
