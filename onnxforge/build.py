"""Build recipe (``artifacts.toml``) → artifacts: fp32 exported from the source, other variants quantized.

A variant whose artifact already verifies and was built from the same recipe entry and source is skipped, so
``make artifacts`` is cheap to re-run; ``force=True`` rebuilds.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import sources
from .artifact import ArtifactError, Manifest, read_manifest, sha256_file, verify
from .tasks import get_task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODEL_KEYS = {"source", "task", "variants", "teacher", "distill"}
DISTILL_KEYS = {"layers", "ffn_keep", "epochs", "batch_size", "learning_rate", "temperature", "hidden_weight", "max_length", "seed",
                "text"}  # fmt: skip  (distill.DistillConfig's fields, and training text files)
INT8_KEYS = {
    "activations", "calibration", "op_types", "per_channel", "symmetric_weights", "smooth_alpha",
    "keep", "keep_as", "max_keep", "search_margin", "calibration_texts", "weight_rounding", "embedding_rows",
}  # fmt: skip  (the fields of quantization.Int8Config)
WEIGHT_KEYS = {"block_size", "symmetric", "embeddings", "head_bits", "accuracy_level", "requantize",
               "weight_rounding", "calibration_texts"}  # fmt: skip  (WeightOnlyConfig's)
VARIANT_KEYS = {"method", "gate", "target", "opset", "graph", "block", "format"} | INT8_KEYS | WEIGHT_KEYS
# "ort": model.ort + required_operators.config added (ort_format.py); "transformers.js": the graph at the name
# transformers.js reads (transformers_js.py)
FORMATS = ("onnx", "ort", "transformers.js")
METHODS = ("export", "int8", "int4", "fp16")


@dataclass(frozen=True)
class Variant:
    model: str
    name: str
    source: str
    task: str
    method: str  # "export" for fp32, else a quantization method
    options: dict = field(default_factory=dict)
    teacher: str = ""  # a distilled model: the recipe model it is a student of, whose fp32 artifact gates it
    distill: dict = field(default_factory=dict)  # and how it is distilled (DISTILL_KEYS)

    @property
    def key(self) -> str:
        return f"{self.model}/{self.name}"

    def fingerprint(self, origin: str) -> str:
        """Changes when the recipe entry, what it is built from (``origin``) or onnxforge's own code changes."""
        text = json.dumps([self.source, self.task, self.method, self.options, self.teacher, self.distill, origin,
                           code_digest()], sort_keys=True)  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def code_digest() -> str:
    """sha256 over onnxforge's Python sources: a change to the exporter or quantizer makes artifacts stale."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def parse(path: str | Path) -> list[Variant]:
    """Read a recipe; unknown keys and methods are errors that name them."""
    file = Path(path)
    data = tomllib.loads(file.read_text(encoding="utf-8"))
    variants = []
    for model, entry in data.items():
        _known(file, model, entry, MODEL_KEYS)
        if "teacher" in entry:
            entry = _student_entry(file, model, entry, data)
        get_task(entry.get("task", ""))
        if "fp32" not in entry.get("variants", {}):
            raise ValueError(f"{file}: [{model}] needs a variants.fp32 table (every other variant starts from it)")
        for name, options in entry["variants"].items():
            _known(file, f"{model}.variants.{name}", options, VARIANT_KEYS)
            method = options.pop("method", "export" if name == "fp32" else "")
            if method not in METHODS:
                raise ValueError(f"{file}: [{model}.variants.{name}] method {method!r}; supported: {', '.join(METHODS)}")
            if options.get("format", "onnx") not in FORMATS:
                raise ValueError(f"{file}: [{model}.variants.{name}] format {options['format']!r}; supported: "
                                 f"{', '.join(FORMATS)}")  # fmt: skip
            if "gate" in options:  # a misspelt figure fails here, not after a whole quantization
                from .quantization.gate import Gate, check_gate

                check_gate(entry["task"], Gate(options["gate"]))
            variants.append(Variant(model, name, entry["source"], entry["task"], method, options,
                                    entry.get("teacher", ""), entry.get("distill", {})))  # fmt: skip
    return variants


def _student_entry(file: Path, model: str, entry: dict, data: dict) -> dict:
    """A distilled model's entry with its teacher's source and task (it names neither itself)."""
    teacher = data.get(entry["teacher"])
    if not isinstance(teacher, dict) or "teacher" in teacher:
        raise ValueError(f"{file}: [{model}] teacher {entry['teacher']!r} must be another model of this recipe, itself "
                         "no student")  # fmt: skip
    if "source" in entry or "task" in entry:
        raise ValueError(f"{file}: [{model}] a student takes its source and task from its teacher; remove them")
    _known(file, f"{model}.distill", entry.get("distill", {}), DISTILL_KEYS)
    return {**entry, "source": teacher["source"], "task": teacher["task"]}


def _known(file: Path, where: str, entry: object, allowed: set[str]) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{file}: [{where}] must be a table")  # noqa: TRY004 - a malformed file, not a wrong argument
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"{file}: [{where}] unknown keys {unknown}; allowed: {sorted(allowed)}")


def up_to_date(directory: Path, fingerprint: str) -> Manifest | None:
    try:
        manifest = read_manifest(directory)
        if manifest.build.get("recipe") != fingerprint:
            return None
        return verify(directory, manifest)
    except ArtifactError:
        return None


def build_variant(variant: Variant, root: Path, force: bool = False) -> tuple[Manifest, bool]:
    """Build one variant under ``root``; returns its manifest and whether it was (re)built."""
    from .export import ExportConfig, export
    from .quantization import Gate, GateError, config_for, quantize

    reference = _student(variant) if variant.teacher else variant.source  # as given: the manifest keeps its label
    source = sources.resolve(reference)
    origin = source.sha256
    fp32 = root / variant.model / "fp32"
    if variant.method != "export":  # a quantized variant is stale when its fp32 parent changed
        parent = read_manifest(fp32)
        origin += parent.files[parent.model_file].sha256
    fingerprint = variant.fingerprint(origin)
    out = root / variant.model / variant.name
    if not force and (current := up_to_date(out, fingerprint)):
        return current, False
    opts = dict(variant.options)
    graph_format = opts.pop("format", "onnx")
    gate = Gate(opts.pop("gate", {}))
    if variant.method == "export":
        if gate.minimums and not source.distillation:
            raise ValueError(f"{variant.key}: an fp32 variant has a gate only as a student (against its teacher)")
        if source.distillation and (failures := gate.failures(source.distillation["held_out"])):
            raise GateError(f"{variant.key}: the student misses its gate against the teacher on held-out text "
                            f"({'; '.join(failures)}); no artifact was written")  # fmt: skip
        config = ExportConfig(opset=opts.get("opset", 18), target=opts.get("target", "cpu"), graph=opts.get("graph", "auto"))
        manifest = export(reference, out, variant.task, name=variant.model, config=config, recipe=fingerprint)
    else:
        config = config_for(variant.method, variant.task, _tuples(opts))
        teacher = root / variant.teacher / "fp32" if variant.teacher else None
        manifest = quantize(fp32, out, config, gate, recipe=fingerprint, gguf=source.gguf, teacher=teacher)
    return reformat(out, graph_format) or manifest, True


def _tuples(settings: dict) -> dict:
    """Recipe settings as a config takes them: TOML arrays become tuples (configs are frozen)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}


def _student(variant: Variant) -> Path:
    """The student directory of a distilled model: trained once into ``$ONNXFORGE_CACHE/students`` (resuming an
    interrupted run from its last epoch) and reused while teacher, settings, text and training code stay the same."""
    from .distill import DistillConfig, distill
    from .sources.gguf import cache_root

    settings = dict(variant.distill)
    texts = [Path(f) for f in settings.pop("text", [])]
    config = DistillConfig(**_tuples(settings))
    teacher = sources.resolve(variant.source)
    code = [sha256_file(f) for f in sorted((Path(__file__).parent / "distill").glob("*.py"))]  # training changed: again
    key = json.dumps([teacher.sha256, variant.task, variant.distill, [sha256_file(f) for f in texts], code], sort_keys=True)
    out = cache_root() / "students" / f"{variant.model}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not (out / sources.DISTILLATION).is_file():
        print(f"  · distilling {variant.model} from {teacher.label}", file=sys.stderr, flush=True)
        distill(variant.source, out, variant.task, config, texts)
    return out


def reformat(directory: Path, graph_format: str) -> Manifest | None:
    """The artifact at ``directory`` in ``graph_format`` (one of :data:`FORMATS`); None for plain "onnx"."""
    if graph_format == "ort":
        from .ort_format import to_ort_format

        return to_ort_format(directory)
    if graph_format == "transformers.js":
        from .transformers_js import to_transformers_js

        return to_transformers_js(directory)
    return None


def build(recipe: str | Path, root: str | Path = "artifacts", only: list[str] | None = None,
          force: bool = False) -> list[tuple[Variant, Manifest, bool]]:  # fmt: skip
    """Build every variant of ``recipe`` (or those named ``model/variant`` in ``only``), fp32 first."""
    variants = parse(recipe)
    if only:
        missing = sorted(set(only) - {v.key for v in variants})
        if missing:
            raise ValueError(f"{recipe}: no such variants {missing}; it has {[v.key for v in variants]}")
    selected = [v for v in variants if not only or v.key in only or (v.name == "fp32" and _needed(v, only, variants))]
    results = []
    for variant in sorted(selected, key=lambda v: (bool(v.teacher), v.model, v.method != "export")):  # teachers first
        print(f"▸ {variant.key}", file=sys.stderr, flush=True)
        manifest, built = build_variant(variant, Path(root), force)
        results.append((variant, manifest, built))
    return results


def _needed(fp32: Variant, only: list[str], variants: list[Variant]) -> bool:
    """fp32 is built when a quantized variant of the same model is asked for (it starts from it), or any variant of
    a student of it (its gate's reference)."""
    models = {key.split("/")[0] for key in only}
    return fp32.model in models or any(v.teacher == fp32.model and v.model in models for v in variants)
