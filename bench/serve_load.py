"""Load test of `onnxforge serve` on loopback: concurrent embedding clients, with and without micro-batching.

The server runs in its own process (`onnxforge serve`, 2 onnxruntime threads); ``clients`` coroutines each send
single-sentence ``/v1/embeddings`` requests until ``requests`` have been answered. Figures: requests/s, p50/p99
latency, errors; the gain of micro-batching is requests/s with ``--max-batch 32`` over ``--max-batch 1``.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import subprocess
import sys
import time

import aiohttp
import httpx

from .systems import ROOT

ARTIFACT = ROOT / "artifacts" / "minilm-l6" / "int8"
MODEL = "minilm-l6/int8"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _drive(base: str, texts: list[str], clients: int, requests: int) -> dict:
    """``clients`` closed-loop clients on aiohttp (a third of httpx's CPU per request: the load generator shares
    the server's cores here, and every cycle it burns is one the server does not get)."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in counter:
            start = time.perf_counter()
            # base64: what the official openai clients ask for unless told otherwise
            body = {"model": MODEL, "input": texts[i % len(texts)], "encoding_format": "base64"}
            async with http.post(f"{base}/v1/embeddings", json=body) as response:
                await response.read()
                errors += response.status != 200
            latencies.append((time.perf_counter() - start) * 1e3)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:
        for text in texts[:8]:  # warm-up
            async with http.post(f"{base}/v1/embeddings", json={"model": MODEL, "input": text}) as response:
                response.raise_for_status()
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {"requests": len(latencies), "errors": errors, "requests_per_s": len(latencies) / elapsed,
            "p50_ms": statistics.median(latencies), "p99_ms": statistics.quantiles(latencies, n=100)[98]}  # fmt: skip


def run(texts: list[str], clients: int = 32, requests: int = 2000, threads: int = 2) -> list[dict]:
    rows = []
    for label, max_batch in (("micro-batched (max 32, 5 ms)", 32), ("one at a time (max batch 1)", 1)):
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "onnxforge.cli", "serve", str(ARTIFACT), "--port", str(port), "--threads", str(threads),
             "--max-batch", str(max_batch), "--max-wait-ms", "5", "--max-queue", "4096"], cwd=ROOT,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            _wait(base)
            print(f"▸ serve load: {label}, {clients} clients, {requests} requests", file=sys.stderr, flush=True)
            rows.append({"mode": label, "clients": clients, **asyncio.run(_drive(base, texts, clients, requests))})
        finally:
            server.terminate()
            server.wait(timeout=60)
    rows[0]["gain"] = rows[0]["requests_per_s"] / rows[1]["requests_per_s"]
    return rows


def _wait(base: str, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"the server at {base} did not start within {seconds} s")


def markdown(rows: list[dict]) -> str:
    lines = ["### `onnxforge serve` load test: MiniLM int8 embeddings over HTTP (loopback)", "",
             "| mode | clients | requests | errors | req/s | p50 ms | p99 ms | gain |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        gain = f"{r['gain']:.2f}×" if "gain" in r else ""
        lines.append(f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['requests_per_s']:.1f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {gain} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    from onnxforge import corpus

    print(markdown(run(corpus.split(corpus.load()).evaluation)))


if __name__ == "__main__":
    main()
