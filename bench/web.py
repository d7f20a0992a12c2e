"""`python -m bench --part web`: MiniLM embeddings in WASM, onnxforge's artifacts against the int8 file that
transformers.js users normally get (Optimum's dynamic int8 export, per-tensor activations), one run.

Node: each graph in onnxruntime-web's WASM backend (bench/web_worker.mjs, a process each), tokenized by
transformers.js, 512 held-out sentences at batch 32, then 32 at batch 1; load time, sentences/s and p50. Fidelity:
the WASM vectors against fp32 run natively by the Python runtime (mean/min cosine, recall@10 of fp32's neighbours).
Download: graph + tokenizer.json + config files, what a page fetches. Chromium (where installed): examples/web's
page over each onnxforge web-ready artifact, cold model load and its embedding rate. Node packages: tests/js's
(transformers.js, which brings onnxruntime-web; puppeteer-core), installed into .cache/js-tests once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from onnxforge import corpus
from onnxforge.quantization.fidelity import embedding_fidelity

from .prepare import OPTIMUM_WEB
from .systems import ROOT

ARTIFACTS = ROOT / "artifacts" / "minilm-l6"
TEXTS = 512
PAGE_SENTENCES = 256
DOWNLOADED = ("tokenizer.json", "tokenizer_config.json", "config.json")  # beside the graph


def js_modules() -> Path:
    """tests/js's packages in .cache/js-tests (npm install once), with the worker beside them."""
    from tests.npm import JS_TESTS, install

    folder = install(*JS_TESTS)
    shutil.copy2(Path(__file__).with_name("web_worker.mjs"), folder / "web_worker.mjs")
    return folder


def systems() -> list[tuple[str, Path, Path]]:
    """(name, model folder with tokenizer files, graph): the onnxforge variants `make artifacts` built, then Optimum's."""
    found = []
    for variant in ("fp32", "int8", "int8-fast", "web"):
        manifest = ARTIFACTS / variant / "manifest.json"
        if manifest.is_file():
            graph = json.loads(manifest.read_text())["model_file"]
            found.append((f"onnxforge {variant}", ARTIFACTS / variant, ARTIFACTS / variant / graph))
    found.append(("Optimum int8 (transformers.js's usual q8)", OPTIMUM_WEB, OPTIMUM_WEB / "model_quantized.onnx"))
    return found


def run(threads: int) -> dict:
    from onnxforge.runtime import load

    if not (shutil.which("node") and shutil.which("npm")):
        return {"node": [], "chromium": [], "skipped": "node and npm are not on this machine"}
    js = js_modules()
    texts = corpus.split(corpus.load()).evaluation[:TEXTS]
    reference = load(ARTIFACTS / "fp32", providers="cpu").embed(texts)
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxforge-web-") as tmp:
        text_file = Path(tmp) / "texts.json"
        text_file.write_text(json.dumps(texts))
        for name, folder, graph in systems():
            print(f"▸ WASM (Node): {name}", file=sys.stderr, flush=True)
            out = Path(tmp) / "vectors.f32"
            done = subprocess.run(["node", str(js / "web_worker.mjs"), str(folder), str(graph), str(text_file),
                                   str(threads), str(out)], capture_output=True, text=True, check=True)  # fmt: skip
            row = {"system": name, **json.loads(done.stdout)}
            vectors = np.fromfile(out, np.float32).reshape(len(texts), -1)
            row.update(embedding_fidelity(reference, vectors))
            row["graph_mb"] = graph.stat().st_size / 1e6
            row["download_mb"] = row["graph_mb"] + sum((folder / f).stat().st_size for f in DOWNLOADED) / 1e6
            rows.append(row)
    optimum = next(r for r in rows if r["system"].startswith("Optimum"))
    for row in rows:
        row["vs_optimum"] = row["sentences_per_s"] / optimum["sentences_per_s"]
    return {"node": rows, "chromium": chromium_pages(texts, js)}


def chromium_pages(texts: list[str], js: Path) -> list[dict]:
    """examples/web in headless Chromium over each onnxforge artifact in transformers.js layout: [] without chromium."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        return []
    from tests.npm import web_page

    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxforge-web-page-") as tmp:
        sentences = Path(tmp) / "sentences.txt"
        sentences.write_text("\n".join(texts[:PAGE_SENTENCES]) + "\n")
        for variant in ("int8", "web"):
            folder = ARTIFACTS / variant
            if json.loads((folder / "manifest.json").read_text()).get("graph", {}).get("layout") != "transformers.js":
                continue
            print(f"▸ WASM (Chromium page): onnxforge {variant}", file=sys.stderr, flush=True)
            with web_page(folder, js / "node_modules", sentences) as url:
                done = subprocess.run(["node", str(js / "browser.mjs"), f"{url}?count={PAGE_SENTENCES}",
                                       "read a file line by line", str(Path(tmp) / f"{variant}.png"), browser],
                                      capture_output=True, text=True, check=True)  # fmt: skip
            page = json.loads(done.stdout)
            rows.append({"system": f"onnxforge {variant}", "load_ms": page["loadMs"], "query_ms": page["queryMs"],
                         "sentences_per_s": PAGE_SENTENCES / page["embedMs"] * 1000, "isolated": page["isolated"]})  # fmt: skip
    return rows


def markdown(result: dict, title: str) -> str:
    if result.get("skipped"):
        return f"### {title}\n\nNot measured: {result['skipped']}.\n"
    head = "| system | download MB | load ms | sent/s b32 | × Optimum int8 | p50 ms b1 | mean cos | min cos | R@10 |"
    lines = [f"### {title}", "", head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['system']} | {r['download_mb']:.1f} | {r['load_ms']:.0f} | {r['sentences_per_s']:.1f} | "
              f"{r['vs_optimum']:.2f} | {r['p50_ms_b1']:.1f} | {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | "
              f"{r['recall_at_10']:.3f} |" for r in result["node"]]  # fmt: skip
    lines += ["", f"Node {TEXTS} held-out sentences, onnxruntime-web WASM; fidelity against fp32 run natively."]
    if result["chromium"]:
        lines += ["", "| page in headless Chromium | cold model load ms | sent/s (batch 32) | query ms |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {r['system']} | {r['load_ms']:.0f} | {r['sentences_per_s']:.1f} | {r['query_ms']:.1f} |"
                  for r in result["chromium"]]  # fmt: skip
        lines += ["", f"examples/web over {PAGE_SENTENCES} held-out sentences, cross-origin isolated (WASM threads)."]
    return "\n".join(lines) + "\n"
