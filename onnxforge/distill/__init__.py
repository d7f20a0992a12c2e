"""Distill stage: a teacher model → a student with a subset of its layers and/or narrower feed-forward blocks,
trained on unlabelled text to reproduce the teacher's outputs, written as a Hugging Face directory that export takes
like any other source.

``distill(teacher, out_dir, task, DistillConfig(layers=(0, 2, 4)))``. The student starts as the teacher's own
layers (:mod:`.student`), each feed-forward block narrowed and re-fitted to the teacher when ``ffn_keep`` < 1
(:mod:`.prune`); the loss is the task's (:data:`objectives.OBJECTIVES`); training text is the corpus's
calibration half plus any text files named, never its held-out half, on which the student is then measured against
the teacher. The directory's ``distillation.json`` records what was done; its manifest carries it onward. Each epoch
ends with a checkpoint beside ``out_dir``; a run interrupted there continues from it. Needs the ``build`` extra.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import transformers

from .. import corpus, sources
from ..progress import bar, step
from ..quantization.gate import FIGURES
from ..tasks import get_task
from .losses import hidden_loss
from .objectives import OBJECTIVES, Batch, Objective
from .prune import ALIGN, FFNS, kept_count, prune_ffn
from .student import every_other, keep_layers

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".onnx", ".ot", ".pt")


@dataclass(frozen=True)
class DistillConfig:
    layers: tuple[int, ...] = ()  # teacher layers the student keeps, in order; () = every other one (0, 2, 4, …)
    ffn_keep: float = 1.0  # < 1: each feed-forward block keeps this fraction of its neurons (.prune), before training
    epochs: int = 6  # 0: the student as made (layers kept, pruned), untrained
    batch_size: int = 32
    learning_rate: float = 1e-4
    temperature: float = 2.0  # soft labels of classify / token-classify
    hidden_weight: float = 0.0  # > 0 adds each kept layer's output matched to its teacher layer's (MSE)
    max_length: int = 128  # tokens per training text
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.learning_rate <= 0 or self.temperature <= 0 or self.max_length < 2:
            raise ValueError(f"distillation needs epochs >= 0, batch_size >= 1, learning_rate, temperature > 0 and "
                             f"max_length >= 2; got {self}")  # fmt: skip
        kept_count(ALIGN, self.ffn_keep)  # a fraction outside (0, 1] is refused here, before any work


def training_texts(files: list[Path] = ()) -> list[str]:
    """The corpus's calibration half, then every line of ``files`` that is not a held-out corpus sentence."""
    split = corpus.split(corpus.load())
    held_out = set(split.evaluation)
    texts = list(split.calibration)
    for file in files:
        texts.extend(line for line in corpus.load(file) if line not in held_out)
    return list(dict.fromkeys(texts))


def distill(teacher: str | Path, out_dir: str | Path, task: str = "embed", config: DistillConfig = DistillConfig(),
            text_files: list[Path] = ()) -> dict:  # fmt: skip
    """Train a student of ``teacher`` for ``task`` into the Hugging Face directory ``out_dir``; returns its record."""
    if task not in OBJECTIVES:
        raise ValueError(f"task {task!r} cannot be distilled; supported: {', '.join(OBJECTIVES)}")
    objective = OBJECTIVES[task]
    src = sources.resolve(teacher)
    texts = training_texts([Path(f) for f in text_files])
    tokenizer = sources.tokenizer_of(src.path)
    with step(f"load {src.label} for {task}"):
        model = getattr(transformers, get_task(task).model_class).from_pretrained(src.path).eval()
    layers = config.layers or every_other(model.config.num_hidden_layers)
    student = keep_layers(model, layers)
    setup = objective.setup(src.path)
    out = Path(out_dir)
    work = out.with_name(f".{out.name}.distilling")
    key = _run_key(src.sha256, task, config, layers, texts)
    # texts of similar length batched together (little padding); the batches' order is shuffled per epoch
    batches = _batches(tokenizer, sorted(texts, key=len), config.max_length, config.batch_size)
    if config.ffn_keep < 1:
        with step(f"prune feed-forward blocks to {config.ffn_keep:g} of their neurons"):
            prune_ffn(student, model, layers, config.ffn_keep, batches)
    made = copy.deepcopy(student) if config.epochs else student  # untrained, for the held-out comparison
    targets = None  # with hidden states matched, the teacher runs per batch instead
    if config.epochs and not config.hidden_weight:
        with step(f"teacher outputs on {len(texts)} training texts"), torch.no_grad():
            targets = [_forward(model, b, objective, setup) for b in batches]
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.learning_rate)
    state = _resume(work / "checkpoint.pt", key, student, optimizer)
    for epoch in range(state["epoch"], config.epochs):
        start = time.perf_counter()
        with step(f"epoch {epoch + 1}/{config.epochs}: {len(batches)} batches"):
            loss = _epoch(student, model, objective, setup, batches, targets, optimizer, config, layers, epoch)
        print(f"    loss {loss:.5f}", file=sys.stderr, flush=True)
        state = {"key": key, "epoch": epoch + 1, "losses": [*state["losses"], loss],
                 "seconds": state["seconds"] + time.perf_counter() - start}  # fmt: skip
        _checkpoint(work / "checkpoint.pt", state, student, optimizer)
    evaluation = corpus.split(corpus.load()).evaluation
    with step(f"student vs teacher on {len(evaluation)} held-out texts"):
        held = _held_out(objective, setup, tokenizer, evaluation, config)
        wanted = held(model)
        got = held(student)
        figures = {"texts": len(evaluation), **FIGURES[task].compare(wanted, got)}
        untrained = FIGURES[task].compare(wanted, got if made is student else held(made))
    record = {
        "teacher": src.as_record(), "task": task, "layers": list(layers), "teacher_layers": model.config.num_hidden_layers,
        "ffn_neurons": [_ffn_size(student), _ffn_size(model)],
        "config": {**asdict(config), "layers": list(layers)}, "texts": len(texts), "text_sha256": _digest(texts),
        "steps": len(batches) * config.epochs, "loss_by_epoch": state["losses"], "training_seconds": state["seconds"],
        "held_out": figures, "held_out_untrained": untrained,
    }  # fmt: skip
    _write(out, src.path, student, tokenizer, record)
    shutil.rmtree(work, ignore_errors=True)
    return record


def _ffn_size(model: torch.nn.Module) -> int | None:
    """Neurons per feed-forward block, where the architecture is one :data:`.prune.FFNS` knows."""
    ffn = FFNS.get(model.config.model_type)
    return getattr(model.config, ffn.size_key) if ffn else None


def _batches(tokenizer: object, texts: list[str], max_length: int, size: int) -> list[Batch]:
    return [tokenizer(texts[i : i + size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            for i in range(0, len(texts), size)]  # fmt: skip


def _forward(model: torch.nn.Module, batch: Batch, objective: Objective, setup: object,
             hidden: bool = False) -> tuple[torch.Tensor, tuple | None]:  # fmt: skip
    """The objective's head of ``model`` on ``batch``, and every layer's output when ``hidden``."""
    output = model(**batch, output_hidden_states=hidden)
    return objective.head(output, batch, setup), output.hidden_states if hidden else None


def _epoch(student: torch.nn.Module, teacher: torch.nn.Module, objective: Objective, setup: object,
           batches: list[Batch], targets: list | None, optimizer: torch.optim.Optimizer, config: DistillConfig,
           layers: tuple[int, ...], epoch: int) -> float:  # fmt: skip
    """One pass over the batches in this epoch's own order (seeded by seed and epoch: a resumed run takes the same
    order and dropout as an uninterrupted one); returns the mean loss."""
    torch.manual_seed(config.seed * 100_003 + epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(len(batches))
    student.train()
    total, progress = 0.0, bar(order, f"epoch {epoch + 1}/{config.epochs}")
    for count, index in enumerate(progress, 1):
        batch = batches[index]
        if targets is None:  # hidden states too: computed per batch rather than held for every text
            with torch.no_grad():
                wanted, wanted_hidden = _forward(teacher, batch, objective, setup, hidden=True)
        else:
            wanted, wanted_hidden = targets[index]
        head, hidden = _forward(student, batch, objective, setup, hidden=wanted_hidden is not None)
        loss = objective.loss(head, wanted, batch, config.temperature)
        if wanted_hidden is not None:  # student block i (output i + 1) was the teacher's block layers[i]
            teacher_layers = [wanted_hidden[layer + 1] for layer in layers]
            loss = loss + config.hidden_weight * hidden_loss(hidden[1:], teacher_layers, batch["attention_mask"].bool())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
        if hasattr(progress, "set_postfix"):
            progress.set_postfix(loss=f"{total / count:.5f}")
    student.eval()
    return total / len(batches)


def _held_out(objective: Objective, setup: object, tokenizer: object, texts: list[str], config: DistillConfig):
    """A function: model → its outputs on ``texts`` in the form the task's gate figures compare."""
    batches = _batches(tokenizer, texts, config.max_length, 64)

    def outputs(model: torch.nn.Module) -> object:
        with torch.no_grad():
            return objective.held_out([_forward(model, b, objective, setup)[0] for b in batches], batches)

    return outputs


def _run_key(teacher_sha: str, task: str, config: DistillConfig, layers: tuple[int, ...], texts: list[str]) -> str:
    """What a checkpoint must have been trained with to be continued (the epoch count may grow)."""
    settings = {**asdict(config), "layers": list(layers), "epochs": None}
    return _digest([teacher_sha, task, json.dumps(settings, sort_keys=True), _digest(texts)])


def _digest(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def _resume(path: Path, key: str, student: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The checkpoint's state, loaded into ``student`` and ``optimizer``, if it is of this run; else a fresh start."""
    fresh = {"key": key, "epoch": 0, "losses": [], "seconds": 0.0}
    if not path.is_file():
        return fresh
    saved = torch.load(path, weights_only=True)
    if saved["state"]["key"] != key:
        print(f"  · {path} is of another run (teacher, settings or text differ): starting over", file=sys.stderr, flush=True)
        return fresh
    student.load_state_dict(saved["student"])
    optimizer.load_state_dict(saved["optimizer"])
    print(f"  · resuming after epoch {saved['state']['epoch']} from {path}", file=sys.stderr, flush=True)
    return saved["state"]


def _checkpoint(path: Path, state: dict, student: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write the checkpoint whole or not at all (written beside, then renamed over the last one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"state": state, "student": student.state_dict(), "optimizer": optimizer.state_dict()}, partial)
    os.replace(partial, path)


def _write(out: Path, teacher_dir: Path, student: torch.nn.Module, tokenizer: object, record: dict) -> None:
    """The student as a Hugging Face directory: weights, config, tokenizer, the teacher's other files (pooling and
    sentence-transformers settings) and the record; built beside ``out`` and renamed into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copytree(teacher_dir, stage, dirs_exist_ok=True,
                        ignore=lambda _, names: [n for n in names if n.endswith(WEIGHT_SUFFIXES) or n == "onnx"])  # fmt: skip
        student.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        (stage / sources.DISTILLATION).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
