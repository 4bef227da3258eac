"""Incremental detokenization with stop strings, one request at a time.

Byte-level tokens can end inside a UTF-8 character, so new text is only released once
the decoded tail no longer ends in a replacement character. Text that could still turn
into a stop string is held back until it cannot.
"""

from __future__ import annotations

from engine.tokenizer import AnyTokenizer

_WINDOW = 6  # tokens of left context re-decoded with each new token


class IncrementalDetokenizer:
    def __init__(self, tokenizer: AnyTokenizer, stop: tuple[str, ...], prompt_tail: list[int]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.ids: list[int] = list(prompt_tail[-_WINDOW:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""        # all output text decoded so far (stop string excluded once hit)
        self.emitted = 0      # characters of ``text`` already handed out
        self.stopped = False

    def add(self, token_id: int) -> None:
        """Decode one more token, checking for stop strings."""
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return
        new = full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self._append(new)

    def _append(self, new: str) -> None:
        start = max(0, len(self.text) - self.hold)
        self.text += new
        hits = [pos for pos in (self.text.find(s, start) for s in self.stop) if pos != -1]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True

    def take(self, final: bool) -> str:
        """Text not yet handed out, holding back a possible stop-string prefix unless final."""
        end = len(self.text) if (final or self.stopped) else max(self.emitted, len(self.text) - self.hold)
        out = self.text[self.emitted:end]
        self.emitted = end
        return out
