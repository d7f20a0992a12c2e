"""Fast (``tokenizer.json``) versions of SentencePiece tokenizers that transformers converts only slowly or not at
all; the runtime reads ``tokenizer.json`` alone, so export converts such a tokenizer once, at build time.

Marian (OPUS-MT) ships ``source.spm``, ``target.spm`` and a ``vocab.json`` that numbers the pieces of both;
transformers has no fast Marian tokenizer. Its slow one splits a source text with ``source.spm`` and looks each
piece up in ``vocab.json`` (``<unk>`` if absent), then appends ``</s>``. The fast version is a Unigram model over
``vocab.json``'s tokens in id order, with ``source.spm``'s scores: pieces only the target side has get a score that
never beats a source segmentation, yet beats the unknown token (whose score is the lowest minus 10), as the slow
tokenizer finds a character the source model leaves unknown in ``vocab.json``. Tests compare the two on the corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NORMAL, USER_DEFINED = 1, 4  # sentencepiece piece types that text can produce
UNIGRAM = 1
UNREACHABLE = -1e9  # the score of a target-only piece: chosen only where nothing but the unknown token is left


def marian_fast(slow: Any) -> Any:
    """A ``PreTrainedTokenizerFast`` equal to the slow ``MarianTokenizer`` ``slow`` on source text."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import import_protobuf

    if slow.separate_vocabs:
        raise ValueError("a Marian tokenizer with separate source and target vocabularies has no single tokenizer.json")
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(Path(slow.spm_files[0]).read_bytes())
    if proto.trainer_spec.model_type != UNIGRAM:
        raise ValueError(f"{slow.spm_files[0]}: a Unigram sentencepiece model is expected for Marian")
    source = {p.piece: p.score for p in proto.pieces if p.type in (NORMAL, USER_DEFINED)}
    tokens = sorted(slow.encoder.items(), key=lambda item: item[1])
    if [i for _, i in tokens] != list(range(len(tokens))):
        raise ValueError(f"{slow.name_or_path}: vocab.json's ids are not 0..{len(tokens) - 1}")
    scores = [(t, source.get(t, UNREACHABLE)) for t, _ in tokens]
    fast = Tokenizer(Unigram(scores, unk_id=slow.encoder[slow.unk_token], byte_fallback=False))
    charsmap = proto.normalizer_spec.precompiled_charsmap
    fast.normalizer = normalizers.Sequence([*([normalizers.Precompiled(charsmap)] if charsmap else []),
                                            normalizers.Strip(left=False, right=True),
                                            normalizers.Replace(Regex(" {2,}"), "▁")])  # fmt: skip
    scheme = "always" if proto.normalizer_spec.add_dummy_prefix else "never"
    fast.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    fast.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    eos = str(slow.eos_token)
    fast.post_processor = TemplateProcessing(single=f"$A {eos}", pair=f"$A $B {eos}",
                                             special_tokens=[(eos, slow.encoder[eos])])  # fmt: skip
    fast.add_special_tokens([AddedToken(str(t), normalized=False, special=True) for t in slow.all_special_tokens])
    fast.add_tokens([AddedToken(code, normalized=False) for code in slow.supported_language_codes])
    return PreTrainedTokenizerFast(tokenizer_object=fast, eos_token=eos, unk_token=str(slow.unk_token),
                                   pad_token=str(slow.pad_token), model_max_length=slow.model_max_length,
                                   clean_up_tokenization_spaces=slow.clean_up_tokenization_spaces)  # fmt: skip


# slow tokenizer class → its converter, for tokenizers transformers cannot make fast
SLOW_CONVERTERS = {"MarianTokenizer": marian_fast}
