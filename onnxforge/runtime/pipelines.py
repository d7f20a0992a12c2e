"""Task pipelines over a loaded artifact; ``PIPELINES`` maps each task of ``onnxforge.tasks`` to one."""

from __future__ import annotations

import numpy as np

from .answer import QuestionAnswerer
from .base import Loaded, Pipeline
from .classify import Classifier, TokenClassifier
from .fill import MaskFiller
from .generate import Generator
from .text import check_batch_size, check_texts
from .text2text import Summarizer, Text2Text


class Embedder(Pipeline):
    """``embed(texts)`` → float32 array (n, dim) of L2-normalised sentence embeddings, in input order.

    Texts longer than the manifest's ``preprocess.max_length`` tokens are truncated to it, as in training.
    Safe to call from many threads: the session and tokenizer are read-only after construction.
    """

    task = "embed"
    output = "sentence_embedding"

    def __init__(self, loaded: Loaded) -> None:
        super().__init__(loaded)
        self.encoder = loaded.text_encoder()
        self.dim = int(loaded.manifest.output(self.output).shape[-1])

    def embed(self, texts: str | list[str], batch_size: int = 32) -> np.ndarray:
        return self.embed_counted(texts, batch_size)[0]

    def embed_counted(self, texts: str | list[str], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, tokens per text): the counts servers report as usage, from the one tokenization."""
        items = check_texts(texts)
        batch_size = check_batch_size(batch_size)
        result = np.empty((len(items), self.dim), dtype=np.float32)
        encodings = self.encoder.encode(items) if items else []
        for index, (vectors,) in self.forward(encodings, self.encoder.pad_id, [self.output], batch_size):
            result[index] = vectors
        return result, np.array([len(e.ids) for e in encodings], dtype=np.int64)


class ModuleRunner(Pipeline):
    """An exported ``torch.nn.Module``: ``run(feeds)`` (or calling it) → dict of numpy arrays by output name.

    Feeds are checked against the manifest (names, dtypes, ranks, shared dynamic axes) before onnxruntime runs.
    """

    task = "module"

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run(feeds)


PIPELINES: dict[str, type[Pipeline]] = {
    "module": ModuleRunner,
    "embed": Embedder,
    "classify": Classifier,
    "token-classify": TokenClassifier,
    "answer": QuestionAnswerer,
    "fill-mask": MaskFiller,
    "generate": Generator,
    "translate": Text2Text,
    "summarize": Summarizer,
}
