"""Segment reuse as clients ask for it: which token ranges of a prompt are segments.

Completions name them as token ranges (``segments: [[start, end], ...]``). Chat requests mark
messages (``cache_segment: true``), or ask for every message (``segment_reuse.auto``): a
message's tokens are found in the rendered prompt by encoding its content alone and searching
for those ids after the previous message's (where a chat template's markup merges with the
content's first or last token, the ids between them; a message not found is no segment).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from engine.segments.spec import MIN_SEGMENT_TOKENS, SegmentReuse
from router.backend import Tokenizer


def find_run(haystack: bytes, needle: Sequence[int], start: int) -> int:
    """Index of ``needle`` in the int64 ids packed as ``haystack``, at or after ``start``; -1 if absent."""
    pattern = array("q", needle).tobytes()
    pos = start * 8
    while (pos := haystack.find(pattern, pos)) >= 0:
        if pos % 8 == 0:
            return pos // 8
        pos += 1
    return -1


def message_spans(tokenizer: Tokenizer, ids: Sequence[int], contents: Sequence[str],
                  marked: Sequence[bool]) -> tuple[tuple[int, int], ...]:
    """[start, end) of each marked message's content in the prompt ``ids`` (messages in order)."""
    packed = array("q", ids).tobytes()
    spans, cursor = [], 0
    for text, wanted in zip(contents, marked):
        if len(text) < MIN_SEGMENT_TOKENS:  # fewer characters than the fewest tokens worth reusing
            continue
        own = tokenizer.encode(text, add_special_tokens=False)
        found = None
        for lo, hi in ((0, len(own)), (1, len(own)), (0, len(own) - 1), (1, len(own) - 1)):
            if hi - lo < MIN_SEGMENT_TOKENS:
                break
            at = find_run(packed, own[lo:hi], cursor)
            if at >= 0:
                found = (at, at + hi - lo)
                break
        if found is None:
            continue
        cursor = found[1]
        if wanted:
            spans.append(found)
    return tuple(spans)


def reuse_for(spans: Sequence[tuple[int, int]], recompute_ratio: float, anchor_offsets: bool,
              min_anchors: int) -> SegmentReuse | None:
    return SegmentReuse(tuple(spans), recompute_ratio, anchor_offsets, min_anchors) if spans else None
