import pytest

from onnxforge import corpus


def test_shipped_corpus_is_large_and_splits_without_overlap():
    sentences = corpus.load()
    split = corpus.split(sentences)
    assert len(sentences) >= 2000
    assert len(split.evaluation) >= 1000 and len(split.calibration) >= 1000
    assert not set(split.evaluation) & set(split.calibration)
    assert len(split.evaluation) + len(split.calibration) == len(sentences)


def test_split_depends_on_the_sentence_not_its_position():
    sentences = corpus.load()[:200]
    assert corpus.split(sentences[::-1]).evaluation == corpus.split(sentences).evaluation[::-1]


def test_user_file_comments_blanks_and_duplicates(tmp_path):
    file = tmp_path / "mine.txt"
    file.write_text("# my corpus\nFirst line.\n\nSecond line.\nFirst line.\n", encoding="utf-8")
    assert corpus.load(file) == ["First line.", "Second line."]


def test_empty_user_file_is_an_error(tmp_path):
    file = tmp_path / "empty.txt"
    file.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no text lines"):
        corpus.load(file)
