"""Quantize stage: an fp32 artifact → a quantized artifact that passed its quality gate, or no artifact.

``quantize(fp32_dir, out_dir, Int8Config(...) | Fp16Config(), Gate({...}))``. For int8 it prepares the fused fp32 graph (typed, smoothed if
asked), quantizes it, and with ``max_keep > 0`` keeps the most sensitive nodes apart until the gate passes on
calibration-side search text. The chosen candidate is then measured against the fp32 artifact on the held-out
evaluation split and published only when every figure meets the gate. Needs the ``build`` extra.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import onnx

from .. import corpus
from ..artifact import Manifest, copy_files, graph_and_data_files, graph_files, publish, staging, verify
from ..cpu import this_cpu
from ..export.graph import byte_groups, fused_ops, op_counts, write_shared
from ..progress import step
from ..runtime import open_artifact
from ..runtime.base import Loaded
from ..runtime.session import SessionConfig, create_session
from ..tasks import get_task
from ..versions import tool_versions
from .calibration import activation_gram, text_feeds
from .fp16 import Fp16Config, to_fp16
from .gate import Gate, GateError, check_gate, expected, measure
from .gguf_blocks import kept_record
from .int8 import Int8Config, finish, prepare
from .positions import compute_positions
from .saturation import PAIR_WEIGHT_LIMIT
from .search import Step, greedy, sensitivity
from .seq2seq_int8 import quantize_decoders
from .shared_table import quantize_tied
from .smooth import weight_matmuls
from .speed import decode_feeds, speed_vs
from .weights import WeightOnlyConfig, quantize_weights

__all__ = ["Fp16Config", "Gate", "GateError", "Int8Config", "WeightOnlyConfig", "config_for", "quantize", "weight_only"]
Config = Int8Config | Fp16Config | WeightOnlyConfig
SENSITIVITY_TEXTS = 64
# A text2text decoder: decoding reads every weight per token. Symmetric 8-bit blocks hold the shared vocabulary
# (shared_table.py); blocks of 256 (or the largest that divides every K) cut the scales to 1/64 of the codes and ran
# faster than blocks of 32 at 1 to 64 rows.
DECODER_INT8 = WeightOnlyConfig(bits=8, symmetric=True, block_size=256)


def weight_only(method: str, task: str, settings: dict[str, object] | None = None) -> bool:
    """Whether ``method`` quantizes weights only for ``task``: int4 always; int8 for decoders, whose decoding is
    bound by the bytes of weights read per token, not by arithmetic, unless ``settings`` name int8 ``activations``.
    (A text2text artifact's int8 is an :class:`Int8Config` for its encoder; its decoder is weight-only regardless.)"""
    return method == "int4" or (method == "int8" and get_task(task).generative and "activations" not in (settings or {}))


def config_for(method: str, task: str, settings: dict[str, object]) -> Config:
    """A method ("int8", "int4", "fp16") and task → its config (see :func:`weight_only`)."""
    if method == "fp16":
        return Fp16Config(**settings)
    if weight_only(method, task, settings):
        return WeightOnlyConfig(bits=4 if method == "int4" else 8, **settings)
    if method == "int8":
        return Int8Config(**settings)
    raise ValueError(f"unknown quantization method {method!r}; supported: int8, int4, fp16")


def _candidate(reference: Loaded, model: Path) -> Loaded:
    """A candidate graph with the reference's tokenizer and manifest, on CPU (and its encoder and step graphs beside
    it, if any)."""
    cpu = SessionConfig(providers="cpu")
    encoder, step = (create_session(model.parent / name, cpu) if name else None
                     for name in (reference.manifest.encoder_file, reference.manifest.step_file))  # fmt: skip
    return replace(reference, session=create_session(model, cpu), encoder=encoder, step=step)


def quantize(src_dir: str | Path, out_dir: str | Path, config: Config | None = None,
             gate: Gate | None = None,
             texts: list[str] | None = None, calibration: list[str] | None = None, variant: str | None = None,
             recipe: str | None = None, gguf: Path | None = None, teacher: str | Path | None = None) -> Manifest:  # fmt: skip
    """Quantize the artifact at ``src_dir`` into ``out_dir``; raises :class:`GateError` if the gate is missed.

    ``texts``: held-out evaluation text (default: the shipped corpus's evaluation split); ``calibration``:
    calibration and search text (default: its calibration split). The two must not overlap. ``gguf``: the file the
    artifact was exported from, whose blocks weight-only quantization keeps (see :mod:`.gguf_blocks`). ``teacher``:
    for a distilled student, the fp32 artifact of its teacher, which the gate (and search) measure against instead of
    ``src_dir``: the figures then say what the student costs against the model the user chose.
    """
    config, gate = config or Int8Config(), gate or Gate()
    src, out = Path(src_dir), Path(out_dir)
    reference = open_artifact(src, providers="cpu")
    base = reference.manifest
    check_gate(base.task, gate)
    split = corpus.split(corpus.load())
    held_out, calib = texts or split.evaluation, calibration or split.calibration
    if overlap := set(held_out) & set(calib):
        raise ValueError(f"{len(overlap)} texts are in both the calibration and the evaluation set")
    judge = _teacher(teacher, reference, held_out[:64]) if teacher else reference
    report: dict[str, object] = {}
    precision: dict[str, object] = {}  # what the config does not say: the GGUF blocks kept
    shared: tuple[str, ...] | None = None  # initializers the graphs hold alike, stored once (shared_table.py)
    with staging(out) as stage, tempfile.TemporaryDirectory(prefix="onnxforge-quantize-") as tmp:
        model = stage / base.model_file
        graphs = graph_files(base)
        paths = [stage / graph for graph in graphs]
        model.parent.mkdir(parents=True, exist_ok=True)  # a graph in a folder (transformers.js's onnx/)
        if isinstance(config, Fp16Config):
            with step(f"fp16 {base.name}, {len(config.block)} fragile op types kept fp32"):
                for graph in graphs:
                    to_fp16(src / graph, stage / graph, config.block)
        elif isinstance(config, WeightOnlyConfig):
            keeping = f", keeping {gguf.name}'s blocks" if gguf and not config.requantize else ""
            grams = _grams(reference, src / base.model_file, calib, config) if config.weight_rounding == "gptq" else None
            with step(f"int{config.bits} weights of {base.name}, block {config.block_size}{keeping}"):
                for graph in graphs:
                    kept = quantize_weights(src / graph, stage / graph, config, None if config.requantize else gguf,
                                            grams)  # fmt: skip
            if kept:
                precision["gguf_blocks"] = kept_record(gguf, kept)
        elif base.encoder_file:  # text2text: the encoder int8 as encoders have it, the decoder weight-only int8
            if config.max_keep:
                raise ValueError(f"{base.name}: the int8 search keeps nodes of single-graph models apart; a {base.task} "
                                 "artifact's encoder takes a fixed Int8Config (max_keep=0)")  # fmt: skip
            encoder, tied = stage / base.encoder_file, Path(tmp) / "tied.onnx"
            if base.step_file:  # onnxforge's decoder graphs: per-token int8, every weight shared
                with step(f"per-token int8 of {base.name}'s decoders"):
                    quantize_decoders([(src / name, stage / name) for name in (base.model_file, base.step_file)],
                                      src / base.encoder_file, tied)  # fmt: skip
                precision["decoder"] = {"weights": "int8", "activations": "per-token int8", "weight_pair_limit": PAIR_WEIGHT_LIMIT}
            else:
                with step(f"int8 weights of {base.name}'s decoder"):
                    decoder, shared = quantize_tied(src / base.model_file, model, src / base.encoder_file, tied,
                                                    DECODER_INT8)  # fmt: skip
                precision["decoder"] = decoder.describe()
            _int8(reference, tied, encoder, config, gate, calib, [], Path(tmp), report, judge)
            precision["computed_positions"] = [name for path in paths for name in compute_positions(path)]
        else:
            search = calib[: len(held_out)]  # as many as the gate's: recall@k depends on the set's size
            config = _int8(reference, src / base.model_file, model, config, gate, calib, search, Path(tmp), report, judge)
        if base.step_file:  # onnxforge's decoder graphs name their weights alike (and int8 the vocabulary's)
            shared = write_shared(paths)  # one copy of each, read by every graph
        elif shared:
            write_shared(paths, shared)
        if base.encoder_file:
            precision["shared_table"] = bool(shared)
        copy_files(src, stage, skip=graph_and_data_files(base))
        candidate = _candidate(reference, model)
        with step(f"quality gate on {len(held_out)} held-out texts"):
            figures = measure(base.task, judge, candidate, held_out)
        if failures := gate.failures(figures):
            shown = ", ".join(f"{k}={v:.5f}" for k, v in figures.items() if isinstance(v, float))
            raise GateError(f"{base.name} {out.name} missed its gate ({'; '.join(failures)}); figures: {shown}."
                            f"{_search_summary(report)} No artifact was written.")  # fmt: skip
        if not base.encoder_file:  # text2text speed is the benchmark's (python -m bench --part translate)
            feeds = decode_feeds(reference.session) if get_task(base.task).generative else text_feeds(reference, calib[:256])
            report["speed_vs_fp32"] = speed_vs(reference.session, candidate.session, feeds)
        manifest = replace(
            base, variant=variant or out.name, precision={**config.describe(), **precision},
            quality={**gate.record(figures, _reference_name(judge) if teacher else "fp32"),
                     "measured_on": this_cpu().record(), **report},
            graph={**base.graph, "fused_ops": fused_ops(op_counts(model)), "bytes": byte_groups(model)},
            parity={"inherited_from": base.variant, **base.parity}, build=tool_versions(base.build.get("opset"), recipe),
            files={},
        )  # fmt: skip
        publish(stage, manifest, out)
    verify(out)
    return manifest


def _teacher(path: str | Path, student: Loaded, texts: list[str]) -> Loaded:
    """The teacher's fp32 artifact, refused unless it does the student's task and tokenizes ``texts`` as it does."""
    teacher = open_artifact(Path(path), providers="cpu")
    if teacher.manifest.task != student.manifest.task:
        raise ValueError(f"{path}: a teacher must do the student's task ({student.manifest.task}); it does "
                         f"{teacher.manifest.task}")  # fmt: skip
    if [e.ids for e in teacher.text_encoder().encode(texts)] != [e.ids for e in student.text_encoder().encode(texts)]:
        raise ValueError(f"{path}: the teacher's tokenizer splits text unlike the student's; it cannot be its teacher")
    return teacher


def _reference_name(judge: Loaded) -> str:
    """How the manifest names a teacher reference: 'teacher <name>/<variant>'."""
    return f"teacher {judge.manifest.name}/{judge.manifest.variant}"


def _grams(reference: Loaded, graph: Path, calib: list[str], config: WeightOnlyConfig) -> dict[str, np.ndarray]:
    """Xᵀ X of each weight MatMul's input over calibration text, by node, for GPTQ's weight-only rounding."""
    base = reference.manifest
    if get_task(base.task).generative or base.encoder_file:
        raise ValueError(f"{base.name}: weight_rounding='gptq' weighs errors by encoder inputs; a {base.task} "
                         "artifact takes 'nearest' (or keeps its GGUF's blocks)")  # fmt: skip
    with step(f"MatMul inputs of {base.name} on {config.calibration_texts} calibration texts (GPTQ)"):
        groups = weight_matmuls(onnx.load(str(graph)))
        grams = activation_gram(graph, sorted(groups), text_feeds(reference, calib[: config.calibration_texts]))
        return {node.name: grams[activation] for activation, nodes in groups.items() for node in nodes}


def _int8(reference: Loaded, src: Path, model: Path, config: Int8Config, gate: Gate, calib: list[str],
          search_texts: list[str], tmp: Path, report: dict[str, object], judge: Loaded) -> Int8Config:  # fmt: skip
    """int8 of ``src`` into ``model``, searching for nodes to keep apart when ``config.max_keep`` allows; ``judge``:
    the artifact the search's figures compare against (``reference`` itself, or a student's teacher)."""
    base = reference.manifest
    feeds = text_feeds(reference, calib[: config.calibration_texts], same_width=config.activations == "static")
    with step(f"prepare int8 {base.name}: {config.activations}, smooth_alpha={config.smooth_alpha}"):
        prepared = prepare(src, tmp / "prepared.onnx", config, feeds)
    if config.max_keep == 0:
        with step(f"int8 {base.name}"):
            finish(prepared, model, config, feeds)
        return config
    wanted = expected(base.task, judge, search_texts)
    search_gate = gate.tightened(config.search_margin)

    def verdict(path: Path) -> tuple[dict[str, float], bool]:
        figures = measure(base.task, judge, _candidate(reference, path), search_texts, wanted)
        return figures, not search_gate.failures(figures)

    with step(f"int8 {base.name}, nothing kept apart, judged on {len(search_texts)} calibration texts"):
        finish(prepared, model, config, feeds)
        figures, passed = verdict(model)
    if passed:  # no ranking needed: every node int8 is the fastest candidate
        report["search"] = [asdict(Step(0, figures, True))]
        return config
    with step(f"sensitivity of each node on {SENSITIVITY_TEXTS} calibration texts"):
        ranking = sensitivity(prepared, config, text_feeds(reference, calib[:SENSITIVITY_TEXTS]))
    report["sensitivity"] = [{"node": n, "error": round(e, 6)} for n, e in ranking[:12]]
    with step(f"greedy search on {len(search_texts)} calibration texts: keep up to {config.max_keep} nodes apart"):
        config, steps = greedy(prepared, config, [n for n, _ in ranking], feeds, verdict, model,
                               tried=[Step(0, figures, False)])  # fmt: skip
    report["search"] = [asdict(s) for s in steps]
    return config


def _search_summary(report: dict[str, object]) -> str:
    """' Search on calibration text: 0 kept apart → mean_cosine 0.99310, …' or '' when no search ran."""
    steps = report.get("search") or []
    shown = "; ".join(
        f"{s['kept']} kept apart → " + ", ".join(f"{k} {v:.5f}" for k, v in s["figures"].items() if isinstance(v, float))
        for s in steps
    )
    return f" Search on calibration text: {shown}." if shown else ""
