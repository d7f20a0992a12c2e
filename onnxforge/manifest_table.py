"""Manifests as readable tables: the build summary (one row per artifact) and ``onnxforge inspect`` (one artifact)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict

from .artifact import Manifest
from .cpu import this_cpu
from .table import fmt, render


def _size_mb(manifest: Manifest) -> str:
    return f"{sum(f.bytes for f in manifest.files.values()) / 1e6:.1f} MB"


def _figures(values: dict, digits: int = 4) -> str:
    """'name value, …' for the float figures of ``values``."""
    return ", ".join(f"{k} {fmt(v, digits)}" for k, v in values.items() if isinstance(v, float))


def _quality(manifest: Manifest) -> str:
    """The gate's figures and verdict, naming the reference when it is not the fp32 parent (a student's teacher);
    for a student's fp32, the distillation's held-out figures against its teacher."""
    q = manifest.quality
    if not q:
        held_out = (manifest.source.get("distillation") or {}).get("held_out")
        return f"vs teacher: {_figures(held_out)}" if held_out else ""
    named = "" if q.get("reference", "fp32") == "fp32" else f"vs {q['reference']}: "
    return f"{named}{_figures(q)} ({'pass' if q.get('passed') else 'FAIL'})"


def _distillation_rows(record: dict) -> list[list[str]]:
    trained = (f"layers {record['layers']} of {record['teacher_layers']} of {record['teacher']['model']}, "
               f"{record['texts']:,} texts, {record['steps']:,} steps, {record['training_seconds']:.0f} s")  # fmt: skip
    held_out = f"vs teacher: {_figures(record['held_out'])} (untrained: {_figures(record['held_out_untrained'])})"
    return [["source.distillation", trained], ["", held_out]]


def _bytes(manifest: Manifest) -> str:
    """Where the graph's bytes are, in MB: embeddings / attention / FFN / head / other."""
    groups = manifest.graph.get("bytes") or {}
    return " / ".join(f"{groups.get(k, 0) / 1e6:.1f}" for k in ("embeddings", "attention", "ffn", "head", "other"))


def summary_rows(items: list[tuple[str, Manifest, str]]) -> str:
    """The build summary: one row per artifact with its size, where the bytes are, parity and quality figures."""
    rows = []
    for key, m, state in items:
        parity = {} if "inherited_from" in m.parity else m.parity  # a quantized variant reports quality instead
        rows.append([
            key, m.task, m.precision.get("weights", ""), _size_mb(m), _bytes(m), state,
            fmt(parity.get("max_abs_diff")), fmt(parity.get("min_cosine"), 7), _quality(m) or "n/a (reference)",
        ])  # fmt: skip
    headers = ["artifact", "task", "weights", "size", "MB emb/attn/ffn/head/other", "build", "parity max|Δ|",
               "parity min cos", "quality (vs fp32 unless named)"]  # fmt: skip
    return render(headers, rows)


def _search_rows(steps: list[dict]) -> list[list[str]]:
    return [[f"quality.search[{s['kept']} kept apart]",
             _figures(s["figures"], 5)
             + ("  pass" if s["passed"] else "  fail")] for s in steps]  # fmt: skip


def _sensitivity_rows(nodes: list[dict]) -> list[list[str]]:
    return [[f"quality.sensitivity #{i + 1}", f"{n['node']}  error {n['error']:.2e}"] for i, n in enumerate(nodes)]


def _kept_rows(names: list[str]) -> list[list[str]]:
    return [["precision.kept", f"{len(names)} nodes"]] + [["", name] for name in names]


def _gguf_rows(record: dict) -> list[list[str]]:
    """The GGUF blocks a variant kept: the file and a count per format (each node's format is in the manifest)."""
    counts = ", ".join(f"{fmt} × {n}" for fmt, n in record["formats"].items())
    return [["precision.gguf_blocks", f"{record['file']}: {counts}"]]


# Manifest fields that read better as several rows than as one JSON blob.
REPORT_ROWS: dict[tuple[str, str], Callable[[list], list[list[str]]]] = {
    ("quality", "search"): _search_rows,
    ("quality", "sensitivity"): _sensitivity_rows,
    ("precision", "kept"): _kept_rows,
    ("precision", "gguf_blocks"): _gguf_rows,
    ("graph", "bytes"): lambda groups: [["graph.bytes", ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in groups.items())]],
}


def manifest_rows(m: Manifest) -> list[list[str]]:
    """``onnxforge inspect``'s rows: identity, signature, every manifest section, files and this machine."""
    rows = [["name", f"{m.name}/{m.variant}"], ["task", m.task], ["source", m.source.get("model")],
            ["size", _size_mb(m)], ["targets", ", ".join(m.targets)]]  # fmt: skip
    if "distillation" in m.source:
        rows += _distillation_rows(m.source["distillation"])
    rows += [[f"input {t.name}", f"{t.dtype} {t.shape}"] for t in m.inputs]
    rows += [[f"output {t.name}", f"{t.dtype} {t.shape}"] for t in m.outputs]
    sections = {"preprocess": {k: v for k, v in asdict(m.preprocess).items() if v is not None}}
    for section in ("preprocess", "precision", "graph", "parity", "quality", "build"):
        for key, value in sections.get(section, getattr(m, section)).items():
            if (section, key) in REPORT_ROWS:
                rows += REPORT_ROWS[section, key](value)
            else:
                rows.append([f"{section}.{key}", fmt(value, 6) if isinstance(value, float) else json.dumps(value)])
    rows += [[f"file {name}", f"{entry.bytes:,} B  sha256 {entry.sha256[:16]}…"] for name, entry in m.files.items()]
    rows.append(["this machine", cpu_line(this_cpu().record())])
    return rows


def cpu_line(record: dict) -> str:
    return f"{record.get('cpu', '?')} ({record.get('class', '?')})"
