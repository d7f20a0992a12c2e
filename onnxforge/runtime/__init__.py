"""Run onnxforge artifacts with onnxruntime, tokenizers and numpy alone (no torch, transformers or onnx).

>>> from onnxforge.runtime import load
>>> embedder = load("artifacts/minilm-l6/int8")
>>> embedder.embed(["a sentence", "another"]).shape
(2, 384)
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..artifact import ArtifactError, Manifest, read_manifest, verify
from .base import InferenceError, Loaded, Pipeline
from .pipelines import PIPELINES, Embedder
from .session import ProviderError, Providers, SessionConfig, available_cpus, create_session

__all__ = ["ArtifactError", "Embedder", "InferenceError", "Pipeline", "ProviderError", "SessionConfig", "available_cpus", "load", "open_artifact", "open_graphs"]


def open_artifact(
    path: str | os.PathLike[str], providers: Providers = "auto", threads: int | None = None, verify_files: bool = True,
    *, config: SessionConfig | None = None,
) -> Loaded:  # fmt: skip
    """Read and verify an artifact's manifest and files, then open one session for it."""
    if config is not None and (providers != "auto" or threads is not None):
        raise ValueError("pass providers/threads inside config=SessionConfig(...), not beside it")
    directory = Path(path)
    manifest = verify(directory) if verify_files else read_manifest(directory)
    config = config or SessionConfig(providers, threads)
    if needs_exact_integers(manifest):
        config = replace(config, exact_integers=True)
    return open_graphs(directory, manifest, config)


def open_graphs(directory: Path, manifest: Manifest, config: SessionConfig) -> Loaded:
    """Sessions for the graphs ``manifest`` lists in ``directory`` (its model file, and its encoder and step files if
    any), files taken as they are. A graph run once a batch beside one run once a token (the encoder; a merged
    decoder that a step graph relieves) does not spin: its idle threads would spin into the next graph's run on the
    same cores (measured: a batch's first step 39 against 14 ms, after the first-step graph)."""
    once = replace(config, spin=False)
    step = create_session(directory / manifest.step_file, config) if manifest.step_file else None
    encoder = create_session(directory / manifest.encoder_file, once) if manifest.encoder_file else None
    model = create_session(directory / manifest.model_file, config if step is None else once)
    return Loaded(directory, manifest, model, encoder, step)


def needs_exact_integers(manifest: Manifest) -> bool:
    """Whether an artifact's int8 activations meet weights not kept within a ``weight_pair_limit`` (built before
    onnxforge kept them so), so that only onnxruntime's exact path gives its gate's results on every CPU."""
    precision = manifest.precision
    return precision.get("weights") == "int8" and str(precision.get("activations", "")).startswith("uint8") \
        and "weight_pair_limit" not in precision


def load(
    path: str | os.PathLike[str], providers: Providers = "auto", threads: int | None = None, verify_files: bool = True,
    *, config: SessionConfig | None = None,
) -> Pipeline:  # fmt: skip
    """The pipeline for an artifact's task, e.g. an :class:`Embedder` for ``embed``.

    ``providers``: "auto" (CUDA if usable, else CPU), "cpu", "cuda" or a list of onnxruntime provider names.
    ``threads``: intra-op threads; default ``ONNXFORGE_NUM_THREADS`` or the CPUs this process may use.
    ``config``: every session setting at once (inter-op threads, memory arena, graph optimization level).
    """
    loaded = open_artifact(path, providers, threads, verify_files, config=config)
    pipeline = PIPELINES.get(loaded.manifest.task)
    if pipeline is None:
        raise ArtifactError(
            f"{path}: task {loaded.manifest.task!r} has no runtime pipeline; supported: {', '.join(sorted(PIPELINES))}"
        )
    return pipeline(loaded)
