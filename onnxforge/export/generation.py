"""Generation settings of a ``generate`` artifact: context, end tokens, and the chat template compiled to role
prefixes/suffixes, as the runtime's :class:`~onnxforge.artifact.Preprocess` holds them."""

from __future__ import annotations

from pathlib import Path

from ..artifact import Preprocess
from ..sources import tokenizer_of
from . import longrope

MARKS = ("\u27e6system\u27e7", "\u27e6user\u27e7", "\u27e6assistant\u27e7")  # message texts no template contains
CONVERSATIONS = (
    ("user",), ("system", "user"), ("user", "assistant", "user"), ("system", "user", "assistant", "user", "assistant"),
)


def generation_settings(model_dir: Path) -> Preprocess:
    from transformers import AutoConfig, GenerationConfig

    tokenizer = tokenizer_of(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not context:
        raise ValueError(f"{model_dir}: the config gives no context length (max_position_embeddings / n_positions)")
    eos = id_set(config.eos_token_id)
    if (model_dir / "generation_config.json").is_file():
        eos |= id_set(GenerationConfig.from_pretrained(model_dir).eos_token_id)
    if not eos and tokenizer.eos_token_id is not None:  # the model's own setting wins over the tokenizer's
        eos.add(int(tokenizer.eos_token_id))
    return Preprocess(max_length=int(context), eos_token_ids=tuple(sorted(eos)),
                      bos_token_id=None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id),
                      chat=compile_chat_template(tokenizer) if tokenizer.chat_template else None,
                      refill_after=longrope.switch_length(config.to_dict()))  # fmt: skip


def id_set(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return {int(v) for v in (value if isinstance(value, (list, tuple)) else [value])}


def compile_chat_template(tokenizer) -> dict[str, object] | None:
    """The template as role prefixes/suffixes, or None when it is not of that shape (checked on CONVERSATIONS)."""
    from ..runtime.chat import render

    def jinja(roles: tuple[str, ...], prompt: bool = False) -> str:
        messages = [{"role": r, "content": MARKS[("system", "user", "assistant").index(r)]} for r in roles]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    try:
        system = jinja(("system",)).split(MARKS[0])
        user = jinja(("user",)).split(MARKS[1])
        both = jinja(("system", "user")).split(MARKS[0])[1].split(MARKS[1])
        turn = jinja(("user", "assistant")).split(MARKS[1])[1].split(MARKS[2])
        user_prefix = both[0].removeprefix(system[1])
        chat = {
            "default_system": user[0].removesuffix(user_prefix),
            "roles": {
                "system": system,
                "user": [user_prefix, user[1]],
                "assistant": [turn[0].removeprefix(user[1]), turn[1]],
            },
            "generation_prompt": jinja(("user",), True).removeprefix(jinja(("user",))),
        }
        for roles in CONVERSATIONS:
            messages = [{"role": r, "content": f"{r} {i}"} for i, r in enumerate(roles)]
            for prompt in (False, True):
                if render(chat, messages, prompt) != tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=prompt
                ):
                    return None
    except Exception:  # noqa: BLE001 - a template that raises on a probe is one we cannot compile
        return None
    return chat
