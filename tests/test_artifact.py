"""The artifact format: atomic publish, verification on load, and errors that name the file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from onnxforge.artifact import (
    FORMAT,
    MANIFEST,
    ArtifactError,
    Manifest,
    Preprocess,
    TensorSpec,
    publish,
    read_manifest,
    staging,
    verify,
)  # fmt: skip
from tests.util import siblings


def _manifest() -> Manifest:
    spec = TensorSpec("input_ids", "int64", ["batch", "sequence"])
    return Manifest(name="m", variant="fp32", task="embed", source={"model": "x"}, inputs=[spec], outputs=[spec],
                    preprocess=Preprocess(max_length=128, pad_token_id=0, eos_token_ids=(2, 7)))  # fmt: skip


def _publish(tmp_path, files=None):
    final = tmp_path / "m" / "fp32"
    with staging(final) as stage:
        for name, data in (files or {"model.onnx": b"graph-bytes", "tokenizer.json": b"{}"}).items():
            (stage / name).write_bytes(data)
        publish(stage, _manifest(), final)
    return final


def test_publish_hashes_every_file_and_round_trips(tmp_path):
    final = _publish(tmp_path)
    manifest = verify(final)
    assert set(manifest.files) == {"model.onnx", "tokenizer.json"}
    assert manifest.files["model.onnx"].bytes == len(b"graph-bytes")
    assert manifest.format == FORMAT and manifest.inputs[0].shape == ["batch", "sequence"]
    assert manifest.preprocess == _manifest().preprocess  # the typed contract survives JSON (tuples included)
    assert siblings(final) == ["fp32"]  # no staging directory left behind


def test_the_preprocess_contract_refuses_unknown_fields_when_written_and_when_read(tmp_path):
    with pytest.raises(TypeError, match="max_lenght"):
        Preprocess(max_lenght=128)  # a misspelt field fails where the exporter writes it
    final = _publish(tmp_path)
    data = json.loads((final / MANIFEST).read_text())
    data["preprocess"]["pad_id"] = data["preprocess"].pop("pad_token_id")
    (final / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="malformed manifest.*pad_id"):
        read_manifest(final)


def test_published_directory_is_not_private(tmp_path):
    mode = stat.S_IMODE(_publish(tmp_path).stat().st_mode)
    assert mode == 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_build_leaves_nothing(tmp_path):
    final = tmp_path / "m" / "fp32"
    with pytest.raises(RuntimeError, match="boom"), staging(final) as stage:
        (stage / "model.onnx").write_bytes(b"half")
        raise RuntimeError("boom")
    assert not final.exists() and siblings(final) == []


def test_republish_replaces_old_artifact(tmp_path):
    _publish(tmp_path)
    final = _publish(tmp_path, {"model.onnx": b"new graph"})
    assert verify(final).files["model.onnx"].bytes == len(b"new graph")
    assert not (final / "tokenizer.json").exists()
    assert siblings(final) == ["fp32"]


def test_altered_file_is_refused_by_name(tmp_path):
    final = _publish(tmp_path)
    (final / "model.onnx").write_bytes(b"graph-byteX")  # same size, other content
    with pytest.raises(ArtifactError, match=r"model\.onnx: sha256 does not match"):
        verify(final)


def test_truncated_file_is_refused_by_name(tmp_path):
    final = _publish(tmp_path)
    (final / "tokenizer.json").write_bytes(b"{")
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: 1 bytes, manifest says 2"):
        verify(final)


def test_missing_file_is_refused_by_name(tmp_path):
    final = _publish(tmp_path)
    (final / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match=r"tokenizer\.json: missing"):
        verify(final)


def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="no such artifact directory"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(ArtifactError, match=r"manifest\.json: missing"):
        read_manifest(tmp_path)


def _edit_manifest(final, change):
    data = json.loads((final / MANIFEST).read_text())
    change(data)
    (final / MANIFEST).write_text(json.dumps(data))


def test_unknown_format_version_is_refused(tmp_path):
    final = _publish(tmp_path)
    _edit_manifest(final, lambda d: d.update(format="onnxforge-artifact/99"))
    with pytest.raises(ArtifactError, match="unknown artifact format 'onnxforge-artifact/99'"):
        read_manifest(final)


@pytest.mark.parametrize("name", ["../escape.onnx", "/etc/passwd", "sub/../../x"])
def test_manifest_paths_may_not_leave_the_directory(tmp_path, name):
    final = _publish(tmp_path)
    _edit_manifest(final, lambda d: d["files"].update({name: {"sha256": "0" * 64, "bytes": 1}}))
    with pytest.raises(ArtifactError, match="outside the artifact"):
        verify(final)


def test_symlinked_file_is_refused(tmp_path):
    final = _publish(tmp_path)
    outside = tmp_path / "outside.json"
    outside.write_bytes(b"{}")
    (final / "tokenizer.json").unlink()
    (final / "tokenizer.json").symlink_to(outside)
    with pytest.raises(ArtifactError, match="symbolic link"):
        verify(final)


def test_malformed_manifest_is_an_artifact_error(tmp_path):
    final = _publish(tmp_path)
    (final / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_manifest(final)
    (final / MANIFEST).write_text(json.dumps({"format": FORMAT, "name": "m"}))
    with pytest.raises(ArtifactError, match="malformed manifest"):
        read_manifest(final)


def test_recover_puts_the_newest_aside_copy_back_and_clears_the_rest(tmp_path):
    """A build killed between its two renames left no artifact, two aside copies and a half-built directory."""
    import shutil

    from onnxforge.artifact import recover

    shutil.copytree(_publish(tmp_path), tmp_path / "first")
    final = _publish(tmp_path, {"model.onnx": b"newer graph"})
    older, newer = final.with_name(".fp32.old-bbbb"), final.with_name(".fp32.old-aaaa")
    final.rename(newer)
    (tmp_path / "first").rename(older)
    os.utime(older, (1, 1))  # the older copy is older by its time, whatever its name sorts as
    (tmp_path / "m" / ".fp32.tmp-half").mkdir()
    recover(final)
    assert verify(final).files["model.onnx"].bytes == len(b"newer graph")
    assert siblings(final) == ["fp32"]
    recover(final)  # nothing left to do: the artifact stays
    assert (final / "model.onnx").read_bytes() == b"newer graph"


def test_manifest_round_trips_its_outputs_and_names_a_missing_one(tmp_path):
    final = _publish(tmp_path)
    manifest = read_manifest(final)
    assert manifest.output("input_ids") == TensorSpec("input_ids", "int64", ["batch", "sequence"])
    assert manifest.outputs == _manifest().outputs
    with pytest.raises(ArtifactError, match=r"artifact m/fp32 has no output 'logits'"):
        manifest.output("logits")


def test_refusals_name_what_is_wrong(tmp_path):
    final = _publish(tmp_path)
    (final / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match=r"manifest\.json: manifest is not a JSON object"):
        read_manifest(final)
    with pytest.raises(ArtifactError, match=r"the staged artifact has no model\.onnx"), staging(tmp_path / "n") as stage:
        publish(stage, _manifest(), tmp_path / "n")
