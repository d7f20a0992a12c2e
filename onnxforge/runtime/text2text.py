"""Translation and summarization over a text2text (encoder-decoder) artifact: one pipeline, named by the task.

``translate(texts)`` / ``summarize(texts)`` encode each batch of texts once, then decode greedily, by sampling or
by beam search; one text with ``num_beams=1`` can be streamed. The model's generation defaults (its
generation_config: beams, length penalty, no-repeat n-grams) apply to whatever the call leaves out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from ..artifact import ArtifactError
from .base import Loaded, Pipeline
from .beam_search import BeamSettings, beam_search, ending, log_softmax
from .constraints import Constraints
from .generate import Request
from .seq2seq import Seq2Seq
from .streaming import TextStream
from .text import check_batch_size, check_positive, check_texts, decode_text, length_sorted_batches, pad_batch

DEFAULT_NEW_TOKENS = 128
EARLY_STOPPING = (True, False, "never")


@dataclass(frozen=True)
class Decoding:
    """One call's checked settings: the token budget, beams and their scoring, sampling and n-gram rule."""

    request: Request
    beams: BeamSettings
    no_repeat_ngram_size: int
    first_token: int | None = None  # forced first token (a target language's), instead of the model's own

    @classmethod
    def check(cls, defaults: dict, max_new_tokens: object = None, num_beams: object = None, length_penalty: object = None,
              no_repeat_ngram_size: object = None, early_stopping: object = None, **sampling: object) -> Decoding:  # fmt: skip
        """Arguments left as None take the model's defaults; every value is checked before any compute."""
        pick = lambda value, name, fallback: defaults.get(name, fallback) if value is None else value
        request = Request.check(pick(max_new_tokens, "max_new_tokens", DEFAULT_NEW_TOKENS), None, **sampling)
        beams = check_positive("num_beams", pick(num_beams, "num_beams", 1))
        penalty = pick(length_penalty, "length_penalty", 1.0)
        ngrams, early = pick(no_repeat_ngram_size, "no_repeat_ngram_size", 0), pick(early_stopping, "early_stopping", False)
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not np.isfinite(penalty):
            raise ValueError(f"length_penalty must be a finite number, got {penalty!r}")
        if isinstance(ngrams, bool) or not isinstance(ngrams, int) or ngrams < 0:
            raise ValueError(f"no_repeat_ngram_size must be a non-negative integer (0: off), got {ngrams!r}")
        if early not in EARLY_STOPPING or isinstance(early, int) and not isinstance(early, bool):
            raise ValueError(f"early_stopping must be True, False or 'never', got {early!r}")
        if beams > 1 and request.sampling.temperature > 0:
            raise ValueError("sampling (temperature > 0) and beam search (num_beams > 1) do not combine; pick one")
        if beams > 1 and request.sampling.repetition_penalty is not None:
            raise ValueError("repetition_penalty applies to num_beams=1; beam search takes no_repeat_ngram_size")
        return cls(request, BeamSettings(beams, float(penalty), early), ngrams)


class Text2Text(Pipeline):
    """``translate(texts)`` (or ``summarize``) → str for a str, list of str for a list; ``stream=True`` (one text,
    ``num_beams=1``) → iterator of text pieces. Sources longer than ``preprocess.max_length`` tokens are truncated.
    Calls may run from several threads at once (no state is kept between them).
    """

    task = "translate"

    def __init__(self, loaded: Loaded) -> None:
        super().__init__(loaded)
        if loaded.encoder is None:
            raise ArtifactError(f"{loaded.directory}: a {loaded.manifest.task} artifact needs manifest.encoder_file")
        pre = loaded.manifest.preprocess
        if pre.decoder_start_token_id is None or not pre.eos_token_ids:
            raise ArtifactError(f"{loaded.directory}: manifest lacks decoder_start_token_id / eos_token_ids; re-export it")
        self.model = Seq2Seq(loaded.encoder, loaded.session, loaded.step)
        self.encoder = loaded.text_encoder()
        self.start = pre.decoder_start_token_id
        self.eos = frozenset(pre.eos_token_ids)
        self.ends = np.array(sorted(self.eos), dtype=np.int64)
        self.target_length = pre.target_length
        self.defaults = dict(pre.generation or {})
        self.clean_up = pre.clean_up_tokenization_spaces
        self.rules = Constraints(0, pre.forced_bos_token_id, pre.forced_eos_token_id, pre.suppressed_token_ids)
        self.languages = dict(pre.languages or {})

    def translate(self, texts: str | list[str], max_new_tokens: int | None = None, num_beams: int | None = None,
                  length_penalty: float | None = None, no_repeat_ngram_size: int | None = None,
                  early_stopping: bool | str | None = None, temperature: float = 0.0, top_k: int | None = None,
                  top_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
                  target_language: str | None = None, batch_size: int = 16,
                  stream: bool = False) -> str | list[str] | Iterator[str]:  # fmt: skip
        decoding = self.decoding(max_new_tokens, num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                                 no_repeat_ngram_size=no_repeat_ngram_size, temperature=temperature, top_k=top_k,
                                 top_p=top_p, repetition_penalty=repetition_penalty, seed=seed,
                                 target_language=target_language)  # fmt: skip
        items = check_texts(texts)
        batch_size = check_batch_size(batch_size)
        if stream:
            if not isinstance(texts, str):
                raise ValueError("stream=True takes one text (a str), not a list")
            if decoding.beams.num_beams > 1:
                raise ValueError("stream=True needs num_beams=1: beam search knows its output only at the end")
            return self._stream(items[0], decoding)
        outputs = [self.text_of(ids) for ids in self.token_ids(items, decoding, batch_size)]
        return outputs[0] if isinstance(texts, str) else outputs

    summarize = translate

    def decoding(self, max_new_tokens: int | None = None, num_beams: int | None = None,
                 target_language: str | None = None, **settings: object) -> Decoding:  # fmt: skip
        """Checked settings for :meth:`token_ids`, the model's defaults filling what is not given;
        ``target_language``: one of the model's language tokens (mBART-50's "de_DE"), forced as the first token."""
        decoding = Decoding.check(self.defaults, max_new_tokens, num_beams, **settings)
        return decoding if target_language is None else replace(decoding, first_token=self._language(target_language))

    def _language(self, name: object) -> int:
        if not self.languages:
            raise ValueError(f"target_language={name!r}, but this model has no language tokens (mBART-50 has them)")
        if not isinstance(name, str) or name not in self.languages:
            raise ValueError(f"unknown target_language {name!r}; this model's languages: {', '.join(self.languages)}")
        return self.languages[name]

    def text_of(self, ids: list[int]) -> str:
        """The text of generated ``ids``, without surrounding whitespace (as Marian's own tokenizer gives it)."""
        return decode_text(self.encoder.tokenizer, ids, self.clean_up).strip()

    def token_ids(self, texts: list[str], decoding: Decoding, batch_size: int = 16) -> list[list[int]]:
        """The generated token ids per text (end token excluded), in input order."""
        encodings = self.encoder.encode(texts) if texts else []
        result: list[list[int]] = [[] for _ in texts]
        # full batches whatever the padding: each decoder step reads every weight once for the whole batch, so rows
        # are nearly free there, while padding costs only the encoder and cross-attention over the longer source
        for index in length_sorted_batches([len(e.ids) for e in encodings], batch_size, max_padding=np.inf):
            feeds = pad_batch([encodings[i] for i in index], self.encoder.pad_id, ["input_ids", "attention_mask"])
            for row, ids in zip(index, self._decode_batch(feeds["input_ids"], feeds["attention_mask"], decoding)):
                result[row] = ids
        return result

    def _budget(self, decoding: Decoding) -> int:
        budget = decoding.request.max_new_tokens
        return budget if self.target_length is None else min(budget, self.target_length - 1)

    def _constraints(self, decoding: Decoding) -> Constraints:
        first = self.rules.forced_bos_token_id if decoding.first_token is None else decoding.first_token
        return replace(self.rules, no_repeat_ngram_size=decoding.no_repeat_ngram_size, forced_bos_token_id=first)

    def _decode_batch(self, ids: np.ndarray, mask: np.ndarray, decoding: Decoding) -> list[list[int]]:
        hidden = self.model.encode(ids, mask)
        budget, beams = self._budget(decoding), decoding.beams.num_beams
        if beams == 1:
            out: list[list[int]] = [[] for _ in ids]
            for row, token in self._sampled(hidden, mask, decoding, budget):
                out[row].append(token)
            return out
        if budget == 0:
            return [[] for _ in ids]
        # the first step once per input, its logits and caches then copied to each of the input's beams
        logits, caches = self.model.start(hidden, mask, np.full((len(hidden), 1), self.start, dtype=np.int64))
        logits, caches = np.repeat(logits, beams, axis=0), self.model.beams(caches, beams)

        def step(rows: np.ndarray, tokens: np.ndarray, kept: np.ndarray | None) -> np.ndarray:
            if kept is not None:
                self.model.keep_sources(caches, kept, beams)
            return self.model.step(caches, tokens, log_probs=True, reorder=rows)

        return beam_search(log_softmax(logits), step, self.start, self.eos, budget, decoding.beams, self._constraints(decoding))

    def _sampled(self, hidden: np.ndarray, mask: np.ndarray, decoding: Decoding, budget: int) -> Iterator[tuple[int, int]]:
        """(row, token) as each row's next token is picked (greedy or sampled); finished rows leave the batch."""
        if budget == 0:
            return
        rules, sampling = self._constraints(decoding), decoding.request.sampling
        pickers = [sampling.picker() for _ in range(len(hidden))]  # one random stream per text, as if alone
        alive = np.arange(len(hidden))
        sequences = np.full((len(hidden), 1), self.start, dtype=np.int64)
        logits, caches = self.model.start(hidden, mask, sequences)
        for length in range(1, budget + 1):
            scores = rules.apply(sequences, logits.astype(np.float32, copy=False), budget + 1)  # a step's own array
            # the repetition penalty counts the whole target so far, start token included, as transformers does
            tokens = np.array([pickers[row](scores[i], sequences[i]) for i, row in enumerate(alive)], dtype=np.int64)
            going = ~ending(tokens, self.ends)
            for row, token in zip(alive[going], tokens[going]):
                yield int(row), int(token)
            if length == budget or not going.any():
                return
            if not going.all():
                caches = caches.select(np.flatnonzero(going))
            alive, sequences = alive[going], np.concatenate([sequences[going], tokens[going, None]], axis=1)
            logits = self.model.step(caches, tokens[going])

    def _stream(self, text: str, decoding: Decoding) -> Iterator[str]:
        encoding = self.encoder.encode([text])
        feeds = pad_batch(encoding, self.encoder.pad_id, ["input_ids", "attention_mask"])
        hidden = self.model.encode(feeds["input_ids"], feeds["attention_mask"])
        stream, held, started = TextStream(self.encoder.tokenizer), "", False
        for _, token in self._sampled(hidden, feeds["attention_mask"], decoding, self._budget(decoding)):
            text = held + stream.push(token)
            text = text if started else text.lstrip()  # as text_of: no whitespace before the first character
            body = text.rstrip()  # whitespace waits for the text after it, and is dropped at the end
            held, started = text[len(body) :], started or bool(body)
            if body:
                yield body
        if body := (held + stream.flush()).rstrip() if started else stream.flush().strip():
            yield body


class Summarizer(Text2Text):
    """The same pipeline for a model made to summarize (its artifact's task is "summarize")."""

    task = "summarize"
