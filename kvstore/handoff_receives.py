"""Receives waiting on a peer, by request digest (kvstore.handoff).

Whoever holds a pair reads the next header; if it belongs to another receive that is
waiting (or shows up within a grace period), that receive is served with it. So a
receive left over from a transfer its sender gave up (or whose call came late) can never
take the next request's header and shift every later transfer on the pair by one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import torch

from kvstore.block_codec import checked_blocks
from kvstore.handoff_header import HandoffHeader, RequestRef


@dataclass(eq=False)
class Receive:
    """One ``recv`` call: where the blocks go, or why they cannot (``local``), and its outcome."""

    request: RequestRef
    kv: torch.Tensor
    ids: torch.Tensor | None
    expected: HandoffHeader | None
    local: Exception | None  # the cache or the ids are unusable: the sender is still answered
    _outcome: int | BaseException | None = None
    _done: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def of(cls, kv: torch.Tensor, block_ids: Sequence[int] | torch.Tensor, request_id: str,
           layers_per_chunk: int) -> Receive:
        request = RequestRef.of(request_id)
        try:
            layout, ids = checked_blocks(kv, block_ids)
        except Exception as exc:  # noqa: BLE001 — reported to the sender, then raised to the caller
            return cls(request, kv, None, None, exc)
        return cls(request, kv, ids, HandoffHeader.of(request_id, ids.numel(), layout, layers_per_chunk), None)

    def problem(self, header: HandoffHeader) -> str | None:
        """Why this receive cannot take ``header``'s blocks, or None."""
        if self.local is not None:
            return f"receiver cannot take request {self.request.shown!r}: {type(self.local).__name__}: {self.local}"
        return header.mismatch(cast(HandoffHeader, self.expected))  # set wherever ``local`` is None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def finish(self, outcome: int | BaseException) -> None:
        self._outcome = outcome
        self._done.set()

    def result(self) -> int:
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        assert self._outcome is not None, "a receive ended without an outcome"
        return self._outcome


class Receives:
    """The receives of one KVHandoff that wait for a header, by (peer, request digest)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting: dict[tuple[str, bytes], Receive] = {}

    @contextmanager
    def waiting(self, peer: str, receive: Receive) -> Iterator[None]:
        key = (peer, receive.request.digest)
        with self._changed:
            if key in self._waiting:
                raise ValueError(f"a receive of request {receive.request.shown!r} from {peer!r} is already waiting")
            self._waiting[key] = receive
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                if self._waiting.get(key) is receive:
                    del self._waiting[key]

    def claim(self, peer: str, digest: bytes, until: float) -> Receive | None:
        """The receive waiting for ``digest`` from ``peer``, waiting for it until ``until``;
        taken off the list, so only the caller serves it."""
        key = (peer, digest)
        with self._changed:
            while (found := self._waiting.get(key)) is None or found.done:
                if (left := until - time.monotonic()) <= 0:
                    return None
                self._changed.wait(left)
            del self._waiting[key]
            return found
