"""Export stage: a Hugging Face model + task → a parity-checked, fused fp32 artifact.

``export(source, out_dir, task)`` runs load → export (optimum) → task head (pooling) → optimize (ORT fusions)
→ parity vs PyTorch → publish. It needs the ``build`` extra (torch, transformers, optimum-onnx, onnx).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import corpus, sources
from ..artifact import Manifest, Preprocess, publish, staging
from ..progress import step
from ..runtime import open_graphs
from ..runtime.session import SessionConfig
from ..tasks import get_task
from ..versions import tool_versions
from . import generate_parity, llama_graph, longrope, parity, seq2seq, seq2seq_graph, seq2seq_parity
from .families import FAMILIES, attention_implementation
from .generation import generation_settings
from .graph import byte_groups, fused_ops, op_counts, signature
from .module import export_module
from .optimize import check_family, optimize
from .parity import ParityError, Tolerance
from .pooling import append_pooling, pooling_of

__all__ = ["ExportConfig", "ParityError", "Tolerance", "export", "export_module"]
DEFAULT_MAX_LENGTH = 512
PARITY_TEXTS = 96


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    target: str = "cpu"  # fusions for "cpu" or "cuda"
    graph: str = "auto"  # "auto" builds our decoder graph where llama_graph/seq2seq_graph covers the family; "optimum"
    tolerance: Tolerance = field(default_factory=Tolerance)
    parity_texts: list[str] | None = None  # default: the held-out split of the shipped corpus


def usable_positions(config: dict) -> int:
    """How many tokens the model's position embeddings can index: ``max_position_embeddings``, less the padding
    offset of RoBERTa-like families (position ids start at pad_token_id + 1); DEFAULT_MAX_LENGTH when unknown."""
    positions = int(config.get("max_position_embeddings") or DEFAULT_MAX_LENGTH)
    row = FAMILIES.get(config.get("model_type", ""))
    if row and row.positions_after_padding:
        positions -= int(config.get("pad_token_id") or 0) + 1
    return positions


def text_settings(model_dir: Path) -> Preprocess:
    """Maximum tokens per text (the sentence-transformers setting if any), special token ids, and whether
    decoded text gets transformers' clean-up of spaces before punctuation: what the runtime pipelines need."""
    from transformers import AutoConfig

    tokenizer = sources.tokenizer_of(model_dir)
    positions = usable_positions(AutoConfig.from_pretrained(model_dir).to_dict())
    sbert = model_dir / "sentence_bert_config.json"
    if sbert.is_file():
        max_length = int(json.loads(sbert.read_text(encoding="utf-8"))["max_seq_length"])
        if max_length > positions:
            raise ValueError(f"{model_dir}: sentence_bert_config.json's max_seq_length is {max_length} but the model has "
                             f"{positions} usable positions (config max_position_embeddings); lower max_seq_length")  # fmt: skip
    else:  # a tokenizer may allow more tokens than the model has positions (e.g. 512 against 128)
        max_length = min(int(tokenizer.model_max_length), positions, DEFAULT_MAX_LENGTH)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"{model_dir}: the tokenizer has no pad token; batches need one")
    ids = {name: int(getattr(tokenizer, name)) for name in ("cls_token_id", "unk_token_id", "mask_token_id")
           if getattr(tokenizer, name, None) is not None}  # fmt: skip
    return Preprocess(max_length=max_length, pad_token_id=int(tokenizer.pad_token_id), **ids,
                      clean_up_tokenization_spaces=bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)))


def _optimum_export(model_dir: Path, exporter_task: str, work: Path, opset: int, attention: str | None) -> Path:
    """optimum's traced export; ``attention``: transformers' attention implementation to trace (None: its default)."""
    from optimum.exporters.onnx import main_export

    from . import optimum_configs  # noqa: F401  (registers the families optimum lacks)

    with warnings.catch_warnings(), _loading_with(attn_implementation=attention):
        warnings.simplefilter("ignore")  # tracer and deprecation chatter from torch/transformers, not actionable
        main_export(
            str(model_dir), output=work, task=exporter_task, opset=opset, device="cpu", library_name="transformers",
            do_validation=False, no_post_process=True, trust_remote_code=False,
        )  # fmt: skip
    return work / "model.onnx"


@contextlib.contextmanager
def _loading_with(**kwargs: object) -> Iterator[None]:
    """Add ``kwargs`` (those not None) to the from_pretrained call of optimum's main_export, which takes no loading
    arguments."""
    from optimum.exporters.tasks import TasksManager

    extra = {key: value for key, value in kwargs.items() if value is not None}  # None: optimum's own choice stands
    original = TasksManager.get_model_from_task
    TasksManager.get_model_from_task = staticmethod(lambda *args, **given: original(*args, **{**given, **extra}))
    try:
        yield
    finally:
        TasksManager.get_model_from_task = staticmethod(original)


GRAPHS = ("auto", "optimum")


def _builder(task: str, model_config: dict, graph: str, target: str) -> str:
    """"onnxforge" (our decoder graphs: export.llama_graph, export.seq2seq_graph) or "optimum" (traced export, then
    onnxruntime's fusions).

    The fused graphs are fp32 attention kernels for the CPU; CUDA's want fp16.
    """
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph {graph!r}; supported: {', '.join(GRAPHS)}")
    spec = get_task(task)
    builds = llama_graph.supported if spec.generative else seq2seq_graph.supported if spec.seq2seq else None
    if graph == "auto" and target == "cpu" and builds is not None and builds(model_config):
        return "onnxforge"
    return "optimum"


def _passages(texts: list[str], size: int = 4, count: int = 12) -> list[str]:
    """Neighbouring sentences joined: decoder parity wants sequences longer than one sentence."""
    return [" ".join(texts[i : i + size]) for i in range(0, min(len(texts), size * count), size)]


def _copy_text_files(model_dir: Path, stage: Path) -> None:
    """Tokenizer (always as a fast tokenizer.json), config.json and generation_config.json if any: what runtimes
    and ORTModel classes read."""
    sources.tokenizer_of(model_dir).save_pretrained(stage)
    for name in ("config.json", "generation_config.json"):
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, stage / name)


def export(source: str | Path, out_dir: str | Path, task: str = "embed", *, name: str | None = None,
           config: ExportConfig = ExportConfig(), recipe: str | None = None) -> Manifest:  # fmt: skip
    """Export ``source`` (packaged model name or local HF dir) for ``task`` into the artifact ``out_dir``.

    ``recipe``: the build recipe's fingerprint of this variant, kept in ``manifest.build`` to skip rebuilds.
    """
    spec = get_task(task)
    if not spec.exporter_task:
        raise ValueError(f"task {task!r} is exported with onnxforge.export.export_module, not from a model directory")
    src = sources.resolve(source)
    model_type = src.config.get("model_type", "?")
    check_family(model_type, spec)  # before any slow step: an unsupported family fails at once, listing ours
    if spec.generative:
        settings = generation_settings(src.path)
    else:
        settings = seq2seq.text2text_settings(src.path) if spec.seq2seq else text_settings(src.path)
    pooling = pooling_of(src.path) if spec.pooled else None
    texts = config.parity_texts or corpus.split(corpus.load()).evaluation[:PARITY_TEXTS]
    out = Path(out_dir)
    model_file = seq2seq.DECODER if spec.seq2seq else "model.onnx"
    with staging(out) as stage, tempfile.TemporaryDirectory(prefix="onnxforge-export-") as tmp:
        builder = _builder(task, src.config, config.graph, config.target)
        if builder == "onnxforge" and spec.seq2seq:
            with step(f"build the encoder and decoder graphs of {src.label} ({model_type}) from its weights"):
                fused = seq2seq.build_from_weights(src.path, stage, config.opset)
        elif builder == "onnxforge":
            with step(f"build the fused decoder graph of {src.label} ({model_type}) from its weights"):
                llama_graph.build(src.path, stage / model_file, config.opset)
                fused = fused_ops(op_counts(stage / model_file))
        else:
            with step(f"export {src.label} ({model_type}) for {task}, opset {config.opset}"):
                raw = _optimum_export(src.path, spec.exporter_task, Path(tmp), config.opset,
                                      attention_implementation(src.config))
                if pooling:
                    append_pooling(raw, pooling)
                if spec.generative:
                    longrope.switch_by_length(raw, src.path)
            with step(f"fuse for {config.target}"):
                if spec.seq2seq:
                    fused = seq2seq.build(src.path, Path(tmp), stage, model_type, config.target, src.config)
                else:
                    fused = optimize(raw, stage / model_file, model_type, config.target, src.config)
        _copy_text_files(src.path, stage)
        inputs, outputs = signature(stage / model_file)
        manifest = Manifest(
            name=name or out.parent.name, variant=out.name, task=task, source=src.as_record(),
            inputs=inputs, outputs=outputs,
            preprocess=replace(settings, pooling=pooling.mode, normalize=pooling.normalize) if pooling else settings,
            precision={"weights": "float32", "activations": "float32"},
            graph={"model_type": model_type, "target": config.target, "builder": builder, "fused_ops": fused,
                   "bytes": byte_groups(stage / model_file)},
            targets=["CUDAExecutionProvider"] if config.target == "cuda" else ["CPUExecutionProvider"],
            build=tool_versions(config.opset, recipe), model_file=model_file,
            encoder_file=seq2seq.ENCODER if spec.seq2seq else None,
            step_file=seq2seq_graph.STEP if spec.seq2seq and builder == "onnxforge" else None,
        )  # fmt: skip
        parity_texts = _passages(texts) if spec.generative else texts
        with step(f"parity vs PyTorch on {len(parity_texts)} real texts"):
            if spec.generative:
                figures = generate_parity.check(stage / model_file, src.path, parity_texts, settings,
                                                config.tolerance.max_logit_abs, in_place=builder == "onnxforge")  # fmt: skip
            elif spec.seq2seq:
                staged = open_graphs(stage, manifest, SessionConfig(providers="cpu"))  # as the runtime will open it
                figures = seq2seq_parity.check(staged, src.path, texts, config.tolerance.max_logit_abs)
            elif pooling:
                figures = parity.check(stage / model_file, src.path, texts, pooling, settings.max_length,
                                       config.tolerance)  # fmt: skip
            else:
                figures = parity.check_task(stage / model_file, src.path, texts, spec, settings.max_length,
                                            config.tolerance)  # fmt: skip
        manifest.parity = {"reference": "pytorch", **figures}
        publish(stage, manifest, out)
    return manifest
