"""Chat serving under concurrent load: `onnxforge serve` (continuous batching) vs llama.cpp's `llama-server`.

Both serve the packaged SmolLM2-135M Q4_1 GGUF (onnxforge: its int4 artifact, which keeps the file's blocks; and its
weight-only int8, faster per token at a lower next-token agreement), with the same threads and 16 slots, all alive
through the run and measured in turns, client count by client count. Each onnxforge row carries its artifact's gate
figures (next-token agreement and perplexity retention vs fp32 on held-out text).
``clients`` closed-loop clients each send ``requests`` streamed ``/v1/completions`` back to back: a prompt of real
held-out text, 64 new tokens (``ignore_eos``, so every answer has exactly 64), temperature 0. Figures: aggregate
completion tokens/s, p50/p99 request latency, p50 time to first token, errors, the server's peak RSS.

A second chat turn: a long first turn (system prompt + ~300 tokens), then the same conversation with its answer and
a new question; time to first token of each (median of 3 conversations, each new), the second resuming the first's
tokens where the server keeps them (onnxforge: prefix reuse from its KV pool; llama-server: its prompt cache).

Run by ``python -m bench --part serve-generate`` after ``make artifacts bench-peers``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx

from onnxforge.cpu import this_cpu

from .decoder import _gguf
from .report import pyplot, save_figure
from .systems import ROOT

ARTIFACTS = ROOT / "artifacts" / "smollm2-135m"
NEW_TOKENS = 64
SLOTS = 16
CLIENTS = (1, 2, 4, 8, 16)


def llama_server() -> Path:
    """The native llama-server `make bench-peers` builds for this CPU class (or $LLAMA_SERVER)."""
    path = Path(os.environ.get("LLAMA_SERVER") or ROOT / "bench" / ".venv-peers" / f"llama-server-{this_cpu().kernel_class}" / "llama-server")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make bench-peers` first")
    return path


@dataclass
class Server:
    name: str
    command: list[str]
    model: str
    process: subprocess.Popen | None = None
    base: str = ""

    def start(self) -> None:
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([*self.command, "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.base}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} did not start within 120 s")

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(timeout=60)


def onnxforge_server(name: str, artifact: Path, threads: int, slots: int) -> Server:
    """`onnxforge serve` over one artifact (its model name: <artifact's parent>/<variant>)."""
    return Server(name, [sys.executable, "-m", "onnxforge.cli", "serve", str(artifact), "--threads", str(threads),
                         "--max-generations", str(slots), "--max-waiting-generations", "256"],
                  f"{artifact.parent.name}/{artifact.name}")  # fmt: skip


def peer_server(name: str, gguf: Path, threads: int, slots: int) -> Server:
    """llama-server over a GGUF, ``slots`` parallel sequences of up to 1,024 tokens each."""
    return Server(name, [str(llama_server()), "-m", str(gguf), "-t", str(threads), "-tb", str(threads), "-np", str(slots),
                         "-c", str(slots * 1024), "--no-webui", "--host", "127.0.0.1"], gguf.stem)  # fmt: skip


def servers(threads: int) -> list[Server]:
    """The peer first (every ratio is against it), then onnxforge's variants."""
    ours = [onnxforge_server(f"onnxforge serve ({variant})", ARTIFACTS / variant, threads, SLOTS) for variant in ("int4", "int8")]
    return [peer_server("llama-server (Q4_1)", _gguf(), threads, SLOTS), *ours]


def gate_figures(server: Server) -> str:
    """An onnxforge variant's gate figures from its manifest ("same file" for llama-server)."""
    if not server.model.startswith("smollm2-135m/"):
        return "the GGUF itself"
    quality = json.loads((ARTIFACTS / server.model.split("/")[1] / "manifest.json").read_text())["quality"]
    return f"{quality['next_token_agreement']:.3f} / {quality['perplexity_retention']:.3f}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _completion(http: aiohttp.ClientSession, server: Server, prompt: str) -> dict:
    """One streamed completion: latency, time to first token, error."""
    body = {"model": server.model, "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "stream": True,
            "ignore_eos": True}  # fmt: skip
    start = time.perf_counter()
    first = None
    async with http.post(f"{server.base}/v1/completions", json=body) as response:
        ok = response.status == 200
        async for line in response.content:
            if first is None and line.startswith(b"data: {") and json.loads(line[6:])["choices"][0].get("text"):
                first = time.perf_counter()
    end = time.perf_counter()
    return {"ok": ok and first is not None, "latency_s": end - start, "ttft_s": (first or end) - start}


async def _load(server: Server, prompts: list[str], clients: int, requests: int) -> dict:
    results: list[dict] = []

    async def client(http: aiohttp.ClientSession, c: int) -> None:
        for r in range(requests):
            results.append(await _completion(http, server, prompts[(c * requests + r) % len(prompts)]))

    # a connection per request: llama-server closes a streamed response's connection, which aiohttp would reuse
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients, force_close=True),
                                     timeout=aiohttp.ClientTimeout(total=600)) as http:  # fmt: skip
        start = time.perf_counter()
        await asyncio.gather(*(client(http, c) for c in range(clients)))
        elapsed = time.perf_counter() - start
    good = [r for r in results if r["ok"]]
    latencies = sorted(r["latency_s"] for r in good)
    return {"system": server.name, "clients": clients, "requests": len(results), "errors": len(results) - len(good),
            "tokens_per_s": len(good) * NEW_TOKENS / elapsed, "p50_s": statistics.median(latencies),
            "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "p50_ttft_ms": 1e3 * statistics.median(r["ttft_s"] for r in good)}  # fmt: skip


def _check_counts(server: Server, prompt: str) -> None:
    """Both servers must really decode ``NEW_TOKENS`` per answer (ignore_eos honoured): tokens/s counts on it."""
    body = {"model": server.model, "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
    usage = httpx.post(f"{server.base}/v1/completions", json=body, timeout=120).json()["usage"]
    if usage["completion_tokens"] != NEW_TOKENS:
        raise RuntimeError(f"{server.name} answered {usage['completion_tokens']} tokens, not {NEW_TOKENS}")


def _ttft(server: Server, messages: list[dict]) -> tuple[float, str]:
    """Time to the first streamed token of a chat turn, and the whole answer."""
    body = {"model": server.model, "messages": messages, "max_tokens": 32, "temperature": 0, "stream": True,
            "ignore_eos": True}  # fmt: skip
    start, first, text = time.perf_counter(), None, []
    with httpx.stream("POST", f"{server.base}/v1/chat/completions", json=body, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                piece = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                if piece and first is None:
                    first = time.perf_counter()
                text.append(piece)
    return (first or time.perf_counter()) - start, "".join(text)


def second_turn(server: Server, texts: list[str], conversations: int = 3) -> dict:
    colds, warms = [], []
    for i in range(conversations):
        system = f"Conversation {uuid.uuid4().hex[:8]}. You are a helpful assistant who answers in one sentence."
        history = " ".join(texts[40 + 12 * i : 52 + 12 * i])
        messages = [{"role": "system", "content": system}, {"role": "user", "content": f"Summarise this: {history}"}]
        cold, answer = _ttft(server, messages)
        follow = [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": "And in one word?"}]
        warm, _ = _ttft(server, follow)
        colds.append(cold)
        warms.append(warm)
    cold, warm = statistics.median(colds), statistics.median(warms)
    return {"system": server.name, "first_turn_ttft_ms": 1e3 * cold, "second_turn_ttft_ms": 1e3 * warm,
            "ratio": warm / cold}  # fmt: skip


def run(texts: list[str], threads: int = 2, requests: int = 3, clients: tuple[int, ...] = CLIENTS) -> dict:
    prompts = [" ".join(texts[i : i + 2]) for i in range(0, 2 * 64, 2)]
    systems = servers(threads)
    rows: list[dict] = []
    try:
        for server in systems:
            print(f"▸ serve-generate: starting {server.name}", file=sys.stderr, flush=True)
            server.start()
            _check_counts(server, prompts[0])
            asyncio.run(_load(server, prompts, 8, 1))  # warm-up, discarded
        for n in clients:  # in turns, so that a slow spell of a shared machine hits both
            for server in systems:
                print(f"▸ serve-generate: {server.name}, {n} clients × {requests} requests", file=sys.stderr, flush=True)
                rows.append(asyncio.run(_load(server, prompts, n, requests)) | {"peak_rss_mb": server.peak_rss_mb()})
        turns = [second_turn(server, texts) for server in systems]
    finally:
        for server in systems:
            server.stop()
    peer = {r["clients"]: r["tokens_per_s"] for r in rows if r["system"] == systems[0].name}
    figures = {server.name: gate_figures(server) for server in systems}
    for row in rows:
        row["vs_llama_server"] = row["tokens_per_s"] / peer[row["clients"]]
        row["agreement_retention"] = figures[row["system"]]
    return {"rows": rows, "second_turn": turns, "slots": SLOTS, "new_tokens": NEW_TOKENS, "requests": requests}


def markdown(result: dict, title: str) -> str:
    lines = [f"### {title}", "",
             ("| system | clients | requests | errors | tok/s | × llama-server | p50 s | p99 s | p50 TTFT ms | peak RSS MB "
              "| agreement / ppl retention vs fp32 |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['system']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['tokens_per_s']:.1f} | "
                     f"{r['vs_llama_server']:.2f} | {r['p50_s']:.2f} | {r['p99_s']:.2f} | {r['p50_ttft_ms']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['agreement_retention']} |")  # fmt: skip
    lines += ["", "Second chat turn (the first turn's ~300 tokens resumed where the server keeps them), median of 3:", "",
              "| system | first turn TTFT ms | second turn TTFT ms | second / first |", "|---|---:|---:|---:|"]  # fmt: skip
    for t in result["second_turn"]:
        lines.append(f"| {t['system']} | {t['first_turn_ttft_ms']:.0f} | {t['second_turn_ttft_ms']:.0f} | {t['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, out: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for system in dict.fromkeys(r["system"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["system"] == system]
        left.plot([r["clients"] for r in rows], [r["tokens_per_s"] for r in rows], marker="o", label=system)
        right.plot([r["clients"] for r in rows], [r["p50_ttft_ms"] for r in rows], marker="o", label=system)
    left.set(xlabel="concurrent clients", ylabel="completion tokens/s (all clients)", xscale="log", title="throughput")
    right.set(xlabel="concurrent clients", ylabel="p50 time to first token, ms", xscale="log", title="time to first token")
    for ax in (left, right):
        ax.set_xticks(CLIENTS, [str(c) for c in CLIENTS])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("SmolLM2-135M Q4_1 chat serving, closed-loop clients, 64 new tokens each")
    return save_figure(fig, out / "serve_generate.png")


def main() -> None:
    from onnxforge import corpus

    result = run(corpus.split(corpus.load()).evaluation)
    print(markdown(result, "onnxforge serve vs llama-server"))


if __name__ == "__main__":
    main()
