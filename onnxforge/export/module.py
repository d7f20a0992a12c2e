"""Any ``torch.nn.Module`` (tensors in; a tensor, tuple or dict of tensors out) → a parity-checked artifact.

``export_module(module, example_inputs, out_dir, input_names=…, output_names=…, dynamic={name: {axis: label}})``
traces with torch.onnx (TorchScript exporter, dynamic axes), then checks the graph against the module on the
example inputs and on fresh inputs where every dynamic axis takes other sizes (1 and larger than traced).
The artifact's task is ``module``; the runtime's ``run(feeds)`` returns a dict of numpy arrays by output name.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..artifact import Manifest, publish, staging
from ..progress import step
from ..runtime.base import first_line
from ..runtime.session import SessionConfig, create_session
from ..versions import tool_versions
from .graph import signature
from .parity import ParityError, Tolerance

Dynamic = Mapping[str, Mapping[int, str]]


def _flatten(outputs: object, names: Sequence[str] | None) -> tuple[list[torch.Tensor], list[str]]:
    """A module's outputs as a list of tensors and their names (dict keys, or ``names``, or output_N)."""
    if isinstance(outputs, torch.Tensor):
        tensors = [outputs]
    elif isinstance(outputs, Mapping):
        names = names or list(outputs)
        tensors = [outputs[k] for k in outputs]
    elif isinstance(outputs, (tuple, list)):
        tensors = list(outputs)
    else:
        raise TypeError(f"the module must return a tensor, a tuple or a dict of tensors, not {type(outputs).__name__}")
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("every output of the module must be a tensor")
    names = list(names or [f"output_{i}" for i in range(len(tensors))])
    if len(names) != len(tensors):
        raise ValueError(f"{len(names)} output names for {len(tensors)} outputs")
    return tensors, names


def _resized(example: Sequence[torch.Tensor], names: Sequence[str], dynamic: Dynamic, sizes: dict[str, int],
             generator: torch.Generator) -> list[torch.Tensor]:  # fmt: skip
    """Fresh inputs like ``example`` with each dynamic axis at ``sizes[label]``: floats normal, ints in range."""
    fresh = []
    for name, tensor in zip(names, example):
        shape = list(tensor.shape)
        for axis, label in dynamic.get(name, {}).items():
            shape[axis] = sizes[label]
        if tensor.dtype.is_floating_point:
            fresh.append(torch.randn(shape, generator=generator, dtype=tensor.dtype))
        else:
            low, high = int(tensor.min()), int(tensor.max())
            fresh.append(torch.randint(low, high + 1, shape, generator=generator, dtype=tensor.dtype))
    return fresh


def _parity(module: torch.nn.Module, path: Path, cases: list[list[torch.Tensor]], input_names: list[str],
            output_names: list[str], tolerance: Tolerance) -> dict[str, object]:  # fmt: skip
    session = create_session(path, SessionConfig(providers="cpu"))
    worst, shapes = 0.0, []
    for inputs in cases:
        with torch.no_grad():
            expected, _ = _flatten(module(*inputs), output_names)
        try:
            got = session.run(output_names, {n: t.numpy() for n, t in zip(input_names, inputs)})
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are untyped; typically a baked-in shape
            shapes_now = [list(t.shape) for t in inputs]
            raise ParityError(f"{path.name}: the graph fails on input shapes {shapes_now} ({first_line(exc)[:300]}); "
                              "the module likely has a traced size baked in") from None  # fmt: skip
        for name, want, have in zip(output_names, expected, got):
            if tuple(want.shape) != have.shape:
                raise ParityError(f"{path.name}: output {name} has shape {have.shape}, PyTorch gives {tuple(want.shape)}")
            worst = max(worst, float(np.abs(want.numpy() - have).max(initial=0.0)))
        shapes.append([list(t.shape) for t in inputs])
    if worst > tolerance.max_abs:
        raise ParityError(f"{path.name}: outputs differ from PyTorch by {worst:.3g} > {tolerance.max_abs:g}")
    return {"reference": "pytorch", "cases": len(cases), "input_shapes": shapes, "max_abs_diff": worst,
            "tolerance_max_abs": tolerance.max_abs}  # fmt: skip


def export_module(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], out_dir: str | Path, *,
                  input_names: Sequence[str], output_names: Sequence[str] | None = None, dynamic: Dynamic | None = None,
                  name: str | None = None, opset: int = 18, tolerance: Tolerance | None = None) -> Manifest:  # fmt: skip
    """Export ``module`` as an artifact at ``out_dir`` whose task is ``module``; raises ParityError on a miss."""
    example = list(example_inputs)
    inputs = list(input_names)
    if len(inputs) != len(example) or not all(isinstance(t, torch.Tensor) for t in example):
        raise ValueError(f"example_inputs must be {len(inputs)} tensors, one per input name")
    dynamic = {k: dict(v) for k, v in (dynamic or {}).items()}
    unknown = sorted(set(dynamic) - set(inputs))
    if unknown:
        raise ValueError(f"dynamic names unknown inputs {unknown}; inputs are {inputs}")
    module = module.eval()
    with torch.no_grad():
        _, outputs = _flatten(module(*example), output_names)
    labels = {label: int(example[inputs.index(n)].shape[a]) for n, axes in dynamic.items() for a, label in axes.items()}
    generator = torch.Generator().manual_seed(0)
    cases = [example] + [_resized(example, inputs, dynamic, {k: size(v) for k, v in labels.items()}, generator)
                         for size in (lambda v: 1, lambda v: v + 3, lambda v: 2 * v + 1)]  # fmt: skip
    out = Path(out_dir)
    with staging(out) as stage, tempfile.TemporaryDirectory(prefix="onnxforge-module-"):
        with step(f"export {type(module).__name__} (opset {opset})"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, tuple(example), str(stage / "model.onnx"), input_names=inputs, output_names=outputs,
                dynamic_axes=dynamic, opset_version=opset, dynamo=False,
            )  # fmt: skip
        with step(f"parity vs PyTorch on {len(cases)} input shapes"):
            figures = _parity(module, stage / "model.onnx", cases, inputs, outputs, tolerance or Tolerance())
        graph_inputs, graph_outputs = signature(stage / "model.onnx")
        manifest = Manifest(
            name=name or out.parent.name, variant=out.name, task="module",
            source={"model": f"torch module {type(module).__module__}.{type(module).__qualname__}"},
            inputs=graph_inputs, outputs=graph_outputs, precision={"weights": "float32", "activations": "float32"},
            parity=figures, build=tool_versions(opset, None),
        )  # fmt: skip
        publish(stage, manifest, out)
    return manifest
