"""`onnxforge triton-repo`: a Triton model folder from an artifact, consistent with the graph it carries."""

from __future__ import annotations

import dataclasses
import re

import onnxruntime as ort
import pytest

from onnxforge.artifact import read_manifest
from onnxforge.cli import main
from onnxforge.triton import TRITON_TYPES, config_text

ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64"}


def test_the_folder_matches_the_graph_and_loads_in_onnxruntime(tiny_artifact, tmp_path, capsys):
    assert main(["triton-repo", str(tiny_artifact), "-o", str(tmp_path / "repo"), "--max-batch", "16"]) == 0
    manifest = read_manifest(tiny_artifact)
    folder = tmp_path / "repo" / f"{manifest.name}-{manifest.variant}"
    assert str(folder) in capsys.readouterr().out
    config = (folder / "config.pbtxt").read_text()
    assert f'name: "{folder.name}"' in config and 'backend: "onnxruntime"' in config and "max_batch_size: 16" in config
    assert "dynamic_batching { max_queue_delay_microseconds: 5000 }" in config
    session = ort.InferenceSession(str(folder / "1" / manifest.model_file), providers=["CPUExecutionProvider"])
    declared = {m[0]: (m[1], m[2]) for m in re.findall(r'name: "([^"]+)", data_type: (\w+), dims: \[ ([^\]]*) \]', config)}
    for tensor in [*session.get_inputs(), *session.get_outputs()]:
        kind, dims = declared.pop(tensor.name)
        assert kind == TRITON_TYPES[ORT_TYPES[tensor.type]]
        assert dims.split(", ") == [str(d) if isinstance(d, int) else "-1" for d in tensor.shape[1:]]
    assert not declared, f"config names tensors the graph does not have: {declared}"
    assert (folder / "tokenizer.json").is_file() and (folder / "manifest.json").is_file()
    assert not list((tmp_path / "repo").glob(".*tmp-*")), "no half-written folder left behind"


def test_decoders_and_bad_settings_are_refused(tiny_artifact, tmp_path):
    manifest = read_manifest(tiny_artifact)
    with pytest.raises(ValueError, match="KV-cache decoder"):
        config_text(dataclasses.replace(manifest, task="generate"), "x", 8, 0, 1)
    fixed = dataclasses.replace(manifest, inputs=[dataclasses.replace(manifest.inputs[0], shape=[1, "sequence"])])
    with pytest.raises(ValueError, match="leading batch axis"):
        config_text(fixed, "x", 8, 0, 1)
    assert main(["triton-repo", str(tiny_artifact), "-o", str(tmp_path), "--max-batch", "0"]) != 0
    assert not any(tmp_path.iterdir())
