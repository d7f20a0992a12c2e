"""transformers.js layout: an artifact that ``@huggingface/transformers`` (in Node or a browser) loads as it is.

transformers.js reads ``config.json`` and the tokenizer files from a model directory and the graph from
``onnx/model{suffix}.onnx``, the suffix naming the precision (``""`` fp32, ``_fp16``, ``_quantized`` for int8,
``_q4`` for 4-bit blocks); ``config.json``'s ``transformers.js_config.dtype`` is the precision it loads when the
caller names none. This moves the artifact's graph to that name and sets that field, nothing else: the manifest
names the moved graph (``model_file``), so the runtime, plain onnxruntime and Optimum (``subfolder="onnx"``) load
the same file, and it still hashes every file. Republished atomically, as every artifact.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from .artifact import Manifest, copy_files, publish, staging, verify

FOLDER = "onnx"
CONFIG_KEY = "transformers.js_config"
# the manifest's weight precision → transformers.js's dtype and the file-name suffix it reads for that dtype
DTYPES = {"float32": ("fp32", ""), "float16": ("fp16", "_fp16"), "int8": ("q8", "_quantized"), "int4": ("q4", "_q4")}
TASKS = ("embed", "classify", "token-classify", "answer")  # encoder tasks with a transformers.js pipeline


def _dtype(manifest: Manifest) -> tuple[str, str]:
    """transformers.js's dtype for this artifact's weights and the file-name suffix it reads for it."""
    weights = str(manifest.precision.get("weights"))
    if weights not in DTYPES:
        raise ValueError(f"{manifest.name}/{manifest.variant}: weights {weights!r} have no transformers.js dtype; "
                         f"it reads {', '.join(DTYPES)}")  # fmt: skip
    return DTYPES[weights]


def to_transformers_js(directory: str | Path) -> Manifest:
    """Lay the artifact at ``directory`` out as transformers.js reads it (see the module's docstring)."""
    root = Path(directory)
    manifest = verify(root)
    if manifest.task not in TASKS or manifest.encoder_file:
        raise ValueError(f"{root}: a {manifest.task} artifact has no transformers.js layout here; the layout is for "
                         f"{', '.join(TASKS)}")  # fmt: skip
    if not (root / "config.json").is_file():
        raise ValueError(f"{root}: no config.json, which transformers.js reads the architecture from")
    dtype, suffix = _dtype(manifest)
    target = f"{FOLDER}/model{suffix}.onnx"
    with staging(root) as stage:
        copy_files(root, stage, skip=(manifest.model_file, "config.json"))
        (stage / FOLDER).mkdir()
        shutil.copy2(root / manifest.model_file, stage / target)
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
        config[CONFIG_KEY] = {**config.get(CONFIG_KEY, {}), "dtype": dtype}
        (stage / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        moved = replace(manifest, model_file=target, files={}, graph={**manifest.graph, "layout": "transformers.js"})
        publish(stage, moved, root)
    return moved
