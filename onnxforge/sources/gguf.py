"""GGUF → a cached Hugging Face directory (fp32 PyTorch weights, tokenizer, chat template), converted once.

transformers de-quantizes the GGUF's tensors into a normal PyTorch model (``gguf_file=``; needs ``gguf`` and
``accelerate``). The tokenizer keeps the GGUF's own ``add_bos_token`` setting, which transformers' conversion drops
(SmolLM2's says False: its chat template writes every special token itself) and its end-of-sequence token.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ..artifact import sha256_file


def cache_root() -> Path:
    """``$ONNXFORGE_CACHE`` or ``~/.cache/onnxforge``."""
    return Path(os.environ.get("ONNXFORGE_CACHE") or Path.home() / ".cache" / "onnxforge")


def converter_version() -> str:
    """What a conversion depends on besides the GGUF: this module's code and the transformers and gguf versions.
    Part of the cache key, so that a conversion made by other code is never reused."""
    from importlib.metadata import version

    stamp = Path(__file__).read_bytes() + f"transformers {version('transformers')} gguf {version('gguf')}".encode()
    return hashlib.sha256(stamp).hexdigest()[:8]


def converted(gguf: Path, digest: str | None = None) -> Path:
    """The Hugging Face directory for ``gguf``, converting it on first use (into a temp dir, then renamed)."""
    digest = digest or sha256_file(gguf)
    target = cache_root() / "gguf" / f"{gguf.stem}-{digest[:16]}-{converter_version()}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        _convert(gguf, work)
        try:
            work.rename(target)
        except OSError:  # another process converted it meanwhile
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    reader = GGUFReader(gguf)
    fields = reader.fields

    if (add_bos := _number(fields, "tokenizer.ggml.add_bos_token")) is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(add_bos)
    for name in ("bos", "eos"):
        if (token_id := _number(fields, f"tokenizer.ggml.{name}_token_id")) is not None:
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    for key, setting in rotary_settings(reader, model.config).items():
        setattr(model.config, key, setting)
    model.save_pretrained(out)
    # tokenizer.json only: a slow tokenizer's vocabulary file here is the GGUF itself, which save_pretrained would
    # copy as tokenizer.model (98 MB into every SmolLM2 artifact) wherever sentencepiece is installed
    tokenizer.save_pretrained(out, legacy_format=False)


def _number(fields: dict, key: str) -> int | None:
    """A GGUF metadata field's integer value, or None where the file has no such field."""
    return int(fields[key].parts[fields[key].data[0]][0]) if key in fields else None


def rotary_settings(reader, config) -> dict[str, object]:
    """What a GGUF says of its rotary embedding that transformers' conversion (its ``config``) drops (its Phi-3
    mapping reads neither): a rotary dimension below the head's (partial rotary: Phi-4-mini's 0.75), and LongRoPE's per-dimension
    short and long factors, which llama.cpp stores as the tensors rope_factors_short / rope_factors_long."""
    import numpy as np

    fields = reader.fields
    name = fields["general.architecture"]
    architecture = bytes(name.parts[name.data[0]]).decode()

    found: dict[str, object] = {}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads  # GPT-2: n_embd
    rotary = _number(fields, f"{architecture}.rope.dimension_count")
    if rotary and rotary < head_dim and getattr(config, "partial_rotary_factor", 1.0) * head_dim != rotary:
        found["partial_rotary_factor"] = rotary / head_dim
    factors = {t.name: np.asarray(t.data, np.float64).tolist() for t in reader.tensors if t.name.startswith("rope_factors_")}
    if {"rope_factors_long.weight", "rope_factors_short.weight"} <= factors.keys():
        found["rope_scaling"] = {"type": "longrope", "long_factor": factors["rope_factors_long.weight"],
                                 "short_factor": factors["rope_factors_short.weight"]}  # fmt: skip
        if (original := _number(fields, f"{architecture}.rope.scaling.original_context_length")) is not None:
            found["original_max_position_embeddings"] = original
    return found
