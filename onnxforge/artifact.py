"""The artifact format: a directory of model + tokenizer files described by ``manifest.json``.

Every stage reads and writes artifacts through this module; the runtime imports it too, so it depends on the
standard library alone. Artifacts are staged in a hidden sibling directory and renamed into place only once
``manifest.json`` (the last file written) lists the sha256 of every other file: a directory with a valid
manifest is therefore always complete, and an interrupted build leaves only a hidden ``.*.tmp-*`` directory.
Builders of one artifact take an exclusive lock (``.<name>.lock`` beside it, POSIX ``flock``): concurrent builds
run one after the other, and whoever holds the lock clears what killed builders left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: builds are not locked there (the runtime never needs it)
    fcntl = None

FORMAT = "onnxforge-artifact/1"
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class ArtifactError(ValueError):
    """An artifact directory is missing, incomplete, damaged or of an unknown format."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type and shape (ints for fixed axes, names for dynamic)."""

    name: str
    dtype: str
    shape: list[int | str]


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Preprocess:
    """The contract between export and runtime: what a pipeline needs to turn text into feeds and logits into text.
    Export writes it (a misspelt field is a TypeError at build time), the runtime reads its attributes."""

    max_length: int | None = None  # tokens per text (encoders) or the context (decoders)
    pad_token_id: int | None = None
    cls_token_id: int | None = None
    unk_token_id: int | None = None
    mask_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()  # decoders: generation stops before any of these
    clean_up_tokenization_spaces: bool = False  # decoded text gets transformers' space clean-up
    pooling: str | None = None  # embed: the pooling the graph applies ("mean", "cls", …), for the record
    normalize: bool | None = None  # embed: whether the graph L2-normalises its vectors
    chat: dict[str, Any] | None = None  # decoders: the chat template compiled to role prefixes/suffixes
    # decoders with LongRoPE: a call that takes the sequence past this many tokens recomputes the whole cache (with
    # the long factors), as transformers' Phi-3 generation does
    refill_after: int | None = None
    # text2text (encoder-decoder) models: how the target begins, which tokens are forced or never generated, the
    # decoder's own positions (None: unbounded, e.g. T5) and the model's generation defaults (num_beams, …).
    decoder_start_token_id: int | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = None
    suppressed_token_ids: tuple[int, ...] = ()
    target_length: int | None = None
    generation: dict[str, Any] | None = None
    languages: dict[str, int] | None = None  # text2text: language tokens (mBART's "de_DE") → ids, for target_language

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        tuples = {name: tuple(data.get(name, ())) for name in ("eos_token_ids", "suppressed_token_ids")}
        return cls(**{**data, **tuples})


@dataclass
class Manifest:
    """Self-description of one artifact; docs/design.md gives the meaning of each field."""

    name: str
    variant: str
    task: str
    source: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocess: Preprocess = field(default_factory=Preprocess)
    precision: dict[str, Any] = field(default_factory=dict)
    graph: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    targets: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    build: dict[str, Any] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    model_file: str = "model.onnx"
    encoder_file: str | None = None  # text2text: the encoder graph, run once per input before model_file decodes
    # text2text: the decoder's later steps over the caches (the runtime's; model_file takes the first step, and Optimum)
    step_file: str | None = None
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path) -> Manifest:
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: manifest is not a JSON object")
        found = data.get("format")
        if found != FORMAT:
            raise ArtifactError(f"{where}: unknown artifact format {found!r}; this onnxforge reads {FORMAT!r}")
        try:
            fields = dict(data)
            fields["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
            fields["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
            fields["files"] = {k: FileEntry(**v) for k, v in data.get("files", {}).items()}
            fields["preprocess"] = Preprocess.from_dict(data.get("preprocess", {}))
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"{where}: malformed manifest ({exc})") from exc

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise ArtifactError(f"artifact {self.name}/{self.variant} has no output {name!r}")


# A graph over protobuf's 2 GiB keeps its weights in a file beside it: model.onnx → model.onnx.data.
EXTERNAL_DATA_SUFFIX = ".data"


def graph_files(manifest: Manifest) -> list[str]:
    """The ONNX graphs an artifact runs: its model file, after its encoder's where it has one, then its step file."""
    return [name for name in (manifest.encoder_file, manifest.model_file, manifest.step_file) if name]


# Weights several graphs of an artifact read, stored once (a text2text artifact's vocabulary and decoders).
SHARED_FILE = "shared_table.onnx_data"


def graph_and_data_files(manifest: Manifest) -> tuple[str, ...]:
    """The graphs and the weight files that may sit beside them: what a stage that rewrites the graphs replaces."""
    return (*(name + suffix for name in graph_files(manifest) for suffix in ("", EXTERNAL_DATA_SUFFIX)), SHARED_FILE)


def sha256_file(path: Path) -> str:
    return hash_into(hashlib.sha256(), path).hexdigest()


def hash_into(digest: Any, path: Path) -> Any:
    """Feed ``path``'s bytes into ``digest`` in chunks (the one place onnxforge reads a file to hash it)."""
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest


def copy_files(src: Path, stage: Path, skip: tuple[str, ...] = ()) -> None:
    """Copy an artifact's files (not its manifest, nor the names in ``skip``) into a staging directory."""
    for path in src.iterdir():
        if path.is_file() and path.name not in (MANIFEST, *skip):
            shutil.copy2(path, stage / path.name)


def _safe_member(root: Path, name: str) -> Path:
    """Resolve a file named by a manifest, refusing names that leave the artifact directory or are links."""
    if not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise ArtifactError(f"{root}: manifest names a file outside the artifact: {name!r}")
    path = root / name
    if path.is_symlink():
        raise ArtifactError(f"{path}: is a symbolic link; artifacts hold plain files only")
    return path


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Read ``manifest.json`` from an artifact directory (no hash check; see :func:`verify`)."""
    root = Path(directory)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such artifact directory")
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {root} is not an onnxforge artifact (or its build did not finish)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    return Manifest.from_dict(data, path)


def verify(directory: str | os.PathLike[str], manifest: Manifest | None = None) -> Manifest:
    """Check that every file the manifest lists exists with its recorded size and sha256."""
    root = Path(directory)
    manifest = manifest or read_manifest(root)
    for graph in graph_files(manifest):
        if graph not in manifest.files:
            raise ArtifactError(f"{root / MANIFEST}: does not list its model file {graph!r}")
    for path in root.rglob("*"):  # a link could point the runtime (or onnxruntime's external data) elsewhere
        if path.is_symlink():
            raise ArtifactError(f"{path}: is a symbolic link; artifacts hold plain files only")
    for name, entry in manifest.files.items():
        path = _safe_member(root, name)
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != entry.bytes:
            raise ArtifactError(f"{path}: {size} bytes, manifest says {entry.bytes}; the file is damaged")
        if sha256_file(path) != entry.sha256:
            raise ArtifactError(f"{path}: sha256 does not match {MANIFEST}; the file is damaged or was modified")
    return manifest


def hash_files(directory: Path) -> dict[str, FileEntry]:
    """sha256 and size of every file under ``directory`` except the manifest, by relative POSIX path."""
    entries = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name != MANIFEST:
            entries[name] = FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
    return entries


@contextlib.contextmanager
def build_lock(final: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive build lock of the artifact at ``final`` (blocks while another process holds it)."""
    target = Path(final)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f".{target.name}.lock"), "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def recover(final: str | os.PathLike[str]) -> None:
    """Clear what a killed build of ``final`` left behind; call with its build lock held.

    Half-built ``.tmp-`` directories are deleted. A build killed between moving the old artifact aside and
    moving the new one in leaves ``final`` missing and a complete ``.old-`` copy: that copy is put back.
    """
    target = Path(final)
    for leftover in sorted(target.parent.glob(f".{target.name}.tmp-*")):
        shutil.rmtree(leftover, ignore_errors=True)
    for old in sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime, reverse=True):
        if not target.exists():
            os.replace(old, target)
        else:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staging(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Lock ``final``, then give a fresh hidden directory beside it to build into; removed if the block raises."""
    target = Path(final)
    with build_lock(target):
        recover(target)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp makes it private; the published artifact is an ordinary dir
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise


def publish(stage: Path, manifest: Manifest, final: str | os.PathLike[str]) -> Path:
    """Hash the staged files, write the manifest last, then move the directory into place atomically.

    An existing artifact at ``final`` is replaced: it is first renamed aside, so a reader sees either the old
    complete artifact or the new one, and it is deleted only after the new one is in place.
    """
    target = Path(final)
    manifest.files = hash_files(stage)
    for graph in graph_files(manifest):
        if graph not in manifest.files:
            raise ArtifactError(f"{stage}: the staged artifact has no {graph}")
    _write_synced(stage / MANIFEST, manifest.to_json())
    return swap_in(stage, target)


def swap_in(stage: Path, final: str | os.PathLike[str]) -> Path:
    """Move a complete staged directory to ``final``, an existing one renamed aside first and deleted after, so a
    reader sees the old or the new directory, never none (:func:`recover` puts an aside copy back if killed)."""
    target = Path(final)
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.replace(target, old)
    os.replace(stage, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
