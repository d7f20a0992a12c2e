"""Sinusoidal position tables computed in the graph instead of stored.

Marian (and the other fairseq-style models) gathers its positions from a fixed table: row ``p`` is
``sin(p · f_j)`` for the first half of the columns and ``cos(p · f_j)`` for the second, with ``f_j = 10000^(-2j/d)``.
At OPUS-MT's size that is 1 MB of float32 in the encoder and 1 MB in the decoder, as much as 2 of the 64 MB of an int8
artifact. A table that equals the formula (within float32 rounding of ``p · f_j``) is replaced by the rows it gives:
``Gather(table, positions)`` becomes ``Concat(Sin(positions · f), Cos(positions · f))``; learned tables are left as
they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .tables import constant, gathered_tables, replace_gathers

TOLERANCE = 1e-4  # float32 p · f_j is off by up to ~3e-5 radians at p = 512
BASE = 10000.0


def frequencies(width: int) -> np.ndarray:
    return (1.0 / np.power(BASE, 2 * np.arange(width // 2, dtype=np.float64) / width)).astype(np.float32)


def sinusoids(rows: int, width: int) -> np.ndarray:
    """The table the graph computes instead: float32 angles, as its Mul makes them."""
    angles = np.arange(rows, dtype=np.float32)[:, None] * frequencies(width)[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def computed_positions(model: onnx.ModelProto) -> list[str]:
    """Replace, in ``model``, every gathered table that is the sinusoid formula by the rows it computes; returns the
    tables' names."""
    initializers = {t.name: t for t in model.graph.initializer}
    changed = []
    for name in gathered_tables(model, min_rows=2):
        tensor = initializers[name]
        rows, width = tensor.dims
        if width % 2 or np.abs(numpy_helper.to_array(tensor) - sinusoids(rows, width)).max() > TOLERANCE:
            continue
        model.graph.initializer.remove(tensor)
        scale = constant(model, f"{name}_frequencies", frequencies(width))
        axis = constant(model, "rows_last_axis", np.array([-1], np.int64))  # the tables' own, if there
        replace_gathers(model, name, width, lambda ids, base, scale=scale, axis=axis: _rows(ids, scale, axis, base), flat=False)
        changed.append(name)
    return changed


def compute_positions(path: Path) -> list[str]:
    """:func:`computed_positions` on the graph file at ``path``, rewritten only if a table was replaced."""
    model = onnx.load(str(path), load_external_data=False)
    changed = computed_positions(model)
    if changed:
        path.write_bytes(model.SerializeToString())  # its external data (a shared table) stays where it is
    return changed


def _rows(ids: str, frequencies: str, axis: str, base: str) -> list[onnx.NodeProto]:
    """Positions (any shape) → ``{base}/rows`` (their shape, width): sines, then cosines, of positions · f."""
    return [
        helper.make_node("Cast", [ids], [f"{base}/float"], to=TensorProto.FLOAT, name=f"{base}/Cast"),
        helper.make_node("Unsqueeze", [f"{base}/float", axis], [f"{base}/column"], name=f"{base}/Column"),
        helper.make_node("Mul", [f"{base}/column", frequencies], [f"{base}/angles"], name=f"{base}/Angles"),
        helper.make_node("Sin", [f"{base}/angles"], [f"{base}/sin"], name=f"{base}/Sin"),
        helper.make_node("Cos", [f"{base}/angles"], [f"{base}/cos"], name=f"{base}/Cos"),
        helper.make_node("Concat", [f"{base}/sin", f"{base}/cos"], [f"{base}/rows"], axis=-1, name=f"{base}/Rows"),
    ]  # fmt: skip
