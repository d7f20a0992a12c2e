"""The GGUF → Hugging Face conversion cache: converted once per GGUF and converter, never reused across converters."""

from __future__ import annotations

from onnxforge.sources import gguf


def test_a_conversion_is_reused_only_by_the_same_converter(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXFORGE_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF not really")
    runs = []

    def convert(source, out):
        runs.append(out)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(gguf, "_convert", convert)
    monkeypatch.setattr(gguf, "converter_version", lambda: "old")
    first = gguf.converted(model)
    assert gguf.converted(model) == first and len(runs) == 1  # cached
    monkeypatch.setattr(gguf, "converter_version", lambda: "new")
    second = gguf.converted(model)
    assert second != first and len(runs) == 2 and (second / "config.json").is_file()
    model.write_bytes(b"GGUF, other weights")
    assert gguf.converted(model) not in (first, second) and len(runs) == 3


def test_the_converter_version_follows_the_code_and_the_libraries(monkeypatch):
    version = gguf.converter_version()
    assert len(version) == 8 and gguf.converter_version() == version
    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.0-other")
    assert gguf.converter_version() != version
