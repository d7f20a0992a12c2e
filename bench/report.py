"""Bench output: a markdown table (printed and saved), JSON with every raw figure, and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = [
    ("system", "system", None), ("sent/s b32", "sentences_per_s", 1), ("× torch", "speedup", 2),
    ("p50 ms b1", "p50_ms", 2), ("p99 ms b1", "p99_ms", 2), ("cold s", "cold_start_s", 2),
    ("peak RSS MB", "peak_rss_mb", 0), ("size MB", "size_mb", 1), ("mean cos", "mean_cosine", 4),
    ("min cos", "min_cosine", 4), ("R@10", "recall_at_10", 3), ("Pareto", "pareto", None), ("GFLOP/s", "gflops", 1),
    ("% GEMM peak", "gemm_pct", 1),
]  # fmt: skip
FRONT = ("sentences_per_s", "recall_at_10")  # the speed-vs-fidelity trade-off: both higher is better


def pareto(rows: list[dict], axes: tuple[str, str] = FRONT) -> list[dict]:
    """The rows no other row beats on both ``axes`` (at least as good on each, better on one), fastest first."""
    x, y = axes
    front = [r for r in rows if not any(o[x] >= r[x] and o[y] >= r[y] and (o[x] > r[x] or o[y] > r[y]) for o in rows)]
    return sorted(front, key=lambda r: -r[x])


def markdown(rows: list[dict], machine: dict, title: str) -> str:
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [f"### {title}", "", head, rule]
    front = {row["system"] for row in pareto(rows)}
    for row in rows:
        row = {**row, "pareto": "✓" if row["system"] in front else ""}
        cells = [row[key] if digits is None else f"{row[key]:.{digits}f}" if row.get(key) is not None else ""
                 for _, key, digits in COLUMNS]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", (f"Machine: {machine['cpu']} ({machine.get('class', '?')} integer kernels), {machine['threads']} threads of {machine['cores_usable']} usable, "
                   f"{'/'.join(machine['isa'])}; fp32 GEMM {machine['gemm_fp32_gflops']:.0f} GFLOP/s, "
                   f"memory copy {machine['memory_gbps']:.1f} GB/s (measured in this run).")]  # fmt: skip
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib's pyplot on its file-only backend: the bench writes PNGs and needs no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lay out, write and close ``fig``."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def plots(rows: list[dict], out: Path) -> list[Path]:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "osD^vP*X"
    for i, row in enumerate(rows):  # a legend, not annotations: fp32 systems sit on top of each other at the floor
        ax.scatter(row["sentences_per_s"], 1 - row["mean_cosine"] + 1e-7, s=70, marker=markers[i % len(markers)],
                   label=f"{row['system']}  (R@10 {row['recall_at_10']:.3f})", alpha=0.85)  # fmt: skip
    ax.legend(fontsize=7, loc="upper left")
    ax.set(xlabel="sentences/s at batch 32 (higher is better)", ylabel="1 − mean cosine to torch fp32 (lower is better)",
           yscale="log", title="MiniLM-L6: throughput vs fidelity")  # fmt: skip
    ax.grid(alpha=0.3)
    scatter = save_figure(fig, out / "encoder_throughput_vs_fidelity.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    front = pareto(rows)
    ax.plot([r["sentences_per_s"] for r in front], [r["recall_at_10"] for r in front], "--", color="grey", alpha=0.6,
            label="Pareto front")  # fmt: skip
    for i, row in enumerate(rows):
        ax.scatter(row["sentences_per_s"], row["recall_at_10"], s=70, marker=markers[i % len(markers)], label=row["system"])
    ax.legend(fontsize=7, loc="lower left")
    ax.set(xlabel="sentences/s at batch 32 (higher is better)", ylabel="recall@10 vs torch fp32 (higher is better)",
           title="MiniLM-L6 and its distilled student: speed vs fidelity")  # fmt: skip
    ax.grid(alpha=0.3)
    front_plot = save_figure(fig, out / "encoder_pareto.png")

    fig, ax = plt.subplots(figsize=(9, 5))
    ax.boxplot([row["latencies_ms"] for row in rows], vert=False, showfliers=True)
    ax.set_yticks(range(1, len(rows) + 1), [row["system"] for row in rows], fontsize=8)
    ax.set(xlabel="batch-1 latency, ms", xscale="log", title="MiniLM-L6: batch-1 latency distribution")
    ax.grid(alpha=0.3)
    return [scatter, front_plot, save_figure(fig, out / "encoder_latency.png")]


def save(results: dict, table: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(table)
