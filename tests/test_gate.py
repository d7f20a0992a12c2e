"""Quality-gate arithmetic on known values: verdicts, the search's tightened gate, and each task's figures."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from onnxforge.quantization.gate import FIGURES, Gate, expected, passages


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
