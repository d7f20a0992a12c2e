"""ORT format for mobile and minimal onnxruntime builds: an artifact's graph saved as ``model.ort`` (onnxruntime's
flatbuffer format, optimizations applied) with ``required_operators.config``, the operator list a minimal
onnxruntime build is compiled with (``build.sh --minimal_build --include_ops_by_config``).

The artifact keeps ``model.onnx`` beside it (plain onnxruntime and Optimum read that); ``manifest.model_file`` names
``model.ort``, which the runtime then loads. The two must give the same outputs on held-out text before the
artifact is republished (atomically, as every artifact), and the largest difference is recorded. Needs ``build``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import corpus
from .artifact import Manifest, copy_files, publish, staging, verify
from .progress import step

ORT_MODEL, OPERATORS = "model.ort", "required_operators.config"
TOLERANCE = 1e-4  # largest |difference| between the .ort and the .onnx outputs


def to_ort_format(directory: str | Path) -> Manifest:
    """Add the ORT-format graph and its operator config to the artifact at ``directory`` and make it the model file."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
    from onnxruntime.tools.ort_format_model import create_config_from_models

    root = Path(directory)
    manifest = verify(root)
    source = root / manifest.model_file
    with staging(root) as stage, tempfile.TemporaryDirectory(prefix="onnxforge-ort-") as tmp:
        copy_files(root, stage)
        with step(f"ORT format of {manifest.name}/{manifest.variant}"):
            shutil.copy2(source, Path(tmp) / "model.onnx")
            convert_onnx_models_to_ort(Path(tmp), Path(tmp) / "out", [OptimizationStyle.Fixed])
            shutil.copy2(Path(tmp) / "out" / ORT_MODEL, stage / ORT_MODEL)
            create_config_from_models([stage / ORT_MODEL], stage / OPERATORS, enable_type_reduction=False)
            lines = (stage / OPERATORS).read_text().splitlines()  # the staging path it names → the file's own name
            (stage / OPERATORS).write_text("\n".join(f"# - {ORT_MODEL}" if line.startswith("# - ") else line
                                                     for line in lines) + "\n")  # fmt: skip
        difference = _largest_difference(root, stage / ORT_MODEL)
        if difference > TOLERANCE:
            raise RuntimeError(f"{root}: the ORT-format graph differs from model.onnx by {difference:.2e} "
                               f"(> {TOLERANCE}); no artifact was changed")  # fmt: skip
        converted = replace(manifest, model_file=ORT_MODEL, files={},
                            graph={**manifest.graph, "format": "ort", "operators_config": OPERATORS,
                                   "ort_vs_onnx_max_abs_diff": difference})  # fmt: skip
        publish(stage, converted, root)
    return converted


def _largest_difference(root: Path, ort_file: Path) -> float:
    """Both graphs on the same feeds: held-out sentences, batched as the runtime batches them (teacher-forced
    passages for decoders)."""
    from .quantization.calibration import text_feeds
    from .runtime import open_artifact
    from .runtime.session import SessionConfig, create_session

    loaded = open_artifact(root, providers="cpu", verify_files=False)  # to_ort_format has just verified it
    ort_session = create_session(ort_file, SessionConfig(providers="cpu"))
    largest = 0.0
    for feeds in text_feeds(loaded, corpus.split(corpus.load()).evaluation[:16]):
        for x, y in zip(loaded.session.run(None, feeds), ort_session.run(None, feeds)):
            largest = max(largest, float(np.abs(x - y).max()))
    return largest
