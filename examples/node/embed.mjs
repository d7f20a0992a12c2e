// Embed texts with an onnxforge `embed` artifact from Node.js — no Python at run time.
//
//   npm install --ignore-scripts        (onnxruntime-node ships its CPU binary; the install script only fetches GPU ones)
//   node embed.mjs ARTIFACT_DIR "first text" "second text" …   → JSON {"model", "dim", "vectors"} on stdout
//
// Everything comes from the artifact: manifest.json names the graph file, its inputs and outputs, and
// preprocess.max_length / pad_token_id; tokenizer.json is the tokenizer; every file is checked against the
// sha256 the manifest lists before anything is loaded. Pooling and L2 normalisation are inside the graph
// (output "sentence_embedding"), so the vectors are those the Python runtime returns.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";

import ort from "onnxruntime-node";
import tokenizers from "tokenizers";

const FORMAT = "onnxforge-artifact/1";

function readManifest(dir) {
  const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
  if (manifest.format !== FORMAT) throw new Error(`${dir}: artifact format ${manifest.format}, this example reads ${FORMAT}`);
  if (manifest.task !== "embed") throw new Error(`${dir}: task ${manifest.task}; this example embeds (task "embed")`);
  for (const [name, entry] of Object.entries(manifest.files)) {
    const digest = createHash("sha256").update(readFileSync(join(dir, name))).digest("hex");
    if (digest !== entry.sha256) throw new Error(`${join(dir, name)}: sha256 differs from the manifest's; refusing to load`);
  }
  return manifest;
}

// Token ids of each text, truncated to max_length, padded to the longest: int64 feeds by the graph's input names.
async function feeds(tokenizer, manifest, texts) {
  const { max_length: maxLength, pad_token_id: padId } = manifest.preprocess;
  tokenizer.setTruncation(maxLength);
  tokenizer.setPadding({ padId });
  const encodings = await tokenizer.encodeBatch(texts);
  const width = encodings[0].getIds().length;
  const columns = { input_ids: (e) => e.getIds(), attention_mask: (e) => e.getAttentionMask(), token_type_ids: (e) => e.getTypeIds() };
  const out = {};
  for (const input of manifest.inputs) {
    if (!(input.name in columns)) throw new Error(`graph input ${input.name} is not one this example can feed`);
    const values = encodings.flatMap((e) => columns[input.name](e).map(BigInt));
    out[input.name] = new ort.Tensor("int64", BigInt64Array.from(values), [texts.length, width]);
  }
  return out;
}

export async function embed(dir, texts) {
  const manifest = readManifest(dir);
  const tokenizer = tokenizers.Tokenizer.fromFile(join(dir, "tokenizer.json"));
  const session = await ort.InferenceSession.create(join(dir, manifest.model_file), { intraOpNumThreads: 2 });
  const output = manifest.outputs[0].name; // "sentence_embedding": pooled and normalised inside the graph
  const result = await session.run(await feeds(tokenizer, manifest, texts), [output]);
  const [count, dim] = result[output].dims;
  const data = Array.from(result[output].data);
  return { model: `${manifest.name}/${manifest.variant}`, dim, vectors: Array.from({ length: count }, (_, i) => data.slice(i * dim, (i + 1) * dim)) };
}

const [dir, ...texts] = process.argv.slice(2);
if (!dir || texts.length === 0) {
  console.error("usage: node embed.mjs ARTIFACT_DIR TEXT [TEXT …]");
  process.exit(2);
}
console.log(JSON.stringify(await embed(dir, texts)));
