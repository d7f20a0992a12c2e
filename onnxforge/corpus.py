"""Real English text for parity checks, calibration and quality gates, shipped with the package.

``data/sentences.txt`` holds sentences from CPython's own documentation (see scripts/make_corpus.py). The
calibration and evaluation splits are decided by a hash of each sentence, so they never overlap, do not depend
on file order, and stay stable when sentences are added.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

DEFAULT = Path(__file__).with_name("data") / "sentences.txt"


@dataclass(frozen=True)
class Split:
    calibration: list[str]
    evaluation: list[str]


def load(path: str | Path | None = None) -> list[str]:
    """Non-empty lines of a UTF-8 text file (``#`` lines are comments), without duplicates, in file order."""
    file = Path(path) if path is not None else DEFAULT
    lines = (line.strip() for line in file.read_text(encoding="utf-8").splitlines())
    found = list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))
    if not found:
        raise ValueError(f"{file}: holds no text lines")
    return found


def is_evaluation(sentence: str) -> bool:
    """Half of all sentences, chosen by hash, are held out for evaluation."""
    return hashlib.sha256(sentence.encode("utf-8")).digest()[0] % 2 == 0


def split(sentences: list[str]) -> Split:
    return Split(
        calibration=[s for s in sentences if not is_evaluation(s)],
        evaluation=[s for s in sentences if is_evaluation(s)],
    )
