"""The build recipe: parsing, errors that name the problem, and --only selection."""

from __future__ import annotations

import pytest

from onnxforge.build import build, parse
from tests.conftest import ROOT


def _recipe(tmp_path, text):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_default_recipe_parses():
    keys = [v.key for v in parse(ROOT / "artifacts.toml")]
    assert keys == ["minilm-l6/fp32", "minilm-l6/int8", "minilm-l6/int8-fast", "minilm-l6/fp16",
                    "minilm-l6/web", "minilm-l6-student/fp32", "minilm-l6-student/int8",
                    "smollm2-135m/fp32", "smollm2-135m/int4", "smollm2-135m/int8"]  # fmt: skip


@pytest.mark.parametrize("text,message", [
    ('[m]\nsource="x"\ntask="embed"\ncolour="red"\n[m.variants.fp32]\n', r"\[m\] unknown keys \['colour'\]"),
    ('[m]\nsource="x"\ntask="embed"\n[m.variants.int8]\nmethod="int8"\n', r"needs a variants\.fp32 table"),
    ('[m]\nsource="x"\ntask="embed"\n[m.variants.fp32]\n[m.variants.q]\nmethod="int3"\n', "method 'int3'"),
    ('[m]\nsource="x"\ntask="poetry"\n[m.variants.fp32]\n', "unknown task 'poetry'"),
    ('[m]\nsource="x"\ntask="embed"\n[m.variants.fp32]\n[m.variants.q]\nmethod="int8"\nbits=3\n',
     r"unknown keys \['bits'\]"),
    ('[m]\nsource="x"\ntask="embed"\n[m.variants.fp32]\n[m.variants.q]\nmethod="int8"\ngate={recal_at_10=0.9}\n',
     r"unknown figures \['recal_at_10'\] for task 'embed'; it can gate on mean_cosine, min_cosine, recall_at_10"),
    ('[m]\nsource="x"\ntask="generate"\n[m.variants.fp32]\n[m.variants.q]\nmethod="int4"\ngate={mean_cosine=0.9}\n',
     r"unknown figures \['mean_cosine'\] for task 'generate'"),
])  # fmt: skip
def test_recipe_errors_name_the_problem(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        parse(_recipe(tmp_path, text))


def test_only_unknown_variant_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"no such variants \['minilm-l6/int4'\]"):
        build(ROOT / "artifacts.toml", tmp_path, only=["minilm-l6/int4"])


def test_only_builds_the_named_variant(tmp_path, tiny_source):
    recipe = _recipe(tmp_path, f'[tiny]\nsource="{tiny_source}"\ntask="embed"\n[tiny.variants.fp32]\n'
                               '[tiny.variants.int8]\nmethod="int8"\ngate={mean_cosine=0.5}\n')  # fmt: skip
    results = build(recipe, tmp_path / "out", only=["tiny/fp32"])
    assert [v.key for v, _, _ in results] == ["tiny/fp32"]
    assert not (tmp_path / "out" / "tiny" / "int8").exists()


def test_recipe_int8_keys_are_exactly_the_int8_config_fields():
    from dataclasses import fields

    from onnxforge.build import INT8_KEYS
    from onnxforge.quantization import Int8Config

    assert INT8_KEYS == {f.name for f in fields(Int8Config)}
