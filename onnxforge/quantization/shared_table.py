"""One vocabulary table for a text2text int8 artifact: its encoder, its decoder and its logits projection.

Marian, BART, mBART and T5 v1.0 tie their token embeddings: the encoder's table, the decoder's table and the
output projection are one matrix, which the export writes three times (a Gather table in each graph and the
projection's transposed weight). Here the projection's int8 blocks become the only copy: MatMulNBits' symmetric
8-bit blocks are ``code + 128`` per value with one scale per block along each vocabulary row, which is a row
layout, so both tables gather their rows from those bytes (``(blocks[ids] − 128) · scales[ids]``, standard ONNX
operators). The blocks and scales are written once, to one external-data file that both graphs name; nothing
changes for a model whose tables and projection differ.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..export.graph import graphs
from .tables import constant, gathered_tables, quantized_rows, replace_gathers
from .weights import WeightOnlyConfig, fitting_block, quantize_weights


def tied_projection(model: onnx.ModelProto) -> tuple[str, str] | None:
    """(float table, projection MatMul) of a float graph whose gathered vocabulary table is its logits
    projection's weight transposed, or None."""
    initializers = {t.name: t for t in model.graph.initializer}
    # any size: being the projection's weight is what makes a table the vocabulary
    tables = {name: numpy_helper.to_array(initializers[name]) for name in gathered_tables(model, min_rows=1)}
    for graph in graphs(model.graph):
        for node in graph.node:
            weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
            if weight is None or len(weight.dims) != 2:
                continue
            for name, table in tables.items():
                if table.shape == tuple(reversed(weight.dims)) and np.array_equal(numpy_helper.to_array(weight).T, table):
                    return name, node.name
    return None


def projection_blocks(model: onnx.ModelProto, projection: str) -> tuple[str, str, int]:
    """(blocks, scales, block size) of the symmetric 8-bit MatMulNBits that quantized MatMul ``projection``."""
    for node in (n for graph in graphs(model.graph) for n in graph.node):
        if node.op_type == "MatMulNBits" and node.name.removesuffix("_Q8") == projection:
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attributes["bits"] != 8 or (len(node.input) > 3 and node.input[3]):
                break
            return node.input[1], node.input[2], int(attributes["block_size"])
    raise ValueError(f"{projection} is not a symmetric 8-bit MatMulNBits in this graph")


def gather_from_blocks(model: onnx.ModelProto, table: str, blocks: str, scales: str, block: int,
                       source: onnx.ModelProto | None = None) -> None:  # fmt: skip
    """Every Gather of float ``table`` in ``model`` reads its rows from the projection's ``blocks`` and ``scales``
    instead (copied in from ``source`` when they live there); the float table is dropped."""
    initializers = {t.name: t for t in model.graph.initializer}
    width = int(initializers[table].dims[1])
    if source is not None:
        model.graph.initializer.extend(t for t in source.graph.initializer if t.name in (blocks, scales))
    replace_gathers(model, table, width, lambda flat, base: _block_rows(model, blocks, scales, block, width, flat, base))
    model.graph.initializer.remove(initializers[table])


def _block_rows(model: onnx.ModelProto, blocks: str, scales: str, block: int, width: int, flat: str,
                base: str) -> list[onnx.NodeProto]:  # fmt: skip
    """(n,) ids → ``{base}/rows`` (n, width): (code − 128) · scale per block (``block`` divides ``width``: the
    projection's K)."""
    offset = constant(model, "blocks_offset", np.array(128, np.float32))
    last = constant(model, "rows_last_axis", np.array([-1], np.int64))
    scale_shape = constant(model, f"blocks_scales_{width // block}", np.array([-1, width // block], np.int64))
    rows = constant(model, f"rows_width_2d_{width}", np.array([-1, width], np.int64))
    n = lambda op, inputs, out, **kw: helper.make_node(op, inputs, [f"{base}/{out}"], name=f"{base}/{out}", **kw)
    return [
        n("Gather", [blocks, flat], "codes"),
        n("Cast", [f"{base}/codes"], "codes_f", to=TensorProto.FLOAT),
        n("Sub", [f"{base}/codes_f", offset], "centred"),
        n("Reshape", [scales, scale_shape], "scale_rows"),
        n("Gather", [f"{base}/scale_rows", flat], "scales"),
        n("Unsqueeze", [f"{base}/scales", last], "scales1"),
        n("Mul", [f"{base}/centred", f"{base}/scales1"], "scaled"),
        n("Reshape", [f"{base}/scaled", rows], "rows"),
    ]


def projection_rows(model: onnx.ModelProto, projection: str) -> str:
    """Store per-token int8 ``projection``'s codes as vocabulary rows (N × K, ``{projection}/weight_rows``), which a
    table gathers from a row per token (a column of K × N is one byte per cache line: 1.6 ms a step at 64 rows); its
    MatMulIntegerToFloat reads them through a Transpose, which onnxruntime folds at load, before prepacking."""
    initializers = {t.name: t for t in model.graph.initializer}
    codes, rows = f"{projection}/weight_int8", f"{projection}/weight_rows"
    model.graph.initializer.remove(initializers[codes])
    model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(initializers[codes]).T.copy(), rows))
    model.graph.node.insert(0, helper.make_node("Transpose", [rows], [codes], name=f"{projection}/columns", perm=[1, 0]))
    return rows


def gather_from_rows(model: onnx.ModelProto, table: str, codes: str, scales: str, steps: int,
                     source: onnx.ModelProto | None = None) -> None:  # fmt: skip
    """Every Gather of float ``table`` in ``model`` reads its rows from a per-token int8 projection's rows instead
    (``codes`` vocabulary × K, one ``scales`` entry per row, times ``steps``), copied in from ``source`` when they
    live there; the float table is dropped."""
    initializers = {t.name: t for t in model.graph.initializer}
    width = int(initializers[table].dims[1])
    if source is not None:
        model.graph.initializer.extend(t for t in source.graph.initializer if t.name in (codes, scales))
    steps_name = constant(model, f"row_steps_{steps}", np.array(steps, np.float32))
    last = constant(model, "rows_last_axis", np.array([-1], np.int64))
    n = lambda op, inputs, out, base, **kw: helper.make_node(op, inputs, [f"{base}/{out}"], name=f"{base}/{out}", **kw)
    replace_gathers(model, table, width, lambda flat, base: [
        n("Gather", [codes, flat], "codes", base),
        n("Cast", [f"{base}/codes"], "codes_f", base, to=TensorProto.FLOAT),
        n("Gather", [scales, flat], "steps", base),
        n("Mul", [f"{base}/steps", steps_name], "scales", base),
        n("Unsqueeze", [f"{base}/scales", last], "scales1", base),
        n("Mul", [f"{base}/codes_f", f"{base}/scales1"], "rows", base),
    ])  # fmt: skip
    model.graph.initializer.remove(initializers[table])


def quantize_tied(decoder_src: Path, decoder_dst: Path, encoder_src: Path, encoder_dst: Path,
                  config: WeightOnlyConfig) -> tuple[WeightOnlyConfig, tuple[str, str] | None]:  # fmt: skip
    """Weight-only int8 of a text2text decoder (``config``, its block cut to one that divides every K) whose tables
    read the projection's blocks, and a copy of the float encoder at ``encoder_dst`` whose equal table reads them too;
    returns the config used and the (blocks, scales) both graphs hold, for ``export.graph.write_shared``. Untied: the decoder
    quantized as usual, the encoder copied, None."""
    fp32 = onnx.load(str(decoder_src))
    config = replace(config, block_size=fitting_block(fp32, config.block_size))
    tie = tied_projection(fp32)
    if tie is None:
        quantize_weights(decoder_src, decoder_dst, config)
        shutil.copyfile(encoder_src, encoder_dst)
        return config, None
    table, projection = tie
    quantize_weights(decoder_src, decoder_dst, replace(config, embeddings=False))
    decoder = onnx.load(str(decoder_dst))
    blocks, scales, block = projection_blocks(decoder, projection)
    gather_from_blocks(decoder, table, blocks, scales, block)
    if config.embeddings:
        quantized_rows(decoder, 8)  # a table of its own, if any
    onnx.save(decoder, str(decoder_dst))
    encoder = onnx.load(str(encoder_src))
    values = numpy_helper.to_array(next(t for t in fp32.graph.initializer if t.name == table))
    initializers = {t.name: t for t in encoder.graph.initializer}
    for name in gathered_tables(encoder, min_rows=1):
        if np.array_equal(numpy_helper.to_array(initializers[name]), values):
            gather_from_blocks(encoder, name, blocks, scales, block, source=decoder)
    onnx.save(encoder, str(encoder_dst))
    return config, (blocks, scales)
