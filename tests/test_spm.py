"""SentencePiece tokenizers become the tokenizer.json the runtime reads, once, at export: Marian's (source.spm,
target.spm, vocab.json; transformers has no fast version) by onnxforge.sources.spm, T5's spiece.model by
transformers' own converter. Both must give the slow tokenizer's ids."""

from __future__ import annotations

import pytest

from onnxforge import corpus
from onnxforge.sources import tokenizer_of
from tests.tiny_models import TARGET_ONLY, make_seq2seq, marian_spm_tokenizer

EDGE_TEXTS = ["", "  two  spaces  inside ", "a </s> inside", "price: 5€ or 6Ω", "zqxv zqxv", "Ünïcödé ﬁ ligature",
              "tab\tand\nnewline", "ends with a space "]  # fmt: skip


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("opus-mt")
    marian_spm_tokenizer(directory).save_pretrained(directory)
    return directory


def _texts() -> list[str]:
    return corpus.split(corpus.load()).evaluation + EDGE_TEXTS


def _same_up_to_ties(found: list[list[int]], wanted: list[list[int]]) -> None:
    """Equal ids, except where two segmentations score exactly the same (the same pieces in another order, e.g.
    "-" "-------" "-" against "-" "-" "-------"): sentencepiece and tokenizers break such ties differently."""
    differ = [i for i, (f, w) in enumerate(zip(found, wanted)) if f != w]
    assert all(sorted(found[i]) == sorted(wanted[i]) for i in differ), [(found[i], wanted[i]) for i in differ]
    assert len(differ) <= len(wanted) // 200, f"{len(differ)} of {len(wanted)} texts differ"


def test_marian_spm_becomes_a_fast_tokenizer_with_the_slow_ids(marian_dir):
    from transformers import MarianTokenizer

    slow = MarianTokenizer.from_pretrained(marian_dir)
    fast = tokenizer_of(marian_dir)
    assert fast.is_fast and not (marian_dir / "tokenizer.json").exists()
    texts = _texts()
    wanted = slow(texts).input_ids
    _same_up_to_ties(fast(texts).input_ids, wanted)
    assert any(slow.convert_tokens_to_ids(t) in ids for t in TARGET_ONLY for ids in wanted)  # target-only pieces seen
    for ids in wanted[-len(EDGE_TEXTS) :] + wanted[:50]:
        assert fast.decode(ids, skip_special_tokens=True) == slow.decode(ids, skip_special_tokens=True)


def test_t5_spiece_model_becomes_a_fast_tokenizer_with_the_slow_ids(marian_dir, tmp_path):
    from transformers import T5Tokenizer

    slow = T5Tokenizer(str(marian_dir / "source.spm"), extra_ids=8, legacy=False)
    slow.save_pretrained(tmp_path)
    assert not (tmp_path / "tokenizer.json").exists()
    fast = tokenizer_of(tmp_path)
    assert fast.is_fast
    _same_up_to_ties(fast(_texts()).input_ids, slow(_texts()).input_ids)


def test_an_opus_mt_directory_exports_and_translates_as_transformers_does(marian_dir, tmp_path):
    """A Marian model with only source.spm / target.spm / vocab.json exports (tokenizer.json written once) and
    its artifact's translations equal transformers' generate + decode with the slow tokenizer."""
    import torch
    from transformers import MarianMTModel, MarianTokenizer

    from onnxforge.export import export
    from onnxforge.runtime import load

    source = make_seq2seq(tmp_path / "source", "marian", tokenizer=MarianTokenizer.from_pretrained(marian_dir))
    assert not (source / "tokenizer.json").exists()
    export(source, tmp_path / "fp32", "translate", name="opus-mt-tiny")
    assert (tmp_path / "fp32" / "tokenizer.json").is_file()
    texts = corpus.split(corpus.load()).evaluation[:8] + ["price: 5€ or 6Ω"]
    slow, model = MarianTokenizer.from_pretrained(source), MarianMTModel.from_pretrained(source).eval()
    with torch.no_grad():
        out = model.generate(**slow(texts, return_tensors="pt", padding=True), max_new_tokens=24, num_beams=4)
    wanted = slow.batch_decode(out, skip_special_tokens=True)
    assert load(tmp_path / "fp32", providers="cpu").translate(texts, max_new_tokens=24, num_beams=4) == wanted
