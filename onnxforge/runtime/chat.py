"""Chat prompts without Jinja: the model's chat template, compiled at export into per-role text around each message.

The manifest's ``preprocess.chat`` holds ``default_system`` (text put first when no system message is given),
``roles`` (role → [prefix, suffix]) and ``generation_prompt``. Export only writes it after checking that it
reproduces the Jinja template exactly on several conversations (``onnxforge.export.generation``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def check_messages(messages: object, roles: Sequence[str]) -> list[tuple[str, str]]:
    """``[{"role": ..., "content": ...}, ...]`` → [(role, content)], or an error naming the bad message."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise TypeError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
            raise TypeError(f"messages[{index}] must be a dict with a str 'content', got {message!r}")
        role = message.get("role")
        if role not in roles:
            raise ValueError(f"messages[{index}] has role {role!r}; this model's chat template knows {list(roles)}")
        checked.append((role, message["content"]))
    return checked


def render(chat: Mapping, messages: object, add_generation_prompt: bool = True) -> str:
    """The prompt text for ``messages`` (special tokens written as text, to be encoded without adding more)."""
    roles = chat["roles"]
    pairs = check_messages(messages, list(roles))
    parts = [] if pairs[0][0] == "system" else [chat["default_system"]]
    for role, content in pairs:
        prefix, suffix = roles[role]
        parts += [prefix, content, suffix]
    if add_generation_prompt:
        parts.append(chat["generation_prompt"])
    return "".join(parts)
