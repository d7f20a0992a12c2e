"""Quality-gate arithmetic on known values: verdicts, the search's tightened gate, and each task's figures."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from onnxforge.quantization.fidelity import embedding_fidelity, neighbours, recall_at_k
from onnxforge.quantization.gate import FIGURES, Gate, expected, passages, text2text_fidelity, token_agreement


def test_a_figure_at_its_minimum_passes_and_one_below_fails_with_both_numbers():
    gate = Gate({"mean_cosine": 0.99, "recall_at_10": 0.9})
    assert gate.failures({"mean_cosine": 0.99, "recall_at_10": 0.95, "texts": 10}) == []
    assert gate.failures({"mean_cosine": 0.98, "recall_at_10": 0.95}) == ["mean_cosine 0.98000 < 0.99"]
    record = gate.record({"mean_cosine": 0.98, "recall_at_10": 0.95})
    assert record == {"reference": "fp32", "mean_cosine": 0.98, "recall_at_10": 0.95,
                      "gate": {"mean_cosine": 0.99, "recall_at_10": 0.9}, "passed": False}  # fmt: skip
    assert gate.record({"mean_cosine": 1.0, "recall_at_10": 1.0})["passed"] is True
    assert Gate().failures({"anything": 0.0}) == [] and Gate().record({})["passed"] is True
    with pytest.raises(ValueError, match=r"unknown figures \['accuracy'\]; this task reports \['mean_cosine'\]"):
        Gate({"accuracy": 0.5}).failures({"mean_cosine": 1.0})


def test_the_search_gate_moves_each_minimum_toward_one():
    gate = Gate({"mean_cosine": 0.9, "recall_at_10": 0.8, "perplexity_retention": 1.0, "ratio": 1.5})
    assert gate.tightened(0.5).minimums == pytest.approx({"mean_cosine": 0.95, "recall_at_10": 0.9,
                                                          "perplexity_retention": 1.0, "ratio": 1.5})  # fmt: skip
    assert gate.tightened(0.0).minimums == gate.minimums


def test_language_model_figures_on_known_log_probabilities():
    # two passages: predicted tokens and the log-probability given to each true next token
    reference = [(np.array([1, 2, 3]), np.log([0.5, 0.5, 0.5])), (np.array([4]), np.log([0.25]))]
    candidate = [(np.array([1, 0, 3]), np.log([0.25, 0.5, 0.5])), (np.array([4]), np.log([0.25]))]
    figures = FIGURES["generate"].compare(reference, candidate)
    ppl_ref = math.exp(-np.mean(np.log([0.5, 0.5, 0.5, 0.25])))
    ppl = math.exp(-np.mean(np.log([0.25, 0.5, 0.5, 0.25])))
    assert figures == pytest.approx({"tokens": 4, "next_token_agreement": 0.75, "perplexity_fp32": ppl_ref,
                                     "perplexity": ppl, "perplexity_retention": ppl_ref / ppl})  # fmt: skip


def test_agreement_figures_on_known_logits():
    reference = [np.array([0.0, 2.0, 1.0]), np.array([3.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])]
    candidate = [np.array([0.0, 1.5, 1.0]), np.array([0.0, 0.5, 0.0]), np.array([0.0, 0.2, 1.0])]
    figures = FIGURES["classify"].compare(reference, candidate)
    assert figures == pytest.approx({"rows": 3, "top1_agreement": 2 / 3, "max_logit_error": 3.0})
    tokens = FIGURES["token-classify"].compare([np.eye(3)[:2], np.eye(3)[2:]], [np.eye(3)[[0, 2]], np.eye(3)[2:]])
    assert tokens == pytest.approx({"rows": 3, "token_agreement": 2 / 3, "max_logit_error": 1.0})


def test_span_and_top5_figures_on_known_outputs():
    spans = FIGURES["answer"].compare([(0, 4), (5, 9), (2, 3)], [(0, 4), (5, 8), (2, 3)])
    assert spans == pytest.approx({"pairs": 3, "span_agreement": 2 / 3})
    top5 = FIGURES["fill-mask"].compare([{1, 2, 3, 4, 5}, {1, 2, 3, 4, 5}], [{1, 2, 3, 4, 5}, {1, 2, 6, 7, 8}])
    assert top5 == pytest.approx({"texts": 2, "top5_overlap": (1 + 2 / 5) / 2})


def _on_circle(degrees: list[float]) -> np.ndarray:
    angles = np.radians(degrees)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def test_recall_on_known_neighbours():
    """Five directions; moving the third from 30° to 4° changes four of the five nearest neighbours."""
    reference, candidate = _on_circle([0, 10, 30, 100, 180]), _on_circle([0, 10, 4, 100, 180])
    assert neighbours(reference, 1).ravel().tolist() == [1, 0, 1, 2, 3]  # each row's nearest other row
    assert neighbours(candidate, 1).ravel().tolist() == [2, 2, 0, 4, 3]  # 100°: 180° is 80° away, 10° is 90°
    assert recall_at_k(reference, candidate, k=1) == pytest.approx(1 / 5)
    # k = 2, reference / candidate: {1,2}/{2,1}, {0,2}/{2,0}, {1,0}/{0,1}, {2,4}/{4,1}, {3,2}/{3,1}: 8 of 10 found
    assert recall_at_k(reference, candidate, k=2) == pytest.approx(8 / 10)
    assert recall_at_k(reference, 3 * reference, k=2) == 1.0  # scale does not move a cosine neighbour
    figures = embedding_fidelity(reference, candidate, k=1)
    assert figures["min_cosine"] == pytest.approx(np.cos(np.radians(26)))
    assert figures["mean_cosine"] == pytest.approx((4 + np.cos(np.radians(26))) / 5)
    with pytest.raises(ValueError, match="recall@5 needs more than 5 items, got 5"):
        recall_at_k(reference, candidate, k=5)


def test_token_agreement_counts_each_output_over_the_longer_of_the_two():
    assert token_agreement([[1, 2, 3], [4, 5]], [[1, 2, 4], [4, 5, 6, 7]]) == pytest.approx(4 / 7)
    assert token_agreement([[1, 2, 3, 4]], [[1, 2]]) == pytest.approx(2 / 4)  # a short output misses its positions
    assert token_agreement([[9, 1, 2]], [[1, 2, 9]]) == 0.0  # position for position, not as a set


def test_text2text_figures_on_known_outputs():
    """chrF (character n-grams up to 6, β = 2) computed by hand: precision and recall averaged over the n-gram orders
    both texts have, then F with β² = 4. The candidate is the hypothesis, scored against the reference, so a candidate
    that drops a character (recall lost) scores lower than one that adds it."""
    def chrf(reference: str, candidate: str) -> float:
        return text2text_fidelity([([1], reference)], [([1], candidate)])["chrf"]

    def f(precisions: list[float], recalls: list[float]) -> float:
        p, r = np.mean(precisions), np.mean(recalls)
        return 100 * 5 * p * r / (4 * p + r)

    # 1-, 2-, 3-grams exist in both; longer ones in neither, so the averages are over three orders
    assert chrf("abc", "abd") == pytest.approx(f([2 / 3, 1 / 2, 0], [2 / 3, 1 / 2, 0]), abs=1e-6)
    assert chrf("abcd", "abc") == pytest.approx(f([1, 1, 1], [3 / 4, 2 / 3, 1 / 2]), abs=1e-6)
    assert chrf("abc", "abcd") == pytest.approx(f([3 / 4, 2 / 3, 1 / 2], [1, 1, 1]), abs=1e-6)
    figures = text2text_fidelity([([1, 2, 3], "ein Haus"), ([4, 5], "ja")], [([1, 2, 3], "ein Haus"), ([4, 6], "nein")])
    assert (figures["outputs"], figures["token_agreement"], figures["exact_match"]) == (2, pytest.approx(4 / 5), 0.5)
    assert text2text_fidelity([([1], "ein Haus")], [([1], "ein Haus")])["chrf"] == pytest.approx(100)


def test_passages_group_neighbouring_texts_and_respect_the_context():
    tokenizer = SimpleNamespace(encode=lambda text: SimpleNamespace(ids=[len(word) for word in text.split()]))
    generator = SimpleNamespace(tokenizer=tokenizer, context=5)
    texts = [f"w{'x' * i}" for i in range(20)]  # one word each: ids are the word lengths
    found = passages(generator, texts, 2)
    assert found == [[1, 2, 3, 4, 5], [9, 10, 11, 12, 13]]  # 8 sentences a passage, cut to the context of 5
    assert len(passages(generator, texts, 10)) == 3  # 20 texts make 3 passages at most
    wide = SimpleNamespace(tokenizer=tokenizer, context=10_000)
    assert [len(p) for p in passages(wide, texts, 3)] == [8, 8, 4]


def test_a_task_without_figures_is_an_error():
    with pytest.raises(ValueError, match="no quality figures for task 'module'"):
        expected("module", None, ["x"])
