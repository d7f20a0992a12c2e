"""Next-token choice on known logits: each setting against the distribution it must draw from, computed here."""

from __future__ import annotations

import numpy as np
import pytest

from onnxforge.runtime.sampling import Sampling

LOGITS = np.array([0.0, 5.0, 4.9, -1.0], dtype=np.float32)
DRAWS = 4000


def _frequencies(sampling: Sampling, logits: np.ndarray, previous: list[int] | None = None) -> np.ndarray:
    pick = sampling.picker()
    counts = np.bincount([pick(logits, previous or []) for _ in range(DRAWS)], minlength=logits.size)
    return counts / DRAWS


def _softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max())
    return e / e.sum()


def test_greedy_takes_the_argmax_and_leaves_the_logits_alone():
    logits = LOGITS.copy()
    assert Sampling().picker()(logits, [1]) == 1
    assert Sampling(repetition_penalty=1.5).picker()(logits, [1]) == 2  # 5 / 1.5 < 4.9
    np.testing.assert_array_equal(logits, LOGITS)  # the caller's logits are not penalised in place


def test_repetition_penalty_divides_positive_scores_and_multiplies_negative_ones():
    logits = np.array([-1.0, -0.6, -3.0], dtype=np.float32)
    assert Sampling().picker()(logits, []) == 1
    assert Sampling(repetition_penalty=2.0).picker()(logits, [1, 1]) == 0  # -0.6 x 2 = -1.2 < -1
    assert Sampling(repetition_penalty=2.0).picker()(logits, [2]) == 1  # only the seen token changes
    assert Sampling(repetition_penalty=2.0).picker()(logits, []) == 1  # nothing seen: nothing penalised
    rewarded = np.array([1.0, 0.8], dtype=np.float32)
    assert Sampling(repetition_penalty=0.5).picker()(rewarded, [1]) == 1  # below 1 a penalty rewards: 0.8 / 0.5


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_draws_from_the_softmax_of_the_scaled_logits(temperature):
    expected = _softmax(LOGITS.astype(np.float64) / temperature)
    found = _frequencies(Sampling(temperature=temperature, seed=0), LOGITS)
    np.testing.assert_allclose(found, expected, atol=0.03)


def test_top_k_keeps_the_k_best_in_their_proportions():
    logits = np.array([1.0, 3.0, 2.0, 2.5, -1.0], dtype=np.float32)
    found = _frequencies(Sampling(temperature=1.0, top_k=2, seed=1), logits)
    expected = np.zeros(5)
    expected[[1, 3]] = _softmax(logits[[1, 3]].astype(np.float64))
    np.testing.assert_allclose(found, expected, atol=0.03)
    every = _frequencies(Sampling(temperature=1.0, top_k=5, seed=1), logits)  # k = vocabulary: nothing removed
    np.testing.assert_allclose(every, _softmax(logits.astype(np.float64)), atol=0.03)


def test_top_p_keeps_the_smallest_prefix_that_reaches_p():
    logits = np.log(np.array([0.2, 0.5, 0.3], dtype=np.float64)).astype(np.float32)
    kept = _frequencies(Sampling(temperature=1.0, top_p=0.8, seed=2), logits)
    np.testing.assert_allclose(kept, [0.0, 0.625, 0.375], atol=0.03)  # 0.5 + 0.3 reaches 0.8, renormalised
    assert set(np.flatnonzero(_frequencies(Sampling(temperature=1.0, top_p=0.5, seed=2), logits))) == {1}
    whole = _frequencies(Sampling(temperature=1.0, top_p=1.0, seed=2), logits)
    np.testing.assert_allclose(whole, [0.2, 0.5, 0.3], atol=0.03)


def test_a_seed_fixes_the_draws_and_each_picker_has_its_own_stream():
    sampling = Sampling(temperature=1.0, seed=7)
    first, second = sampling.picker(), sampling.picker()
    a = [first(LOGITS, []) for _ in range(50)]
    assert a == [second(LOGITS, []) for _ in range(50)]
    assert a != [Sampling(temperature=1.0, seed=8).picker()(LOGITS, []) for _ in range(50)]


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"temperature": -0.1}, "temperature"), ({"temperature": float("inf")}, "temperature"),
        ({"temperature": float("nan")}, "temperature"), ({"temperature": True}, "temperature"),
        ({"temperature": "1"}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_k": True}, "top_k"),
        ({"top_k": 2.0}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.01}, "top_p"),
        ({"top_p": float("nan")}, "top_p"), ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty"), ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"), ({"seed": 1.0}, "seed"),
    ],
)  # fmt: skip
def test_settings_out_of_range_are_refused_with_their_name(settings, words):
    with pytest.raises(ValueError, match=words):
        Sampling(**settings)


def test_settings_on_their_edges_are_accepted():
    for settings in ({"temperature": 0}, {"top_k": 1}, {"top_p": 1.0}, {"top_p": 1e-9}, {"seed": 0},
                     {"repetition_penalty": 1e-3}):  # fmt: skip
        Sampling(**settings)


def test_top_k_finds_the_kth_best_in_a_long_unsorted_vocabulary():
    logits = np.array([0.3, 2.0, -1.0, 1.5, 0.9, 2.2, -0.5, 1.9, 0.0, 1.0], dtype=np.float32)
    found = _frequencies(Sampling(temperature=1.0, top_k=3, seed=3), logits)
    expected = np.zeros(10)
    expected[[5, 1, 7]] = _softmax(logits[[5, 1, 7]].astype(np.float64))
    np.testing.assert_allclose(found, expected, atol=0.03)


def test_large_logits_do_not_overflow():
    logits = np.array([1000.0, 999.0, 0.0], dtype=np.float32)
    found = _frequencies(Sampling(temperature=1.0, seed=4), logits)
    np.testing.assert_allclose(found, _softmax(logits.astype(np.float64)), atol=0.03)
