"""Regenerate onnxforge/data/sentences.txt: real English sentences from CPython's own documentation.

Sources ship with every CPython (no network): the language reference topics in ``pydoc_data.topics`` and
the docstrings of a fixed list of standard-library modules. Run with the Python that made the committed
file (3.11) to reproduce it byte for byte: ``python scripts/make_corpus.py``.
"""

from __future__ import annotations

import importlib
import inspect
import pydoc_data.topics
import re
import sys
from pathlib import Path

MODULES = ["argparse", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools", "glob", "gzip", "hashlib", "heapq", "http.client", "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox", "multiprocessing", "os", "pathlib", "pickle", "queue", "random", "re", "shutil", "socket", "sqlite3", "ssl", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid", "warnings", "zipfile"]
CLEAN = re.compile(r"[A-Za-z0-9 ,.;:'\"()\-!?]+")
OUT = Path(__file__).resolve().parents[1] / "onnxforge" / "data" / "sentences.txt"


def texts() -> list[str]:
    """Every source text, in a fixed order."""
    found = [pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)]
    for name in MODULES:
        module = importlib.import_module(name)
        for _, member in sorted(inspect.getmembers(module), key=lambda item: item[0]):
            doc = inspect.getdoc(member) if callable(member) or inspect.ismodule(member) else None
            if doc:
                found.append(doc)
    return found


def sentences(text: str) -> list[str]:
    """Whole clean sentences of 4 to 80 words."""
    flat = re.sub(r"\s+", " ", text)
    pieces = re.split(r"(?<=[.!?])\s+(?=[A-Z])", flat)
    return [p for p in pieces if CLEAN.fullmatch(p) and 4 <= len(p.split()) <= 80 and p[-1] in ".!?"]


def main() -> None:
    unique = list(dict.fromkeys(s for t in texts() for s in sentences(t)))
    header = f"# {len(unique)} sentences from CPython {sys.version.split()[0]} documentation; see scripts/make_corpus.py\n"
    OUT.write_text(header + "\n".join(unique) + "\n", encoding="utf-8")
    print(f"wrote {len(unique)} sentences to {OUT}")


if __name__ == "__main__":
    main()
