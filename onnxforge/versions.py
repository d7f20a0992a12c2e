"""Versions of the tools that made an artifact, for its manifest."""

from __future__ import annotations

import importlib.metadata

from . import __version__

TOOLS = ("torch", "transformers", "optimum-onnx", "onnx", "onnxruntime", "onnxconverter-common", "tokenizers")


def tool_versions(opset: int | None = None, recipe: str | None = None) -> dict[str, str | int]:
    """Installed versions of the build tools, plus the opset and recipe fingerprint when given."""
    found: dict[str, str | int] = {"onnxforge": __version__}
    for name in TOOLS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if opset is not None:
        found["opset"] = opset
    if recipe is not None:
        found["recipe"] = recipe
    return found
