// Semantic search over a few hundred sentences with an onnxforge `embed` artifact, all in the browser:
// transformers.js loads the artifact as it is (its graph at onnx/model{_quantized,_q4,…}.onnx, the dtype in
// config.json) and runs it with onnxruntime-web's WASM backend. serve.py serves this page, the npm packages under
// /modules/, the artifact under /model/ and the sentences at /sentences.txt, all from this machine.
import { env, pipeline } from "/modules/@huggingface/transformers/dist/transformers.min.js";

const params = new URLSearchParams(location.search);
const COUNT = Number(params.get("count") ?? 300); // sentences embedded and searched
const TOP = 5;

env.allowRemoteModels = false; // nothing from a model hub: the artifact is served beside the page
env.allowLocalModels = true;
env.localModelPath = "/";
env.backends.onnx.wasm.wasmPaths = "/modules/onnxruntime-web/dist/";
env.backends.onnx.wasm.numThreads = Math.min(4, navigator.hardwareConcurrency || 1); // threads need cross-origin isolation

const $ = (id) => document.getElementById(id);
const demo = (window.demo = { ready: false, queries: 0 }); // read by the page's test (tests/js/browser.mjs)

function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

async function main() {
  const manifest = await (await fetch("/model/manifest.json")).json();
  if (manifest.task !== "embed") throw new Error(`the artifact's task is ${manifest.task}; this page embeds`);
  const { pooling, normalize } = manifest.preprocess; // as the Python runtime pools (the graph's last_hidden_state)
  const started = performance.now();
  const extractor = await pipeline("feature-extraction", "model");
  demo.loadMs = performance.now() - started;
  const lines = (await (await fetch("/sentences.txt")).text()).split("\n").map((l) => l.trim());
  const sentences = lines.filter((l) => l && !l.startsWith("#")).slice(0, COUNT);
  const embed = async (texts) => (await extractor(texts, { pooling, normalize })).tolist();
  const t0 = performance.now();
  const vectors = [];
  for (let i = 0; i < sentences.length; i += 32) vectors.push(...(await embed(sentences.slice(i, i + 32))));
  Object.assign(demo, { sentences, vectors, embedMs: performance.now() - t0, pooling, normalize });
  $("model").textContent = `${manifest.name}/${manifest.variant} (${manifest.precision.weights}), ` +
    `${sentences.length} sentences embedded in this page`;
  $("timings").textContent = `model load ${demo.loadMs.toFixed(0)} ms · ${sentences.length} sentences in ` +
    `${demo.embedMs.toFixed(0)} ms`;
  $("search").addEventListener("submit", async (event) => {
    event.preventDefault();
    const query = $("query").value.trim();
    if (!query) return;
    const q0 = performance.now();
    const [v] = await embed([query]);
    const ranked = vectors.map((u, i) => [dot(u, v), i]).sort((a, b) => b[0] - a[0]).slice(0, TOP);
    const queryMs = performance.now() - q0;
    $("hits").replaceChildren(...ranked.map(([score, i]) => {
      const li = document.createElement("li");
      li.innerHTML = `<span class="score">${score.toFixed(3)}</span>`;
      li.append(sentences[i]);
      return li;
    }));
    $("timings").textContent = `model load ${demo.loadMs.toFixed(0)} ms · ${sentences.length} sentences in ` +
      `${demo.embedMs.toFixed(0)} ms · this query ${queryMs.toFixed(1)} ms`;
    Object.assign(demo, { query, queryVector: v, hits: ranked.map(([s, i]) => ({ index: i, score: s })), queryMs,
      queries: demo.queries + 1 });
  });
  for (const id of ["query", "go"]) $(id).disabled = false;
  demo.ready = true;
}

main().catch((error) => {
  demo.error = String(error?.stack ?? error);
  $("model").textContent = `failed: ${error}`;
});
