"""Accuracy-aware int8: rank nodes by how much quantizing each alone hurts, keep the worst apart until the gate passes.

Sensitivity is *quantize-one*: the prepared float graph with only that node quantized, its first output compared
with the float graph's on calibration text (relative L2 error, so any task works). The greedy search then keeps
the k most sensitive nodes apart (``Int8Config.keep_as``) for the smallest k whose gate figures pass on the search
texts: fewer nodes apart is faster, so that candidate is the fastest that passes. k is found by trying 0, 1, 2,
4, 8 … and then bisecting, which assumes error falls as nodes are kept apart (it does, see the manifest's trace).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..progress import bar
from ..runtime.session import SessionConfig, create_session
from .int8 import Int8Config, finish, quantizable_nodes

Feeds = list[dict[str, np.ndarray]]
Figures = dict[str, float]


@dataclass(frozen=True)
class Step:
    """One candidate of the search: how many nodes were kept apart and the figures it reached."""

    kept: int
    figures: Figures
    passed: bool


def _outputs(model: Path, feeds: Feeds) -> list[np.ndarray]:
    session = create_session(model, SessionConfig(providers="cpu"))
    first = session.get_outputs()[0].name
    return [session.run([first], feed)[0] for feed in feeds]


def sensitivity(prepared: Path, config: Int8Config, feeds: Feeds) -> list[tuple[str, float]]:
    """(node, relative output error when only it is quantized), worst first."""
    nodes = quantizable_nodes(prepared)
    reference = _outputs(prepared, feeds)
    alone = replace(config, keep=(), keep_as="fp32")
    errors = []
    with tempfile.TemporaryDirectory(prefix="onnxforge-sensitivity-") as tmp:
        candidate = Path(tmp) / "one.onnx"
        for node in bar(nodes, "sensitivity", total=len(nodes)):
            finish(prepared, candidate, alone, feeds, exclude=tuple(n for n in nodes if n != node))
            got = _outputs(candidate, feeds)
            error = sum(float(np.linalg.norm(g - r)) for g, r in zip(got, reference))
            errors.append((node, error / sum(float(np.linalg.norm(r)) for r in reference)))
    return sorted(errors, key=lambda item: -item[1])


def greedy(prepared: Path, config: Int8Config, ranking: list[str], feeds: Feeds,
           judge: Callable[[Path], tuple[Figures, bool]], out: Path,
           tried: Sequence[Step] = ()) -> tuple[Int8Config, list[Step]]:  # fmt: skip
    """Smallest k ≤ ``config.max_keep`` whose candidate ``judge`` passes, left at ``out`` (else the largest k).
    ``tried``: candidates already judged (their builds are not at ``out``), not built again."""
    limit = min(config.max_keep, len(ranking))
    steps: dict[int, Step] = {}
    known = {step.kept: step for step in tried}
    built: int | None = None  # what lies at ``out``

    def build(kept: int) -> None:
        nonlocal built
        finish(prepared, out, replace(config, keep=tuple(ranking[:kept])), feeds)
        built = kept

    def attempt(kept: int) -> bool:
        if kept not in known:
            build(kept)
            known[kept] = Step(kept, *judge(out))
        steps[kept] = known[kept]
        return steps[kept].passed

    failed, passed = -1, None
    for kept in _probes(limit):
        if attempt(kept):
            passed = kept
            break
        failed = kept
    while passed is not None and passed - failed > 1:
        middle = (failed + passed) // 2
        failed, passed = (failed, middle) if attempt(middle) else (middle, passed)
    chosen = limit if passed is None else passed
    if built != chosen:
        build(chosen)
    return replace(config, keep=tuple(ranking[:chosen])), [steps[k] for k in sorted(steps)]


def _probes(limit: int) -> list[int]:
    """0, 1, 2, 4, 8 … capped by (and ending at) ``limit``."""
    probes, kept = [0], 1
    while kept < limit:
        probes.append(kept)
        kept *= 2
    return probes + [limit] if limit > 0 else probes
