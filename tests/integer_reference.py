"""Exact int64 reference for onnxruntime's integer MatMuls, on the integers a graph really feeds them.

``expose(model, feeds, directory)`` (needs onnx) makes every integer MatMul's inputs and output graph outputs and
saves the model, the feeds and the constants it reads. ``worst_errors(directory)`` (onnxruntime and numpy only, so it
also runs under an emulated CPU: ``python tests/integer_reference.py DIR`` prints JSON) runs the graph and compares
each node's output with numpy's int64 product of the same integers: 0 where the kernel is exact. A directory may also
hold ``expected.npz``: graph outputs computed exactly beforehand (hand-made boundary graphs), compared the same way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

OPS = ("MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul")


def expose(model, feeds: dict[str, np.ndarray], directory: Path) -> None:
    from onnx import helper, numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes, wanted = [], []
    for node in model.graph.node:
        if node.op_type in OPS:
            nodes.append({"op": node.op_type, "inputs": list(node.input), "output": node.output[0], "name": node.name})
            wanted += [n for n in [*node.input, node.output[0]] if n and n not in constants]
    listed = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.ValueInfoProto(name=n) for n in dict.fromkeys(wanted) if n not in listed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(model.SerializeToString())
    read = {n for node in nodes for n in node["inputs"] if n in constants}
    np.savez(directory / "constants.npz", **{f"c{i}": constants[n] for i, n in enumerate(sorted(read))})
    np.savez(directory / "feeds.npz", **feeds)
    (directory / "nodes.json").write_text(json.dumps({"nodes": nodes, "constants": sorted(read)}))


def _reference(op: str, values: list[np.ndarray | None]) -> np.ndarray:
    if op == "QLinearMatMul":  # a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero: the output before rounding
        a, a_scale, za, b, b_scale, zb, y_scale, zy = (v.astype(np.float64) for v in values)
        product = ((a - za) @ (b - zb)) * a_scale * b_scale / y_scale
        return np.clip(product + zy, 0, 255)
    a, b = (v.astype(np.int64) for v in values[:2])
    if op == "MatMulInteger":
        za, zb = (np.int64(0) if v is None else v.astype(np.int64) for v in (values + [None, None])[2:4])
        return (a - za) @ (b - zb)
    a_scale, b_scale, za, zb, bias = (values + [None] * 7)[2:7]
    za, zb = (np.int64(0) if v is None else v.astype(np.int64) for v in (za, zb))
    product = ((a - za) @ (b - zb)).astype(np.float64) * a_scale.astype(np.float64) * b_scale.astype(np.float64)
    return product if bias is None else product + bias.astype(np.float64)


def worst_errors(directory: Path) -> dict[str, float]:
    """Per integer MatMul: its largest difference from the exact product, relative to the product's peak."""
    import onnxruntime as ort

    spec = json.loads((directory / "nodes.json").read_text())
    with np.load(directory / "constants.npz") as saved:
        constants = {name: saved[f"c{i}"] for i, name in enumerate(spec["constants"])}
    with np.load(directory / "feeds.npz") as saved:
        feeds = {k: saved[k] for k in saved.files}
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = {**constants, **dict(zip(names, session.run(names, feeds)))}
    errors = {}
    for node in spec["nodes"]:
        want = _reference(node["op"], [values[n] if n else None for n in node["inputs"]])
        got = values[node["output"]].astype(np.float64)
        # a requantized (uint8) output is exact when within its own rounding: half a step
        slack = 0.5 + 1e-3 if node["op"] == "QLinearMatMul" else 0.0
        errors[node["name"]] = _relative(np.maximum(np.abs(got - want) - slack, 0), want)
    if (directory / "expected.npz").is_file():
        with np.load(directory / "expected.npz") as saved:
            for name in saved.files:
                errors[name] = _relative(np.abs(values[name].astype(np.float64) - saved[name]), saved[name])
    return errors


def _relative(difference: np.ndarray, want: np.ndarray) -> float:
    return float(difference.max() / max(float(np.abs(want).max()), 1e-30))


if __name__ == "__main__":
    print(json.dumps({p: worst_errors(Path(p)) for p in sys.argv[1:]}))
