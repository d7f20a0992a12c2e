"""Builds killed with SIGKILL at each step, and concurrent builds of one artifact: nothing half-built validates.

The kill points are the build's own progress lines (``· step …`` on stderr), so each run dies in a known stage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from onnxforge.artifact import ArtifactError, Manifest, TensorSpec, publish, recover, staging, verify
from tests.util import siblings

STEPS = ["· export", "· fuse", "· parity"]


def _export_command(source: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "onnxforge", "export", str(source), "--task", "embed", "-o", str(out)]


def _kill_at(command: list[str], marker: str) -> None:
    """Run ``command`` and SIGKILL it as soon as ``marker`` appears on its stderr."""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in proc.stderr:
        if marker in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the build finished before reaching {marker!r}"


def _no_valid_artifact(out: Path) -> None:
    if out.exists():
        with pytest.raises(ArtifactError):
            verify(out)


@pytest.mark.parametrize("marker", STEPS)
def test_killed_export_leaves_nothing_valid_and_the_next_run_completes(tiny_source, tmp_path, marker):
    out = tmp_path / "tiny" / "fp32"
    _kill_at(_export_command(tiny_source, out), marker)
    _no_valid_artifact(out)
    subprocess.run(_export_command(tiny_source, out), check=True, capture_output=True, timeout=300)
    verify(out)
    assert siblings(out) == ["fp32"]  # the killed run's staging directory was cleared


def test_killed_rebuild_keeps_the_old_artifact(tiny_artifact, tiny_source, tmp_path):
    import shutil

    out = tmp_path / "tiny" / "fp32"
    shutil.copytree(tiny_artifact, out)
    before = verify(out).files
    _kill_at(_export_command(tiny_source, out), "· parity")
    assert verify(out).files == before


def _manifest() -> Manifest:
    spec = TensorSpec("x", "float32", [1])
    return Manifest(name="m", variant="v", task="embed", source={}, inputs=[spec], outputs=[spec])


def test_kill_between_the_two_renames_is_recovered(tmp_path):
    """The one window publish() has: old artifact moved aside, new one not yet in place."""
    final = tmp_path / "m" / "v"
    with staging(final) as stage:
        (stage / "model.onnx").write_bytes(b"old")
        publish(stage, _manifest(), final)
    os.replace(final, final.with_name(".v.old-deadbeef"))  # what a kill at that instant leaves
    (final.parent / ".v.tmp-dead").mkdir()  # and the new artifact, still staged
    recover(final)
    assert (final / "model.onnx").read_bytes() == b"old" and verify(final)
    assert siblings(final) == ["v"]


def test_concurrent_publishers_serialise(tmp_path):
    final = tmp_path / "m" / "v"
    errors: list[BaseException] = []

    def build(payload: bytes) -> None:
        try:
            for _ in range(20):
                with staging(final) as stage:
                    (stage / "model.onnx").write_bytes(payload)
                    publish(stage, _manifest(), final)
        except BaseException as exc:  # noqa: BLE001 - collected: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(bytes([i]) * 100,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert verify(final) and siblings(final) == ["v"]


def test_two_export_processes_at_once(tiny_source, tmp_path):
    out = tmp_path / "tiny" / "fp32"
    procs = [subprocess.Popen(_export_command(tiny_source, out), stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    verify(out)
    assert siblings(out) == ["fp32"]
