"""Task pipelines over a loaded artifact; ``PIPELINES`` maps each task of ``onnxforge.tasks`` to one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..artifact import Manifest
from .text import TextEncoder, check_batch_size, check_texts, length_sorted_batches, pad_batch


@dataclass
class Loaded:
    """An artifact opened for inference: its directory, manifest and one session shared by all calls."""

    directory: Path
    manifest: Manifest
    session: ort.InferenceSession

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def text_encoder(self) -> TextEncoder:
        pre = self.manifest.preprocess
        return TextEncoder.from_file(self.directory / "tokenizer.json", pre["max_length"], pre["pad_token_id"])


class Embedder:
    """``embed(texts)`` → float32 array (n, dim) of L2-normalised sentence embeddings, in input order.

    Texts longer than the manifest's ``preprocess.max_length`` tokens are truncated to it, as in training.
    Safe to call from many threads: the session and tokenizer are read-only after construction.
    """

    task = "embed"
    output = "sentence_embedding"

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.encoder = loaded.text_encoder()
        self.dim = int(loaded.manifest.output(self.output).shape[-1])
        self._inputs = loaded.input_names

    @property
    def provider(self) -> str:
        return self.loaded.provider

    def embed(self, texts: str | list[str], batch_size: int = 32) -> np.ndarray:
        items = check_texts(texts)
        batch_size = check_batch_size(batch_size)
        result = np.empty((len(items), self.dim), dtype=np.float32)
        if not items:
            return result
        encodings = self.encoder.encode(items)
        for index in length_sorted_batches([len(e.ids) for e in encodings], batch_size):
            feeds = pad_batch([encodings[i] for i in index], self.encoder.pad_id, self._inputs)
            (result[index],) = self.loaded.session.run([self.output], feeds)
        return result


PIPELINES: dict[str, type] = {"embed": Embedder}
