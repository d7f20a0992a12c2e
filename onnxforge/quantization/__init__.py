"""Quantize stage: an fp32 artifact → a quantized artifact that passed its quality gate, or no artifact.

``quantize(fp32_dir, out_dir, Int8Config(), Gate({...}))`` quantizes the fused fp32 graph, measures the
candidate against the fp32 artifact on held-out real text with the task's own figures, and publishes only
when every figure meets the gate. Needs the ``build`` extra.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from .. import corpus
from ..artifact import MANIFEST, Manifest, publish, staging, verify
from ..export.graph import fused_ops, op_counts
from ..progress import step
from ..runtime import open_artifact
from ..runtime.pipelines import Loaded
from ..runtime.session import SessionConfig, create_session
from ..versions import tool_versions
from .gate import Gate, GateError, measure
from .int8 import Int8Config, quantize_int8

__all__ = ["Gate", "GateError", "Int8Config", "quantize"]


def _stage_copy(src: Path, stage: Path, model_file: str) -> None:
    for path in src.iterdir():
        if path.is_file() and path.name not in (MANIFEST, model_file):
            shutil.copy2(path, stage / path.name)


def quantize(src_dir: str | Path, out_dir: str | Path, config: Int8Config = Int8Config(), gate: Gate = Gate(),
             texts: list[str] | None = None, variant: str | None = None, recipe: str | None = None) -> Manifest:  # fmt: skip
    """Quantize the artifact at ``src_dir`` into ``out_dir``; raises :class:`GateError` if the gate is missed."""
    src = Path(src_dir)
    out = Path(out_dir)
    reference = open_artifact(src, providers="cpu")
    base = reference.manifest
    held_out = texts or corpus.split(corpus.load()).evaluation
    with staging(out) as stage:
        with step(f"int8 {base.name}: per_channel={config.per_channel}, ops={'/'.join(config.op_types)}"):
            quantize_int8(src / base.model_file, stage / base.model_file, config)
            _stage_copy(src, stage, base.model_file)
        candidate = Loaded(stage, base, create_session(stage / base.model_file, SessionConfig(providers="cpu")))
        with step(f"quality gate on {len(held_out)} held-out texts"):
            figures = measure(base.task, reference, candidate, held_out)
        failures = gate.failures(figures)
        if failures:
            shown = ", ".join(f"{k}={v:.5f}" for k, v in figures.items() if isinstance(v, float))
            raise GateError(f"{base.name} int8 missed its gate ({'; '.join(failures)}); figures: {shown}. "
                            "No artifact was written.")  # fmt: skip
        manifest = replace(
            base, variant=variant or out.name, precision=config.describe(), quality=gate.record(figures),
            graph={**base.graph, "fused_ops": fused_ops(op_counts(stage / base.model_file))},
            parity={"inherited_from": base.variant, **base.parity}, build=tool_versions(base.build.get("opset"), recipe),
            files={},
        )  # fmt: skip
        publish(stage, manifest, out)
    verify(out)
    return manifest
