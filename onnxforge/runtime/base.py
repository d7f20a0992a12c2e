"""What every task pipeline stands on: the loaded artifact, its one session, checked raw runs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from tokenizers import Encoding, Tokenizer

from ..artifact import ArtifactError, Manifest
from ..cpu import Cpu, this_cpu
from .feeds import check_feeds
from .text import TextEncoder, length_sorted_batches, pad_batch


class InferenceError(RuntimeError):
    """onnxruntime failed while running a graph (after onnxforge's own checks on the feeds passed)."""


@dataclass
class Loaded:
    """An artifact opened for inference: its directory, manifest and one session shared by all calls."""

    directory: Path
    manifest: Manifest
    session: ort.InferenceSession
    encoder: ort.InferenceSession | None = None  # text2text artifacts: the session of manifest.encoder_file
    step: ort.InferenceSession | None = None  # and of manifest.step_file, where the artifact has one

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def infer(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``session.run`` with onnxruntime's errors turned into a ValueError / InferenceError naming the artifact."""
        try:
            return self.session.run(outputs, feeds)
        except ort_errors.InvalidArgument as exc:
            raise ValueError(f"{self.directory}: onnxruntime rejected the feeds: {first_line(exc)}") from None
        except Exception as exc:
            if type(exc).__module__ != ort_errors.__name__:
                raise
            raise InferenceError(f"{self.directory}: onnxruntime failed: {first_line(exc)}") from None

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """The raw graph: feeds checked against the manifest, every (or the named) output by name."""
        checked = check_feeds(self.manifest.inputs, feeds)
        names = outputs or [spec.name for spec in self.manifest.outputs]
        unknown = sorted(set(names) - {spec.name for spec in self.manifest.outputs})
        if unknown:
            raise ValueError(f"unknown outputs {unknown}; the graph has {[s.name for s in self.manifest.outputs]}")
        return dict(zip(names, self.infer(names, checked)))

    @property
    def max_length(self) -> int:
        """Tokens per text (the context, for decoders): the manifest's ``preprocess.max_length``."""
        if self.manifest.preprocess.max_length is None:
            raise ArtifactError(f"{self.directory}: manifest has no preprocess.max_length; re-export it")
        return self.manifest.preprocess.max_length

    def tokenizer(self) -> Tokenizer:
        """A fresh ``tokenizers.Tokenizer`` from the artifact's tokenizer.json: the one place the runtime opens it."""
        path = self.directory / "tokenizer.json"
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; the runtime reads tokenizers from tokenizer.json")
        return Tokenizer.from_file(str(path))

    def text_encoder(self) -> TextEncoder:
        pad = self.manifest.preprocess.pad_token_id
        if pad is None:
            raise ArtifactError(f"{self.directory}: manifest has no preprocess.pad_token_id; re-export it")
        return TextEncoder.truncating(self.tokenizer(), self.max_length, pad)


def check_top_k(top_k: object, most: int) -> int | None:
    """A pipeline's ``top_k`` argument: None (all), or a positive int capped at ``most``; else a ValueError."""
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer or None (all {most} labels), got {top_k!r}")
    return min(top_k, most)


def first_line(exc: Exception) -> str:
    """The first line of an exception's message (onnxruntime's carry C++ source paths after it)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class Pipeline:
    """What every task pipeline shares: the loaded artifact, its provider and the raw :meth:`Loaded.run`."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded

    @property
    def provider(self) -> str:
        return self.loaded.provider

    @property
    def manifest(self) -> Manifest:
        return self.loaded.manifest

    @property
    def cpu(self) -> Cpu:
        """The CPU running this pipeline; ``cpu.kernel_class`` beside ``manifest.quality["measured_on"]`` says
        whether the gate's figures were measured on the same class of integer kernels."""
        return this_cpu()

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        return self.loaded.run(feeds, outputs)

    def forward(self, encodings: list[Encoding], pad_id: int, outputs: list[str],
                batch_size: int) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:  # fmt: skip
        """(indices into ``encodings``, outputs) per length-sorted, padded batch."""
        for index in length_sorted_batches([len(e.ids) for e in encodings], batch_size):
            feeds = pad_batch([encodings[i] for i in index], pad_id, self.loaded.input_names)
            yield index, self.loaded.infer(outputs, feeds)
