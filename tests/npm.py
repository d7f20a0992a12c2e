"""npm projects the tests drive (examples/node, tests/js): copied into .cache with their packages from npm, once.

ESM resolves packages beside the script, so each project's files and its node_modules sit together in .cache.
Skips (with the reason) where node or npm is missing or the registry cannot be reached.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT


def project(source: Path, name: str, files: tuple[str, ...], marker: str) -> Path:
    """``files`` of ``source`` in .cache/``name`` beside their installed packages; ``marker``: a package whose
    folder shows the install is done. Returns that folder."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip(f"node and npm are not on this machine: {source.relative_to(ROOT)} is not run")
    target = ROOT / ".cache" / name
    target.mkdir(parents=True, exist_ok=True)
    for file in ("package.json", *files):
        shutil.copy2(source / file, target / file)
    if not (target / "node_modules" / marker).is_dir():
        done = subprocess.run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=target,
                              capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        if done.returncode:
            pytest.skip(f"npm install failed (npm registry unreachable?): {done.stderr.strip().splitlines()[-1:]}")
    return target
