"""The runtime's beam search and decoding rules, step for step against transformers' own ``generate`` on a tiny
random BART in torch (no export: seconds, so mutation testing can run these for every mutant).

The step function recomputes the decoder over each kept row's whole target, so the runtime's search is checked
alone: which rows it keeps, which tokens it feeds, when hypotheses end and which one wins.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxforge.runtime.beam_search import BeamSettings, beam_search, log_softmax
from onnxforge.runtime.constraints import Constraints, banned_by_ngrams
from tests.decoding import cut_at_end

VOCAB, START, EOS, PAD = 48, 2, 2, 0
END_BIAS = 3.0


@pytest.fixture(scope="module")
def model():
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    config = BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                        pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS, decoder_start_token_id=START,
                        forced_bos_token_id=None, forced_eos_token_id=None, dropout=0.0, init_std=0.3)  # fmt: skip
    model = BartForConditionalGeneration(config).eval()
    with torch.no_grad():  # an end token likely enough that hypotheses end early, at different lengths
        model.final_logits_bias[0, EOS] = END_BIAS
    return model


INPUTS = np.array([[5, 9, 13, 7, 2], [11, 4, 2, 0, 0], [6, 6, 8, 21, 2]])


def _ours(model, beams: int, budget: int, settings: BeamSettings, rules: Constraints,
          searched: list[int] | None = None) -> list[list[int]]:  # fmt: skip
    """The runtime's search; ``searched`` gets the number of inputs each step runs for."""
    ids = torch.tensor(INPUTS)
    mask = (ids != PAD).long()
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    encoded, mask = encoded.repeat_interleave(beams, 0), mask.repeat_interleave(beams, 0)
    targets = [[START] for _ in range(len(encoded))]

    def logits_of(rows: list[list[int]]) -> np.ndarray:
        with torch.no_grad():
            out = model(encoder_outputs=(encoded,), attention_mask=mask, decoder_input_ids=torch.tensor(rows))
        return out.logits[:, -1].numpy()

    def step(rows: np.ndarray, tokens: np.ndarray, kept: np.ndarray | None) -> np.ndarray:
        nonlocal encoded, mask, targets
        assert len(rows) == beams * (len(encoded) // beams if kept is None else len(kept))
        if searched is not None:
            searched.append(len(rows) // beams)
        encoded, mask = encoded[torch.from_numpy(rows)], mask[torch.from_numpy(rows)]  # rows of the inputs kept
        targets = [targets[r] + [int(t)] for r, t in zip(rows, tokens)]
        return log_softmax(logits_of(targets))

    return beam_search(log_softmax(logits_of(targets)), step, START, frozenset({EOS}), budget, settings, rules)


def _theirs(model, beams: int, budget: int, **options) -> list[list[int]]:
    ids = torch.tensor(INPUTS)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=(ids != PAD).long(), num_beams=beams, do_sample=False,
                             max_new_tokens=budget, **options)  # fmt: skip
    return cut_at_end(out[:, 1:].tolist(), EOS)  # the start token dropped


@pytest.mark.parametrize(("beams", "budget", "length_penalty", "early_stopping", "inputs_leave"), [
    (4, 12, 1.0, False, True), (3, 10, 2.0, False, True), (4, 10, 0.5, True, True), (2, 12, 1.5, "never", False),
    (5, 6, 1.0, False, False),
])  # fmt: skip
def test_beam_search_gives_transformers_tokens(model, beams, budget, length_penalty, early_stopping, inputs_leave):
    """Step for step transformers' tokens; an input done before the others leaves the batch (``inputs_leave``:
    one does here), and its tokens are still transformers'."""
    settings = BeamSettings(beams, length_penalty, early_stopping)
    searched: list[int] = []
    ours = _ours(model, beams, budget, settings, Constraints(), searched)
    theirs = _theirs(model, beams, budget, length_penalty=length_penalty, early_stopping=early_stopping)
    assert ours == theirs
    lengths = {len(t) for t in theirs}
    assert min(lengths) < budget and len(lengths) > 1  # hypotheses end early, at different lengths
    assert (min(searched) < len(INPUTS)) == inputs_leave, searched


@pytest.mark.parametrize(("rules", "options"), [
    (Constraints(no_repeat_ngram_size=2), {"no_repeat_ngram_size": 2}),
    (Constraints(forced_bos_token_id=17), {"forced_bos_token_id": 17}),
    (Constraints(forced_eos_token_id=EOS), {"forced_eos_token_id": EOS}),
    (Constraints(suppressed=(EOS, 30)), {"suppress_tokens": [EOS, 30]}),
])  # fmt: skip
def test_each_rule_gives_transformers_tokens_under_beam_search(model, rules, options):
    ours = _ours(model, 3, 9, BeamSettings(3), rules)
    assert ours == _theirs(model, 3, 9, **options)
    if rules.forced_bos_token_id is not None:
        assert all(t[0] == 17 for t in ours)
    if rules.suppressed:
        assert all(len(t) == 9 and 30 not in t for t in ours)  # the end token suppressed: every output runs full


def test_rules_on_known_scores():
    sequences = np.array([[2, 5, 6, 5], [2, 7, 7, 7]])
    assert banned_by_ngrams(sequences[0], 2) == [6]  # 5 was followed by 6 once: "5 6" may not repeat
    assert banned_by_ngrams(sequences[1], 2) == [7, 7]
    assert banned_by_ngrams(sequences[0], 5) == []  # too short for a 5-gram
    scores = np.zeros((2, 10), np.float32)
    Constraints(no_repeat_ngram_size=2, suppressed=(9,)).apply(sequences, scores, max_length=10)
    assert np.isinf(scores[0, [6, 9]]).all() and np.isinf(scores[1, [7, 9]]).all()
    assert np.isfinite(np.delete(scores[0], [6, 9])).all()
    forced = Constraints(forced_bos_token_id=3, forced_eos_token_id=4)
    first = forced.apply(sequences[:, :1], np.zeros((2, 10), np.float32), max_length=5)
    assert (first.argmax(axis=1) == 3).all() and np.isinf(np.delete(first, 3, axis=1)).all()
    last = forced.apply(sequences, np.zeros((2, 10), np.float32), max_length=5)  # length 4 = max_length - 1
    assert (last.argmax(axis=1) == 4).all() and np.isinf(np.delete(last, 4, axis=1)).all()
    middle = forced.apply(sequences[:, :2], np.zeros((2, 10), np.float32), max_length=5)
    assert np.isfinite(middle).all()
