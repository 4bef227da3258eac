"""What a request asks of segment reuse, and the identity of a segment (no torch: the router
imports it).

A *segment* is a run of prompt tokens that other requests may hold too, under other prefixes:
a tool result, another agent's message, a retrieved document. Prefix caching misses it as soon
as anything before it differs; segment reuse fetches its KV as another request computed it,
re-rotates the keys to the new positions and corrects it (docs/segment_reuse.md).

A segment's hash covers its token ids and the tenant's salt, not its position or what precedes
it: the same text is the same segment wherever it sits. The model is implicit: each engine keeps
its own store, and a cluster (one model) its own index.
"""

from __future__ import annotations

import hashlib
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, fields

from engine.sampling_params import InvalidRequestError

SegmentKey = bytes
MIN_SEGMENT_TOKENS = 16  # one block: shorter spans are not worth a lookup
MAX_SEGMENTS = 256


def segment_hash(token_ids: Sequence[int], salt: bytes = b"") -> SegmentKey:
    """16-byte blake2b of a segment's token ids and salt, independent of its position."""
    h = hashlib.blake2b(b"tierserve-segment", digest_size=16)
    h.update(array("q", token_ids).tobytes())
    if salt:
        h.update(b"\x01salt")
        h.update(salt)
    return h.digest()


def context_hash(token_ids: Sequence[int], salt: bytes = b"") -> bytes:
    """Hash of everything before a segment: equal contexts give bit-equal segment KV."""
    h = hashlib.blake2b(b"tierserve-context", digest_size=16)
    h.update(array("q", token_ids).tobytes())
    h.update(salt)
    return h.digest()


@dataclass(frozen=True)
class SegmentReuse:
    """Segment reuse for one request (off unless a request carries one).

    spans: [start, end) token ranges of the prompt that are segments (sorted, disjoint; spans
        shorter than MIN_SEGMENT_TOKENS are ignored). A segment whose KV the engine holds is
        reused; one it lacks is computed and kept for the next request.
    recompute_ratio: share of each reused segment's leading tokens computed afresh, with full
        attention over the request's own context (EPIC); 1.0 recomputes everything: the exact
        path, identical to no reuse.
    anchor_offsets: correct the reused KV by the deviations observed under other prefixes
        (KVCOMM anchors), weighted by how close each one's recomputed tokens are to ours; False:
        the first observation, re-rotated.
    min_anchors: a segment is computed in full (and kept as one more anchor) until the engine
        holds this many observations of it; 1: reuse from the second occurrence on.
    """

    spans: tuple[tuple[int, int], ...] = ()
    recompute_ratio: float = 0.0
    anchor_offsets: bool = True
    min_anchors: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "spans", tuple((int(s), int(e)) for s, e in self.spans))

    def validate(self, num_prompt_tokens: int) -> None:
        if len(self.spans) > MAX_SEGMENTS:
            raise InvalidRequestError(f"at most {MAX_SEGMENTS} segments per request, got {len(self.spans)}")
        last = 0
        for start, end in self.spans:
            if not 0 <= start < end <= num_prompt_tokens:
                raise InvalidRequestError(f"segment [{start}, {end}) is not a token range of the "
                                          f"{num_prompt_tokens}-token prompt")
            if start < last:
                raise InvalidRequestError("segments must be sorted and must not overlap")
            last = end
        if not (0.0 <= self.recompute_ratio <= 1.0) or math.isnan(self.recompute_ratio):
            raise InvalidRequestError(f"recompute_ratio must be in [0, 1], got {self.recompute_ratio}")
        if not 1 <= self.min_anchors <= 64:
            raise InvalidRequestError(f"min_anchors must be in [1, 64], got {self.min_anchors}")

    def recomputed(self, length: int) -> int:
        """Leading tokens of a segment of ``length`` tokens computed afresh."""
        return min(length, math.ceil(self.recompute_ratio * length - 1e-9))

    def usable_spans(self) -> tuple[tuple[int, int], ...]:
        return tuple((s, e) for s, e in self.spans if e - s >= MIN_SEGMENT_TOKENS)


@dataclass(frozen=True)
class SegmentStats:
    """Counters since the engine started; ``reuse_rate``: reused prompt tokens over the prompt
    tokens of requests that asked for segment reuse."""

    requests: int = 0
    prompt_tokens: int = 0
    lookups: int = 0          # reusable segments looked up
    hits: int = 0             # segments filled from the store
    exact_hits: int = 0       # ... after the very same prefix (copied unchanged)
    reused_tokens: int = 0
    anchors_stored: int = 0
    stored_segments: int = 0
    stored_bytes: int = 0

    @property
    def reuse_rate(self) -> float:
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @classmethod
    def total(cls, parts: Sequence[SegmentStats]) -> SegmentStats:
        """The sum over several engines (a cluster's replicas)."""
        return cls(**{f.name: sum(getattr(p, f.name) for p in parts) for f in fields(cls)})
