"""Quality gates: a candidate artifact's task figures against its fp32 reference, on held-out real text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..progress import bar
from ..runtime.base import Loaded, Pipeline
from ..runtime.pipelines import PIPELINES
from .fidelity import embedding_fidelity


class GateError(RuntimeError):
    """A quantized candidate missed its quality gate; no artifact was written."""


@dataclass(frozen=True)
class Gate:
    """Minimum value of each named figure, e.g. ``{"mean_cosine": 0.99, "recall_at_10": 0.85}``."""

    minimums: dict[str, float] = field(default_factory=dict)

    def failures(self, figures: dict[str, float]) -> list[str]:
        unknown = sorted(set(self.minimums) - set(figures))
        if unknown:
            raise ValueError(f"gate names unknown figures {unknown}; this task reports {sorted(figures)}")
        return [f"{name} {figures[name]:.5f} < {low}" for name, low in self.minimums.items() if figures[name] < low]

    def tightened(self, margin: float) -> Gate:
        """Each minimum m < 1 moved ``margin`` of the way to 1: the search's gate, so that what passes on search
        text also passes on held-out text, where figures near a minimum land on either side of it."""
        return Gate({k: m + margin * (1 - m) if m < 1 else m for k, m in self.minimums.items()})

    def record(self, figures: dict[str, float], reference: str = "fp32") -> dict[str, object]:
        """The manifest's ``quality`` section: what was compared against, figures, gate and verdict."""
        return {"reference": reference, **figures, "gate": dict(self.minimums), "passed": not self.failures(figures)}


def _embeddings(loaded: Loaded, texts: list[str]) -> np.ndarray:
    embedder = PIPELINES["embed"](loaded)
    return np.concatenate([embedder.embed(texts[i : i + 256]) for i in bar(range(0, len(texts), 256), "gate")])


def _per_text(loaded: Loaded, texts: list[str], output: str = "logits") -> list[np.ndarray]:
    """One output of the graph per text, padding removed from per-token outputs."""
    encoder = loaded.text_encoder()
    encodings = encoder.encode(texts)
    found: list[np.ndarray] = [np.empty(0)] * len(texts)
    for index, (values,) in Pipeline(loaded).forward(encodings, encoder.pad_id, [output], 32):
        for row, value in zip(index, values):
            found[row] = value[: len(encodings[row].ids)] if values.ndim == 3 else value
    return found


def _agreement(name: str, join: Callable[[list[np.ndarray]], np.ndarray]) -> Callable[[list, list], dict[str, float]]:
    """Share of rows whose arg-max agrees, and the largest logit difference."""

    def compare(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict[str, float]:
        ref, cand = join(reference), join(candidate)
        return {"rows": len(ref), name: float((ref.argmax(-1) == cand.argmax(-1)).mean()),
                "max_logit_error": float(np.abs(ref - cand).max())}  # fmt: skip

    return compare


def _spans(loaded: Loaded, texts: list[str]) -> list[tuple[int, int]]:
    """Top answer span for (question, context) pairs made of neighbouring held-out sentences."""
    qa = PIPELINES["answer"](loaded)
    pairs = [(texts[i], f"{texts[i + 1]} {texts[i + 2]}") for i in range(0, min(len(texts) - 2, 300), 3)]
    return [(a["start"], a["end"]) for a in (qa.answer(q, c) for q, c in pairs)]


def _top5(loaded: Loaded, texts: list[str]) -> list[set[int]]:
    """Top-5 tokens for the middle word of each text (of 3+ words), masked."""
    filler = PIPELINES["fill-mask"](loaded)
    masked = []
    for words in (text.split() for text in texts):
        if len(words) >= 3:
            words[len(words) // 2] = filler.mask_token
            masked.append(" ".join(words))
    return [{x["token"] for x in row} for row in filler.fill(masked, top_k=5)]


PASSAGE_SENTENCES = 8  # neighbouring held-out sentences per teacher-forced passage
PASSAGES = 48  # at most; ~9,000 tokens of SmolLM2 text
PASSAGE_TOKENS = 256  # at most (and within the model's context)


def passages(generator: Any, texts: list[str], count: int) -> list[list[int]]:
    """Token ids of up to ``count`` passages of ``PASSAGE_SENTENCES`` neighbouring texts, each cut to
    ``PASSAGE_TOKENS`` and the model's context: what a decoder is gated and calibrated on."""
    limit = min(PASSAGE_TOKENS, generator.context)
    starts = range(0, min(len(texts), count * PASSAGE_SENTENCES), PASSAGE_SENTENCES)
    return [generator.tokenizer.encode(" ".join(texts[s : s + PASSAGE_SENTENCES])).ids[:limit] for s in starts]


def _next_tokens(loaded: Loaded, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per passage of held-out text: the predicted next token at each position and the log-probability given
    to the true next token (teacher forcing: the true text is fed, whatever the model would have said)."""
    generator = PIPELINES["generate"](loaded)
    found = []
    for ids in bar(passages(generator, texts, PASSAGES), "gate"):
        logits = generator.decoder.logits(ids)[:-1].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        found.append((log_probs.argmax(-1), log_probs[np.arange(len(ids) - 1), ids[1:]]))
    return found


def language_model(reference: list, candidate: list) -> dict[str, float]:
    """Top-1 next-token agreement with the reference, both perplexities, and their ratio (1 = no loss)."""
    agree = np.concatenate([r[0] == c[0] for r, c in zip(reference, candidate)])
    ppl_ref = float(np.exp(-np.concatenate([r[1] for r in reference]).mean()))
    ppl = float(np.exp(-np.concatenate([c[1] for c in candidate]).mean()))
    return {"tokens": int(agree.size), "next_token_agreement": float(agree.mean()), "perplexity_fp32": ppl_ref,
            "perplexity": ppl, "perplexity_retention": ppl_ref / ppl}  # fmt: skip


TRANSLATED_TEXTS = 128  # held-out texts a text2text candidate translates (greedy) for its gate
TRANSLATED_TOKENS = 64


def _translations(loaded: Loaded, texts: list[str]) -> list[tuple[list[int], str]]:
    """Greedy output (token ids, text) for each of the first ``TRANSLATED_TEXTS`` held-out texts."""
    pipeline = PIPELINES[loaded.manifest.task](loaded)
    sample = texts[:TRANSLATED_TEXTS]
    decoding = pipeline.decoding(max_new_tokens=TRANSLATED_TOKENS, num_beams=1)
    ids = pipeline.token_ids(sample, decoding)
    return [(tokens, pipeline.text_of(tokens)) for tokens in ids]


def token_agreement(reference: list[list[int]], candidate: list[list[int]]) -> float:
    """The share of positions where two systems' generated tokens agree, each output counted over the longer of the
    two (so a shorter or longer output costs its missing positions)."""
    matched = sum(sum(a == b for a, b in zip(r, c)) for r, c in zip(reference, candidate))
    return matched / sum(max(len(r), len(c), 1) for r, c in zip(reference, candidate))


def text2text_fidelity(reference: list, candidate: list) -> dict[str, float]:
    """chrF (sacrebleu) of the candidate's outputs against the reference's, the share of reference tokens the
    candidate reproduces position for position, and the share of outputs identical token for token."""
    from sacrebleu.metrics import CHRF

    chrf = CHRF().corpus_score([c[1] for c in candidate], [[r[1] for r in reference]]).score
    agreement = token_agreement([r[0] for r in reference], [c[0] for c in candidate])
    return {"outputs": len(reference), "chrf": float(chrf), "token_agreement": agreement,
            "exact_match": float(np.mean([r[0] == c[0] for r, c in zip(reference, candidate)]))}  # fmt: skip


@dataclass(frozen=True)
class Figures:
    """How a task's gate measures: its outputs on texts, and the figures comparing two such outputs."""

    outputs: Callable[[Loaded, list[str]], Any]
    compare: Callable[[Any, Any], dict[str, float]]
    names: tuple[str, ...]  # the figures a gate may set minimums for (``compare`` reports them)


TEXT2TEXT_FIGURES = Figures(_translations, text2text_fidelity, ("chrf", "token_agreement", "exact_match"))
FIGURES: dict[str, Figures] = {
    "embed": Figures(_embeddings, embedding_fidelity, ("mean_cosine", "min_cosine", "recall_at_10")),
    "classify": Figures(_per_text, _agreement("top1_agreement", np.stack), ("top1_agreement",)),
    "token-classify": Figures(_per_text, _agreement("token_agreement", np.concatenate), ("token_agreement",)),
    "answer": Figures(_spans, lambda r, c: {"pairs": len(r), "span_agreement": float(np.mean([a == b for a, b in zip(r, c)]))},
                      ("span_agreement",)),
    "generate": Figures(_next_tokens, language_model, ("next_token_agreement", "perplexity_retention")),
    "translate": TEXT2TEXT_FIGURES,
    "summarize": TEXT2TEXT_FIGURES,
    "fill-mask": Figures(_top5, lambda r, c: {"texts": len(r), "top5_overlap": float(np.mean([len(a & b) / 5 for a, b in zip(r, c)]))},
                         ("top5_overlap",)),
}  # fmt: skip


def check_gate(task: str, gate: Gate) -> None:
    """Refuse, before any work, a gate naming a figure the task does not report (a typo such as ``recal_at_10``)."""
    if task not in FIGURES:
        raise ValueError(f"no quality figures for task {task!r}; supported: {', '.join(sorted(FIGURES))}")
    if unknown := sorted(set(gate.minimums) - set(FIGURES[task].names)):
        raise ValueError(f"gate names unknown figures {unknown} for task {task!r}; it can gate on "
                         f"{', '.join(FIGURES[task].names)}")  # fmt: skip


def expected(task: str, reference: Loaded, texts: list[str]) -> Any:
    """The reference's outputs on ``texts``, to compare many candidates with (see :func:`measure`)."""
    if task not in FIGURES:
        raise ValueError(f"no quality figures for task {task!r}; supported: {', '.join(sorted(FIGURES))}")
    return FIGURES[task].outputs(reference, texts)


def measure(task: str, reference: Loaded, candidate: Loaded, texts: list[str], reference_outputs: Any = None) -> dict[str, float]:
    """The task's figures of ``candidate`` against ``reference`` on ``texts``."""
    wanted = expected(task, reference, texts) if reference_outputs is None else reference_outputs
    return {"texts": len(texts), **FIGURES[task].compare(wanted, FIGURES[task].outputs(candidate, texts))}
