// One embed system in WASM, in Node: onnxruntime-web's WASM backend (what a browser runs) over a graph, tokenized by
// transformers.js's tokenizer from the model's own folder.
//   node web_worker.mjs MODEL_DIR GRAPH TEXTS.json THREADS OUT.f32  → JSON {load_ms, sentences_per_s, ...} on stdout
// Vectors (sentence_embedding when the graph pools, else the mask-weighted mean of last_hidden_state; normalised)
// go to OUT.f32 as raw float32, row after row.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, basename } from "node:path";

import { AutoTokenizer, env } from "@huggingface/transformers";
import * as ort from "onnxruntime-web";

const [dir, graph, textFile, threads, out] = process.argv.slice(2);
const texts = JSON.parse(readFileSync(textFile, "utf8"));
const BATCH = 32;
env.allowRemoteModels = false;
env.localModelPath = dirname(dir) + "/";
ort.env.wasm.numThreads = Number(threads);

const t0 = performance.now();
const tokenizer = await AutoTokenizer.from_pretrained(basename(dir));
const session = await ort.InferenceSession.create(graph, { executionProviders: ["wasm"] });
const loadMs = performance.now() - t0;
const pooled = session.outputNames.includes("sentence_embedding");
const names = new Set(session.inputNames);

async function embed(batch) {
  const enc = tokenizer(batch, { padding: true, truncation: true, max_length: 256 });
  const feeds = {};
  for (const [name, tensor] of Object.entries(enc)) {
    if (names.has(name)) feeds[name] = new ort.Tensor("int64", tensor.data, tensor.dims);
  }
  const output = pooled ? "sentence_embedding" : "last_hidden_state";
  const result = (await session.run(feeds, [output]))[output];
  const [rows] = result.dims;
  const dim = result.dims.at(-1);
  const vectors = [];
  for (let r = 0; r < rows; r++) {
    const v = new Float32Array(dim);
    if (pooled) v.set(result.data.subarray(r * dim, (r + 1) * dim));
    else {
      const width = result.dims[1];
      const mask = enc.attention_mask.data;
      let count = 0;
      for (let t = 0; t < width; t++) {
        if (!Number(mask[r * width + t])) continue;
        count++;
        const base = (r * width + t) * dim;
        for (let d = 0; d < dim; d++) v[d] += result.data[base + d];
      }
      for (let d = 0; d < dim; d++) v[d] /= count;
    }
    const norm = Math.hypot(...v) || 1;
    vectors.push(v.map((x) => x / norm));
  }
  return vectors;
}

await embed(texts.slice(0, BATCH)); // warm-up: the first run allocates
const started = performance.now();
const vectors = [];
for (let i = 0; i < texts.length; i += BATCH) vectors.push(...(await embed(texts.slice(i, i + BATCH))));
const seconds = (performance.now() - started) / 1000;
const single = [];
for (const text of texts.slice(0, 32)) {
  const s = performance.now();
  await embed([text]);
  single.push(performance.now() - s);
}
single.sort((a, b) => a - b);
const flat = new Float32Array(vectors.length * vectors[0].length);
vectors.forEach((v, i) => flat.set(v, i * v.length));
writeFileSync(out, Buffer.from(flat.buffer));
console.log(JSON.stringify({ load_ms: loadMs, sentences_per_s: texts.length / seconds, p50_ms_b1: single[16],
  threads: ort.env.wasm.numThreads, dim: vectors[0].length }));
