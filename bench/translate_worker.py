"""One translate benchmark measurement in a process of its own (onnxforge in the project's venv, CTranslate2 in
its peer venv): ``python -m bench.translate_worker SYSTEM MODEL SOURCE TEXTS BATCH BEAMS THREADS NEW_TOKENS OUT``.

After one warm-up batch it translates every text :data:`PASSES` times and writes {"seconds": the fastest pass's
wall time, "pass_seconds": every pass's, "ids": tokens per text (the same in every pass, or it fails),
"peak_rss_mb": the process's peak resident memory, and for onnxforge "session_seconds": the part of the fastest
pass spent inside onnxruntime's ``run`` (the rest is host work: tokenizing, picking tokens, beam bookkeeping, cache
reordering)}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

SESSION_SECONDS = [0.0]
PASSES = 3  # timed passes over every text: one pass's wall time moved by ±10-30 % on a 2-core cloud machine


def _timed(run):
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return run(*args, **kwargs)
        finally:
            SESSION_SECONDS[0] += time.perf_counter() - start

    return timed


def _onnxforge(model: str, threads: int, beams: int, new_tokens: int):
    from onnxforge.runtime import load

    pipeline = load(model, providers="cpu", threads=threads)
    for session in (pipeline.model.encoder, pipeline.model.decoder, pipeline.model.stepper):
        if session is not None:  # the step graph, where the artifact has one
            session.run = _timed(session.run)
    decoding = pipeline.decoding(new_tokens, beams, early_stopping=False)
    return lambda batch: pipeline.token_ids(batch, decoding, batch_size=len(batch))


def _ctranslate2(model: str, source: str, threads: int, beams: int, new_tokens: int):
    import ctranslate2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(source) / "tokenizer.json"))
    translator = ctranslate2.Translator(model, device="cpu", intra_threads=threads, inter_threads=1)
    end = tokenizer.id_to_token(2)

    def run(batch: list[str]) -> list[list[int]]:
        tokens = [encoding.tokens for encoding in tokenizer.encode_batch(batch)]
        results = translator.translate_batch(tokens, beam_size=beams, max_decoding_length=new_tokens,
                                             max_batch_size=len(batch), length_penalty=1.0)  # fmt: skip
        return [[tokenizer.token_to_id(t) for t in r.hypotheses[0] if t != end] for r in results]

    return run


def main() -> None:
    system, model, source, texts_file, batch, beams, threads, new_tokens, out = sys.argv[1:]
    texts = json.loads(Path(texts_file).read_text())
    batch, beams, threads, new_tokens = int(batch), int(beams), int(threads), int(new_tokens)
    if system == "onnxforge":
        run = _onnxforge(model, threads, beams, new_tokens)
    else:
        run = _ctranslate2(model, source, threads, beams, new_tokens)
    run(texts[:batch])  # warm-up
    passes, sessions, outputs = [], [], []
    for _ in range(PASSES):
        SESSION_SECONDS[0] = 0.0
        ids: list[list[int]] = []
        start = time.perf_counter()
        for first in range(0, len(texts), batch):
            ids += run(texts[first : first + batch])
        passes.append(time.perf_counter() - start)
        sessions.append(SESSION_SECONDS[0])
        outputs.append(ids)
    if any(other != outputs[0] for other in outputs[1:]):
        raise SystemExit(f"{system} {model}: the passes translated the texts differently")
    best = passes.index(min(passes))
    # VmHWM, not getrusage's maxrss: Linux carries maxrss over from the parent across fork and exec
    peak = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:")) / 1024  # fmt: skip
    found = {"seconds": passes[best], "pass_seconds": passes, "ids": outputs[0], "peak_rss_mb": peak}
    if system == "onnxforge":
        found["session_seconds"] = sessions[best]
    Path(out).write_text(json.dumps(found))


if __name__ == "__main__":
    main()
