"""The runtime imports and runs where torch, transformers, optimum and onnx cannot be imported.

This blocks the imports inside a subprocess of the test environment; ``make test-runtime-env`` checks the
same in a venv where they are not installed at all (``pip install .`` with no extras).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "transformers", "optimum", "onnx", "onnxconverter_common", "sentence_transformers")

SCRIPT = textwrap.dedent("""
    import sys

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, Block())
    from onnxforge.runtime import load
    from onnxforge import cli
    embedder = load(sys.argv[1])
    vectors = embedder.embed(["hello world", "runtime without torch"])
    assert vectors.shape == (2, embedder.dim), vectors.shape
    cli.main(["inspect", sys.argv[1]])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok", vectors.shape)
""")


def test_runtime_runs_with_build_libraries_blocked(tiny_artifact):
    code = f"BLOCKED = {BLOCKED!r}\n{SCRIPT}"
    result = subprocess.run([sys.executable, "-c", code, str(tiny_artifact)], capture_output=True, text=True, check=False,
                            cwd=ROOT, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ok (2, 32)" in result.stdout


def test_build_command_without_build_extra_says_what_to_install(tmp_path):
    code = f"BLOCKED = {BLOCKED!r}\n" + SCRIPT.split("from onnxforge.runtime")[0] + textwrap.dedent("""
        from onnxforge import cli
        sys.exit(cli.main(["export", "some-model", "-o", sys.argv[1]]))
    """)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True, check=False,
                            cwd=ROOT, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert "pip install 'onnxforge[build]'" in result.stderr
