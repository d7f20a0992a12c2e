"""Token ids → text pieces as they come: whole characters only, stop strings cut and never half-shown."""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer


def check_stop(stop: object) -> tuple[str, ...]:
    """None, a str or a list of non-empty str → tuple of stop strings."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
        raise TypeError(f"stop must be None, a non-empty str or a list of non-empty str, got {stop!r}")
    return tuple(items)


class TextStream:
    """Decodes the growing list of generated ids and hands out only text that is final.

    Text is held back while the last token ends inside a multi-byte character (the decoder shows U+FFFD then) and
    while the tail could still be the start of a stop string; a completed stop string ends the stream before it.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.shown = 0  # characters of the decoded text already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """Add one token; returns the text that became final (possibly '')."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        for stop in self.stop:
            at = text.find(stop, max(0, self.shown - len(stop)))
            if at != -1:
                self.stopped = True
                return self._take(text, at)
        return self._take(text, len(text) - self._held(text))

    def flush(self) -> str:
        """At the end of generation: whatever is still held back (a partial stop string is plain text then)."""
        if self.stopped:
            return ""
        return self._take(self.tokenizer.decode(self.ids, skip_special_tokens=True), None)

    def _held(self, text: str) -> int:
        """Length of the longest tail of ``text`` that begins some stop string."""
        longest = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text) - self.shown), longest, -1):
                if stop.startswith(text[-size:]):
                    longest = size
                    break
        return longest

    def _take(self, text: str, end: int | None) -> str:
        end = len(text) if end is None else end
        piece = text[self.shown : end] if end > self.shown else ""
        self.shown = max(self.shown, end)
        return piece
