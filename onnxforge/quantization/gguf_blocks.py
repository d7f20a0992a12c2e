"""Keep a GGUF's own quantization: every weight MatMul and embedding Gather whose rows are rows of the file's
quantized tensors becomes MatMulNBits / GatherBlockQuantized holding exactly those blocks (no re-quantization).

Rows are found by content (a hash of the de-quantized row, then an exact comparison), so packed projections (QKV,
gate/up), the row permutations converters apply to Llama's q/k, tied embeddings and any family's naming are found
alike. Formats with an integer zero point (Q4_0, Q5_0, Q8_0, Q6_K) map onto MatMulNBits directly. Formats with a
float block minimum (Q4_1, Q5_1, Q4_K, Q5_K), which MatMulNBits' fast kernels cannot take as a zero point, have it
moved onto the nearest integer zero point (:meth:`Blocks.centred`) and the remainder added as ``blocksum(x) · M``:
blocksum(x) sums x over each block of K (Reshape + ReduceSum) and M holds the remainders (fp16 on disk when that is
exact; onnxruntime folds the Cast at load). Exact at ``accuracy_level=0``; at 4 only the activations are rounded
to int8 per block, as llama.cpp's own Q8 dot products.
A tied embedding shares the output projection's blocks (a Reshape of the same initializer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .ggml_blocks import FORMATS, Blocks, decode

MS = "com.microsoft"
_MULTIPLIERS = np.random.default_rng(20261123).integers(1, 2**63, 8192, dtype=np.uint64) | np.uint64(1)


def _row_hashes(values: np.ndarray) -> np.ndarray:
    """One 64-bit hash per row of float32 ``values`` (rows, columns), from the bits of every element."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32).astype(np.uint64)
    if bits.shape[1] > len(_MULTIPLIERS):
        raise ValueError(f"rows of {bits.shape[1]} values are longer than the {len(_MULTIPLIERS)} the hash covers")
    with np.errstate(over="ignore"):
        return (bits * _MULTIPLIERS[: bits.shape[1]]).sum(axis=1, dtype=np.uint64)


@dataclass
class FileRows:
    """Where each de-quantized row of a GGUF's quantized tensors lives: hash → (tensor, row)."""

    path: Path
    raw: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)  # tensor → (format, raw bytes)
    where: dict[int, tuple[str, int]] = field(default_factory=dict)
    _decoded: dict[str, Blocks] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> FileRows:
        from gguf import GGUFReader

        rows = cls(path)
        for tensor in GGUFReader(path).tensors:
            name = tensor.tensor_type.name
            if name not in FORMATS:
                continue  # float tensors (norms, biases) are the graph's own
            data = np.asarray(tensor.data)
            raw = data.reshape(-1, data.shape[-1])
            rows.raw[tensor.name] = (name, raw)
            for index, key in enumerate(_row_hashes(rows.blocks(tensor.name).values()).tolist()):
                rows.where.setdefault(key, (tensor.name, index))
        return rows

    def blocks(self, tensor: str) -> Blocks:
        if tensor not in self._decoded:
            self._decoded[tensor] = decode(*self.raw[tensor]).centred()
        return self._decoded[tensor]

    def find(self, hashes: np.ndarray) -> list[tuple[str, np.ndarray]] | None:
        """Runs of the rows with ``hashes`` that are consecutive tensors' rows: [(tensor, row indices)], or None if a
        row is missing."""
        found = [self.where.get(key) for key in hashes.tolist()]
        if any(f is None for f in found):
            return None
        runs: list[tuple[str, list[int]]] = []
        for tensor, index in found:
            if runs and runs[-1][0] == tensor:
                runs[-1][1].append(index)
            else:
                runs.append((tensor, [index]))
        return [(tensor, np.array(indices)) for tensor, indices in runs]

    def gather(self, rows: np.ndarray) -> tuple[Blocks, bytes] | None:
        """Blocks whose values equal ``rows`` exactly, assembled from the file's rows, and a key for those values;
        or None."""
        hashes = _row_hashes(rows)
        runs = self.find(hashes)
        if runs is None:
            return None
        blocks = join([self.blocks(tensor).rows(index) for tensor, index in runs])
        return (blocks, hashes.tobytes()) if np.array_equal(blocks.values(), rows) else None


def join(parts: list[Blocks]) -> Blocks:
    """Stack rows of (possibly different) formats in one form every part fits: the smallest block, the widest code."""
    block, bits = min(p.block for p in parts), max(p.bits for p in parts)
    parts = [p.split(block) for p in parts]
    if len(parts) == 1:
        return parts[0]
    offsets = None
    if any(p.offsets is not None for p in parts):
        offsets = np.concatenate([p.offsets if p.offsets is not None else np.zeros_like(p.scales) for p in parts])
    return Blocks("+".join(dict.fromkeys(p.format for p in parts)), np.concatenate([p.codes for p in parts]),
                  np.concatenate([p.scales for p in parts]), np.concatenate([p.zero_points for p in parts]),
                  offsets, bits)  # fmt: skip


def pack_codes(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes along the last axis as MatMulNBits stores them: two per byte (low nibble first) at 4 bits."""
    if bits == 8:
        return values.astype(np.uint8)
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), np.uint8)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


class _Rewriter:
    """Adds the exact nodes and initializers to ``model``; remembers what each node kept."""

    def __init__(self, model: onnx.ModelProto, accuracy_level: int) -> None:
        self.model, self.level = model, accuracy_level
        self.added: list[onnx.NodeProto] = []
        self.constants: list[onnx.NodeProto] = []  # Casts of initializers: they go first, read by any node
        self.names: set[str] = {t.name for t in model.graph.initializer}
        self.shared: dict[bytes, tuple[str, str, str, Blocks]] = {}  # rows' hashes → a MatMulNBits' B, scales, zp

    def initializer(self, name: str, value: np.ndarray) -> str:
        if name not in self.names:
            self.model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
            self.names.add(name)
        return name

    def node(self, op: str, inputs: list[str], output: str, name: str, domain: str = "", **attrs) -> str:
        self.added.append(helper.make_node(op, inputs, [output], name=name, domain=domain, **attrs))
        return output

    def stored_blocks(self, base: str, blocks: Blocks) -> tuple[str, str, str]:
        """Codes, scales and (when not the kernel's default) zero points as initializers."""
        codes = self.initializer(f"{base}_codes", pack_codes(blocks.codes, blocks.bits))
        scales = self.floats(f"{base}_scales", blocks.scales)
        zp = ""
        if (blocks.zero_points != 1 << (blocks.bits - 1)).any():
            zp = self.initializer(f"{base}_zero_points", pack_codes(blocks.zero_points, blocks.bits))
        return codes, scales, zp

    def floats(self, name: str, values: np.ndarray) -> str:
        """``values`` as float32; stored fp16 (+ a Cast that onnxruntime folds at load) when fp16 holds them exactly,
        as it does a GGUF's fp16 scales and Q4_1 minimums."""
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            return self.initializer(name, values)
        stored = self.initializer(f"{name}_fp16", half)
        self.constants.append(helper.make_node("Cast", [stored], [name], name=f"{name}/Cast", to=TensorProto.FLOAT))
        return name

    def blocksum(self, x: str, k: int, block: int) -> str:
        """The sum of ``x`` (batch, sequence, K) over each block of ``block`` along K: Reshape + ReduceSum, shared by
        every product that reads ``x`` (measured faster than a MatMul with a 0/1 matrix)."""
        summed = f"{x}/blocksum{block}"
        if not any(n.output[0] == summed for n in self.added):
            shape = self.initializer(f"gguf_blocks_{k}_{block}", np.array([0, 0, k // block, block], np.int64))
            split = self.node("Reshape", [x, shape], f"{summed}/blocks", f"{summed}/Reshape")
            self.node("ReduceSum", [split, self.initializer("gguf_last_axis", np.array([-1], np.int64))], summed,
                      f"{summed}/ReduceSum", keepdims=0)  # fmt: skip
        return summed

    def matmul(self, node: onnx.NodeProto, blocks: Blocks, key: bytes) -> None:
        n, blocks_per_row, block = blocks.codes.shape
        k, base = blocks_per_row * block, node.input[1]
        codes, scales, zp = self.stored_blocks(base, blocks)
        product = f"{node.output[0]}/blocks" if blocks.offsets is not None else node.output[0]
        self.node("MatMulNBits", [node.input[0], codes, scales, zp] if zp else [node.input[0], codes, scales], product,
                  f"{node.name}_{blocks.format}", MS, K=k, N=n, bits=blocks.bits, block_size=block,
                  accuracy_level=self.level)  # fmt: skip
        if blocks.offsets is not None:
            minimums = self.floats(f"{base}_minimums", np.ascontiguousarray(blocks.offsets.T))
            shift = self.node("MatMul", [self.blocksum(node.input[0], k, block), minimums], f"{node.output[0]}/minimums",
                              f"{node.name}/minimums/MatMul")  # fmt: skip
            self.node("Add", [product, shift], node.output[0], f"{node.name}/minimums/Add")
        self.shared[key] = (codes, scales, zp, blocks)

    def gather(self, node: onnx.NodeProto, blocks: Blocks, key: bytes) -> None:
        rows, blocks_per_row, block = blocks.codes.shape
        width, base = blocks_per_row * block, node.input[0]
        if key in self.shared and self.shared[key][3].offsets is None and blocks.offsets is None:
            codes3d, scales, zp, blocks = self.shared[key]  # a tied embedding: the output projection's own blocks
            shape = self.initializer(f"{base}_rows_shape", np.array([rows, -1], np.int64))
            codes = self.node("Reshape", [codes3d, shape], f"{base}_rows", f"{node.name}/shared/Reshape")
        else:
            codes, scales, zp = self.stored_blocks(base, blocks)
            codes = self.node("Reshape", [codes, self.initializer(f"{base}_rows_shape", np.array([rows, -1], np.int64))],
                              f"{base}_rows", f"{node.name}/rows/Reshape")  # fmt: skip
        out = f"{node.output[0]}/blocks" if blocks.offsets is not None else node.output[0]
        self.node("GatherBlockQuantized", [codes, node.input[1], scales, *([zp] if zp else [])], out,
                  f"{node.name}_{blocks.format}", MS, bits=blocks.bits, block_size=block, gather_axis=0,
                  quantize_axis=1)  # fmt: skip
        if blocks.offsets is None:
            return
        # + the gathered rows' block minimums, each spread over its block
        split = self.initializer(f"{base}_block_shape", np.array([0, 0, blocks_per_row, block], np.int64))
        joined = self.initializer(f"{base}_row_shape", np.array([0, 0, width], np.int64))
        minimums = self.node("Gather", [self.initializer(f"{base}_minimums", blocks.offsets), node.input[1]],
                             f"{base}/minimums", f"{node.name}/minimums/Gather")  # fmt: skip
        spread = self.node("Unsqueeze", [minimums, self.initializer("gguf_last_axis", np.array([-1], np.int64))],
                           f"{base}/minimums/spread", f"{node.name}/minimums/Unsqueeze")  # fmt: skip
        parts = self.node("Reshape", [out, split], f"{out}/split", f"{node.name}/minimums/Reshape")
        total = self.node("Add", [parts, spread], f"{out}/sum", f"{node.name}/minimums/Add")
        self.node("Reshape", [total, joined], node.output[0], f"{node.name}/minimums/Join")


def keep_file_blocks(model: onnx.ModelProto, gguf: Path, accuracy_level: int) -> tuple[dict[str, str], list[str]]:
    """Rewrite, in ``model``, every MatMul / axis-0 Gather whose constant weight is exactly rows of ``gguf``'s
    quantized tensors. Returns {node: the format(s) kept} and the names of the float MatMuls and Gathers it added
    (the block minimums' products, which weight quantization must leave alone)."""
    rows = FileRows.read(gguf)
    weights = {t.name: t for t in model.graph.initializer}
    rewriter = _Rewriter(model, accuracy_level)
    kept: dict[str, str] = {}
    groups: dict[int, list[onnx.NodeProto]] = {}  # a replaced node's position → the nodes that take its place
    # MatMuls first, so that a tied embedding's Gather finds the output projection's blocks to share
    for op in ("MatMul", "Gather"):
        for position, node in enumerate(model.graph.node):
            if node.op_type != op or (table := _constant_rows(node, weights)) is None:
                continue
            found = rows.gather(table)
            if found is None:
                continue
            start = len(rewriter.added)
            (rewriter.matmul if op == "MatMul" else rewriter.gather)(node, *found)
            kept[node.name] = found[0].format
            groups[position] = rewriter.added[start:]
    nodes = rewriter.constants + [new for position, n in enumerate(model.graph.node) for new in groups.get(position, [n])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    kept_initializers = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_initializers)
    if any(n.domain == MS for n in rewriter.added) and all(o.domain != MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    return kept, [n.name for n in rewriter.added if n.op_type in ("MatMul", "Gather")]


def _constant_rows(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    """The rows a GGUF would hold for this node's constant weight: a MatMul's (K, N) weight transposed, or a
    Gather's table (gathered along axis 0); None for anything else."""
    if node.op_type == "MatMul" and node.input[1] in weights:
        weight = numpy_helper.to_array(weights[node.input[1]])
        return np.ascontiguousarray(weight.T) if weight.ndim == 2 and weight.dtype == np.float32 else None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    if node.op_type == "Gather" and axis == 0 and node.input[0] in weights:
        table = numpy_helper.to_array(weights[node.input[0]])
        return table if table.ndim == 2 and table.dtype == np.float32 else None
    return None



def kept_record(gguf: Path, kept: dict[str, str]) -> dict[str, object]:
    """The manifest's account of what kept the file's blocks: the file, a count per format and each node's format."""
    counts: dict[str, int] = {}
    for fmt in kept.values():
        counts[fmt] = counts.get(fmt, 0) + 1
    return {"file": gguf.name, "formats": counts, "nodes": kept}
