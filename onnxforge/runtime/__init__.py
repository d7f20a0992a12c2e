"""Run onnxforge artifacts with onnxruntime, tokenizers and numpy alone (no torch, transformers or onnx).

>>> from onnxforge.runtime import load
>>> embedder = load("artifacts/minilm-l6/int8")
>>> embedder.embed(["a sentence", "another"]).shape
(2, 384)
"""

from __future__ import annotations

import os
from pathlib import Path

from ..artifact import ArtifactError, read_manifest, verify
from .pipelines import PIPELINES, Embedder, Loaded
from .session import ProviderError, Providers, SessionConfig, available_cpus, create_session

__all__ = ["load", "open_artifact", "Embedder", "SessionConfig", "ProviderError", "ArtifactError", "available_cpus"]


def open_artifact(
    path: str | os.PathLike[str], providers: Providers = "auto", threads: int | None = None, verify_files: bool = True
) -> Loaded:
    """Read and verify an artifact's manifest and files, then open one session for it."""
    directory = Path(path)
    manifest = verify(directory) if verify_files else read_manifest(directory)
    session = create_session(directory / manifest.model_file, SessionConfig(providers=providers, threads=threads))
    return Loaded(directory=directory, manifest=manifest, session=session)


def load(
    path: str | os.PathLike[str], providers: Providers = "auto", threads: int | None = None, verify_files: bool = True
):
    """The pipeline for an artifact's task, e.g. an :class:`Embedder` for ``embed``.

    ``providers``: "auto" (CUDA if usable, else CPU), "cpu", "cuda" or a list of onnxruntime provider names.
    ``threads``: intra-op threads; default ``ONNXFORGE_NUM_THREADS`` or the CPUs this process may use.
    """
    loaded = open_artifact(path, providers, threads, verify_files)
    pipeline = PIPELINES.get(loaded.manifest.task)
    if pipeline is None:
        raise ArtifactError(
            f"{path}: task {loaded.manifest.task!r} has no runtime pipeline; supported: {', '.join(sorted(PIPELINES))}"
        )
    return pipeline(loaded)
