"""The CLI is a thin layer: it prints tables and JSON, and turns errors into one clear line."""

from __future__ import annotations

import json

from onnxforge.cli import main


def test_inspect_prints_the_manifest(tiny_artifact, capsys):
    assert main(["inspect", str(tiny_artifact)]) == 0
    out = capsys.readouterr().out
    assert "tiny-bert/fp32" in out and "output sentence_embedding" in out and "parity.min_cosine" in out


def test_embed_json_lines(tiny_artifact, capsys):
    assert main(["embed", str(tiny_artifact), "first text", "second", "--json", "--providers", "cpu"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == ["first text", "second"]
    assert all(len(line["embedding"]) == 32 for line in lines)


def test_errors_are_one_line_with_exit_code(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 1
    assert "onnxforge: error:" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path), "-o", str(tmp_path / "q"), "--gate", "cosine"]) == 1
    assert "onnxforge: error:" in capsys.readouterr().err
