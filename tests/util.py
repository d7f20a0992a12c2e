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
