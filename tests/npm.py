"""npm projects the tests and the web bench drive (examples/node, tests/js), and the web example's server.

ESM resolves packages beside the script, so each project's files and its node_modules sit together in .cache,
installed from npm once. :func:`project` skips (with the reason) where node or npm is missing or the registry cannot
be reached; :func:`install` (the bench's) raises.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# tests/js (transformers.js, which brings onnxruntime-web; puppeteer-core) in .cache/js-tests: install's arguments
JS_TESTS = (ROOT / "tests" / "js", "js-tests", ("pipeline.mjs", "browser.mjs"), "puppeteer-core")


def install(source: Path, name: str, files: tuple[str, ...], marker: str) -> Path:
    """``files`` of ``source`` in .cache/``name`` beside their installed packages; ``marker``: a package whose
    folder shows the install is done. Returns that folder; raises CalledProcessError if npm fails."""
    target = ROOT / ".cache" / name
    target.mkdir(parents=True, exist_ok=True)
    for file in ("package.json", *files):
        shutil.copy2(source / file, target / file)
    if not (target / "node_modules" / marker).is_dir():
        subprocess.run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=target,
                       capture_output=True, text=True, timeout=600, check=True)  # fmt: skip
    return target


def project(source: Path, name: str, files: tuple[str, ...], marker: str) -> Path:
    """:func:`install`, skipping the test where node and npm are missing or npm fails."""
    import pytest

    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip(f"node and npm are not on this machine: {source.relative_to(ROOT)} is not run")
    try:
        return install(source, name, files, marker)
    except subprocess.CalledProcessError as failed:
        pytest.skip(f"npm install failed (npm registry unreachable?): {failed.stderr.strip().splitlines()[-1:]}")


@contextlib.contextmanager
def web_page(artifact: Path, modules: Path, sentences: Path | None = None) -> Iterator[str]:
    """examples/web/serve.py serving ``artifact`` from a thread on a free loopback port; yields the page's URL."""
    spec = importlib.util.spec_from_file_location("web_serve", ROOT / "examples" / "web" / "serve.py")
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    httpd = serve.server(artifact, modules, sentences or serve.SENTENCES)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()


def node_json(script: Path, task: str, artifact: Path, texts: list[str]) -> dict:
    """What ``node script task artifact texts…`` prints (JSON); fails the test with node's stderr if it fails."""
    done = subprocess.run(["node", str(script), task, str(artifact), *texts], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)
