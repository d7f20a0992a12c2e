// transformers.js in Node over an onnxforge artifact directory, loaded as it is (no copying, no renaming):
//   node pipeline.mjs embed|classify ARTIFACT_DIR TEXT [TEXT …]  → JSON on stdout
// embed: {"vectors"} pooled and normalised as the manifest says; classify: {"labels": [[{label, score}, …] per text]}.
import { readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";

import { env, pipeline } from "@huggingface/transformers";

const [task, dir, ...texts] = process.argv.slice(2);
if (!["embed", "classify"].includes(task) || !dir || texts.length === 0) {
  console.error("usage: node pipeline.mjs embed|classify ARTIFACT_DIR TEXT [TEXT …]");
  process.exit(2);
}
env.allowRemoteModels = false; // offline: the artifact is the model
env.localModelPath = dirname(dir) + "/";
const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
const options = { session_options: { intraOpNumThreads: 2 } };
if (task === "embed") {
  const extractor = await pipeline("feature-extraction", basename(dir), options);
  const { pooling, normalize } = manifest.preprocess;
  const output = await extractor(texts, { pooling, normalize });
  console.log(JSON.stringify({ vectors: output.tolist() }));
} else {
  const classifier = await pipeline("text-classification", basename(dir), options);
  const labels = await classifier(texts, { top_k: null });
  console.log(JSON.stringify({ labels }));
}
