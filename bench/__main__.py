"""`make bench` (`python -m bench [--quick]`): every MiniLM system side by side, one run, one machine.

Figures: sentences/s at batch 32, batch-1 p50/p99, cold start (new process → first embedding), peak RSS,
size, mean/min cosine and recall@10 vs torch fp32, and achieved GFLOP/s as a share of the measured fp32 GEMM
rate. Results go to bench/results/ (results.md, results.json, PNG plots).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from onnxforge import corpus
from onnxforge.quantization.fidelity import embedding_fidelity
from onnxforge.sources import resolve

from . import cold_start, report, runs, scale, serve_generate, serve_load, translate, web
from .decoder import markdown as decoder_markdown
from .decoder import plot as decoder_plot
from .decoder import run_decoders
from .systems import MINILM, ROOT, encoder_systems

RESULTS = ROOT / "bench" / "results"
QUICK_SENTENCES = 128
PARTS = ("encoder", "cold", "decoder", "serve", "serve-generate", "translate", "web", "scale")


def _worker(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.worker", *args], check=True, cwd=ROOT)
    return time.perf_counter() - start


def token_counts(texts: list[str]) -> list[int]:
    """Real tokens per text under MiniLM's tokenizer (every system here shares it)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(resolve(MINILM).path / "tokenizer.json"))
    tokenizer.no_padding()  # the packaged tokenizer.json pads to 128: count real tokens only
    tokenizer.enable_truncation(max_length=256)
    return [len(encoding.ids) for encoding in tokenizer.encode_batch(texts)]


def encoder_flops(tokens: list[int], config: dict) -> float:
    """Useful fp32 FLOPs of the encoder ``config`` describes over texts of ``tokens`` real tokens each (projections,
    FFN and attention): a distilled student counts its own layers."""
    layers, hidden, inner = config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]
    return sum(layers * (8 * t * hidden**2 + 4 * t * hidden * inner + 4 * t * t * hidden) for t in tokens)


def _config(path: Path | None, default: dict) -> dict:
    """The config.json in a system's directory, else ``default`` (MiniLM's)."""
    found = path / "config.json" if path is not None else None
    return json.loads(found.read_text()) if found is not None and found.is_file() else default


def _size_mb(path: Path | None) -> float | None:
    if path is None or not path.exists():
        return None
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in (".onnx", ".data", ".safetensors")) / 1e6


def run_encoders(quick: bool, threads: int, providers: str, machine: dict) -> list[dict]:
    texts = corpus.split(corpus.load()).evaluation[: QUICK_SENTENCES if quick else 1024]
    tokens, minilm = token_counts(texts), resolve(MINILM).config
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxforge-bench-") as tmp:
        text_file = Path(tmp) / "texts.json"
        text_file.write_text(json.dumps(texts))
        common = ["--texts", str(text_file), "--threads", str(threads), "--providers", providers]
        extra = ["--repeats", "1", "--latency-n", "20"] if quick else ["--repeats", "3", "--latency-n", "200"]
        reference = None
        for index, system in enumerate(encoder_systems()):
            print(f"▸ {system.name}", file=sys.stderr, flush=True)
            out = Path(tmp) / f"{index}.json"
            _worker(["--system", system.name, "--out", str(out), *common, *extra])
            # cold start: a process of its own (quick mode leaves it out: one more interpreter start per system)
            cold = None if quick else _worker(["--system", system.name, "--out", str(out) + ".cold", "--cold", *common])
            row = {"system": system.name, "family": system.family, **json.loads(out.read_text()), "cold_start_s": cold}
            vectors = np.load(out.with_suffix(".npy"))
            reference = vectors if reference is None else reference
            row.update(embedding_fidelity(reference, vectors))
            row["size_mb"] = _size_mb(system.path())
            flops = encoder_flops(tokens, _config(system.path(), minilm))
            row["gflops"] = flops / 1e9 * row["sentences_per_s"] / len(texts)
            row["gemm_pct"] = 100 * row["gflops"] / machine["gemm_fp32_gflops"]
            rows.append(row)
    for row in rows:
        row["speedup"] = row["sentences_per_s"] / rows[0]["sentences_per_s"]
    return rows


def measure(part: str, args: argparse.Namespace, machine: dict, out: Path) -> tuple[object, str, list[Path]]:
    """One part of the bench: its raw figures, its markdown table and the plots it wrote."""
    cpu = f"{args.threads} threads, {machine['class']} CPU"
    if part == "encoder":
        rows = run_encoders(args.quick, args.threads, args.providers, machine)
        title = f"MiniLM-L6 embeddings, {QUICK_SENTENCES if args.quick else '1,024'} real sentences, {args.providers}, {cpu}"
        return rows, report.markdown(rows, machine, title), report.plots(rows, out)
    if part == "decoder":
        with tempfile.TemporaryDirectory(prefix="onnxforge-bench-") as tmp:
            rows = run_decoders(args.quick, args.threads, machine, Path(tmp))
        title = f"SmolLM2-135M-Instruct greedy decoding, cpu, {cpu}{' (quick: 1 prompt)' if args.quick else ''}"
        return rows, decoder_markdown(rows, title), [decoder_plot(rows, out)]
    if part == "translate":
        rows = translate.run(args.threads)
        title = (f"Marian (opus-mt-en-de size, random weights) translation, {translate.SENTENCES} sentences x "
                 f"{translate.NEW_TOKENS} new tokens, cpu, {cpu}")  # fmt: skip
        return rows, translate.markdown(rows, title), []
    if part == "web":
        result = web.run(args.threads)
        return result, web.markdown(result, f"MiniLM-L6 embeddings in WASM (onnxruntime-web), {cpu}"), []
    if part == "cold":
        rows = cold_start.run()
        return rows, cold_start.markdown(rows), []
    if part == "scale":
        rows = scale.run(args.threads, machine, corpus.split(corpus.load()).evaluation, args.quick)
        title = f"Decode speed by model size: onnxforge int4 vs llama.cpp on the same random-weight GGUFs, cpu, {cpu}"
        return rows, scale.markdown(rows, title), [scale.plot(rows, out)]
    if part == "serve":
        rows = serve_load.run(corpus.split(corpus.load()).evaluation, requests=300 if args.quick else 2000, threads=args.threads)
        return rows, serve_load.markdown(rows), []
    result = serve_generate.run(corpus.split(corpus.load()).evaluation, args.threads, requests=1 if args.quick else 3,
                                clients=(1, 8) if args.quick else serve_generate.CLIENTS)  # fmt: skip
    title = (f"Chat serving under load: onnxforge serve vs llama-server, SmolLM2-135M Q4_1, {serve_generate.SLOTS} "
             f"slots, {cpu}")  # fmt: skip
    return result, serve_generate.markdown(result, title), [serve_generate.plot(result, out)]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--quick", action="store_true",
                   help=f"under 3 minutes: {QUICK_SENTENCES} sentences, 1 repeat, no cold starts, 1 prompt × 64 "
                        "tokens, 300 requests; results in bench/results/quick/")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--providers", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--part", choices=["all", *PARTS], default="all",
                   help="re-run one part; the file keeps the other parts only if measured on this CPU model and class")
    args = p.parse_args()
    print("▸ machine: fp32 GEMM rate and memory bandwidth", file=sys.stderr, flush=True)
    probe = subprocess.run([sys.executable, "-m", "bench.machine", str(args.threads)], check=True, cwd=ROOT,
                           capture_output=True, text=True)  # fmt: skip
    machine = json.loads(probe.stdout)
    run = runs.new_run(machine, args.quick)
    print("▸ preparing the peers' models (once)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "bench.prepare"], check=True, cwd=ROOT)  # keeps torch out of this process
    # one folder per CPU class (its integer kernels differ), and a quick run never overwrites the full results
    out = (RESULTS / "quick" if args.quick else RESULTS) / machine["class"]
    out.mkdir(parents=True, exist_ok=True)
    selected = [part for part in PARTS if args.part in ("all", part) and not (part == "cold" and args.quick)]
    previous = out / "results.json"
    kept = json.loads(previous.read_text()) if previous.is_file() else None
    parts, dropped = runs.keep(kept, run, set(selected))
    for reason in dropped:
        print(f"▸ dropped from {previous}: {reason}", file=sys.stderr)
    plots: list[Path] = []
    for part in selected:
        rows, table, written = measure(part, args, machine, out)
        parts[part] = {"run": run["id"], "table": runs.stamp(table, run), "rows": rows}
        plots += written
    used = {part["run"] for part in parts.values()}
    recorded = {k: v for k, v in {**(kept or {}).get("runs", {}), run["id"]: run}.items() if k in used}
    results = {"runs": recorded, "parts": {k: parts[k] for k in PARTS if k in parts}, "providers": args.providers}
    text = runs.document(results["parts"], recorded, PARTS)
    report.save(results, text, out)
    print(text)
    print(f"saved {out / 'results.md'}, results.json, " + ", ".join(p.name for p in plots))


if __name__ == "__main__":
    main()
