"""int8 for a text2text artifact whose decoders onnxforge built (``export.seq2seq_graph``): per-token activations
on u8·s8 kernels, each weight stored once for all graphs.

Beams and batches decode 16 to 64 rows a step, where 8-bit MatMulNBits (the decoder int8 of traced graphs)
runs at ~120 GOP/s on AVX2 whatever the rows, and the per-token u8·s8 product (``per_token.py``: one scale per
row, weights within the pair rule, exact on every x86 kernel) at 1.3–2.5× that from 16 rows (K × N of 512 × 32,000,
512 × 2,048 and 2,048 × 512). Every weight MatMul of the merged decoder and of the step graph is rewritten alike:
the two graphs name their weights alike, so they hold the same bytes under the same names. A tied vocabulary keeps
one copy, the projection's int8 codes stored as rows (one scale each; the projection reads them transposed): the
decoder's and the encoder's tables gather their rows from them. ``export.graph.write_shared`` then stores what the graphs share once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..export.graph import graphs
from .per_token import per_token_int8
from .saturation import QMAX, refuse_saturating
from .shared_table import gather_from_rows, projection_rows, tied_projection
from .tables import gathered_tables, quantized_rows


def quantize_decoders(decoders: list[tuple[Path, Path]], encoder_src: Path, encoder_dst: Path) -> None:
    """Per-token int8 of each (src, dst) decoder graph, and a copy of the float encoder at ``encoder_dst`` whose
    vocabulary table, where tied to the projection, reads the projection's rows too."""
    models = [onnx.load(str(src)) for src, _ in decoders]
    tie = tied_projection(models[-1])  # the step graph: no subgraph to search
    if tie is not None:
        values = next(numpy_helper.to_array(t) for t in models[-1].graph.initializer if t.name == tie[0])
    encoder = onnx.load(str(encoder_src))
    for model in models:
        weights = {t.name for t in model.graph.initializer}
        per_token_int8(model, {n.name for g in graphs(model.graph) for n in g.node
                               if n.op_type == "MatMul" and n.input[1] in weights})  # fmt: skip
        if tie is not None:
            table, projection = tie
            gather_from_rows(model, table, projection_rows(model, projection), f"{projection}/weight_scale", QMAX)
        quantized_rows(model, 8)  # a table of its own, if any
    if tie is not None:
        initializers = {t.name: t for t in encoder.graph.initializer}
        for name in gathered_tables(encoder, min_rows=1):
            if np.array_equal(numpy_helper.to_array(initializers[name]), values):
                gather_from_rows(encoder, name, f"{tie[1]}/weight_rows", f"{tie[1]}/weight_scale", QMAX,
                                 source=models[-1])  # fmt: skip
    for model, (_, dst) in zip(models, decoders):
        refuse_saturating(model, dst)
        onnx.save(model, str(dst))
    onnx.save(encoder, str(encoder_dst))

