"""A Triton Inference Server model repository from an artifact: onnxruntime backend, dynamic batching.

``DIR/<name>-<variant>/config.pbtxt`` is written from the manifest (inputs, outputs, dtypes; the batch axis
becomes Triton's implicit one), ``1/`` holds the model files and the tokenizer files sit beside ``config.pbtxt``
for clients (Triton reads only the config and the version folders). Triton batches requests of equal shape, so
clients should pad texts to a common length (or to the artifact's ``preprocess.max_length``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .artifact import Manifest, TensorSpec, read_manifest, staging, swap_in

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8"}  # fmt: skip
MODEL_SUFFIXES = (".onnx", ".data")


def _tensor(spec: TensorSpec) -> str:
    if spec.dtype not in TRITON_TYPES:
        raise ValueError(f"{spec.name}: dtype {spec.dtype} has no Triton type")
    dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in spec.shape[1:])
    return f'  {{ name: "{spec.name}", data_type: {TRITON_TYPES[spec.dtype]}, dims: [ {dims} ] }}'


def config_text(manifest: Manifest, name: str, max_batch: int, max_delay_us: int, instances: int) -> str:
    """config.pbtxt for ``manifest``; refuses decoders and graphs whose tensors lack one shared batch axis."""
    which = f"{manifest.name}/{manifest.variant}"
    if manifest.task == "generate":
        raise ValueError(f"{which} is a KV-cache decoder: its cache lives between calls, which Triton's stateless "
                         "dynamic batching cannot carry; serve it with `onnxforge serve`")  # fmt: skip
    if manifest.encoder_file:
        raise ValueError(f"{which} is an encoder-decoder ({manifest.task}): its decoder's self- and cross-attention "
                         "caches live between calls, and one Triton model holds one graph; serve it with "
                         "`onnxforge serve`")  # fmt: skip
    batch_axes = {t.shape[0] if t.shape else None for t in [*manifest.inputs, *manifest.outputs]}
    if len(batch_axes) != 1 or not isinstance(next(iter(batch_axes)), str):
        raise ValueError(f"{which}: its inputs and outputs do not share one dynamic leading batch axis, which "
                         "Triton's dynamic batching needs")  # fmt: skip
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', f"max_batch_size: {max_batch}",
             "input [", ",\n".join(_tensor(t) for t in manifest.inputs), "]",
             "output [", ",\n".join(_tensor(t) for t in manifest.outputs), "]",
             f"dynamic_batching {{ max_queue_delay_microseconds: {max_delay_us} }}",
             f"instance_group [ {{ kind: KIND_CPU, count: {instances} }} ]"]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_repository(artifact: str | os.PathLike[str], out: str | os.PathLike[str], max_batch: int = 32,
                     max_delay_us: int = 5000, instances: int = 1) -> Path:  # fmt: skip
    """Write (or replace) the model folder of ``artifact`` under the repository ``out``; returns the folder."""
    if max_batch < 1 or max_delay_us < 0 or instances < 1:
        raise ValueError("max_batch and instances must be >= 1, max_delay_us >= 0")
    source = Path(artifact)
    manifest = read_manifest(source)
    name = f"{manifest.name}-{manifest.variant}"
    config = config_text(manifest, name, max_batch, max_delay_us, instances)
    target = Path(out) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with staging(target) as stage:
        (stage / "1").mkdir()
        for file in manifest.files:
            where = stage / "1" if file.endswith(MODEL_SUFFIXES) else stage
            shutil.copy2(source / file, where / file)
        shutil.copy2(source / "manifest.json", stage / "manifest.json")
        (stage / "config.pbtxt").write_text(config)  # last: a folder with a config is a complete one
        return swap_in(stage, target)
