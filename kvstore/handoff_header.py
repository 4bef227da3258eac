"""The messages of a KV handoff: the sender's header and the receiver's answer.

Both are fixed-size uint8 tensors (``MESSAGE_BYTES``). The header is packed binary with a
fixed layout, so no client string can change its size or make it fail to build: the
request id travels as a 16-byte digest (what the receiver matches on) plus the first 64
bytes of its UTF-8 form, cut at a character boundary (only to name it in errors); then
the block count and the cache layout, and, for a sender that failed before sending any
block, a cancel flag and its reason, cut to fit. The answer is the receiver's reason to
reject (empty accepts), cut to fit at a character boundary.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import cast

import torch

from kvstore.errors import HandoffError
from kvstore.layout import KV_DTYPES, KVLayout

MESSAGE_BYTES = 1024
_MAGIC = b"TSKVHO\x00\x02"  # version 2: binary
# magic, flags, digest, num_blocks, layers, block size, kv heads, head dim, dtype code,
# layers per chunk, shown-id length, shown id, note length
_SHOWN_BYTES = 64
_FIXED = struct.Struct(f"<8sI16sQIIIIBIB{_SHOWN_BYTES}sH")
_NOTE_BYTES = MESSAGE_BYTES - _FIXED.size
_CANCELLED, _SHOWN_CUT = 1, 2
_DTYPES = list(KV_DTYPES)


@dataclass(frozen=True)
class RequestRef:
    """A request id as the handoff carries it: a digest to match, a prefix to show."""

    digest: bytes
    prefix: str
    cut: bool = False

    @classmethod
    def of(cls, request_id: str) -> RequestRef:
        raw = str(request_id).encode("utf-8", "surrogatepass")
        prefix = _cut(raw, _SHOWN_BYTES)
        return cls(hashlib.blake2b(raw, digest_size=16).digest(), prefix, len(prefix.encode()) < len(raw))

    @property
    def shown(self) -> str:
        return self.prefix + ("…" if self.cut else "")

    def mismatch(self, expected: RequestRef) -> str | None:
        if self.digest == expected.digest:
            return None
        got, want = self.shown, expected.shown
        if got == want:  # the same first bytes: tell them apart by digest
            got, want = f"{got} (#{self.digest.hex()[:12]})", f"{want} (#{expected.digest.hex()[:12]})"
        return f"request {got!r} arrived where {want!r} was expected"


@dataclass(frozen=True)
class HandoffHeader:
    """What the sender is about to send (``layout`` is None only when ``cancelled``)."""

    request: RequestRef
    num_blocks: int
    layout: KVLayout | None
    layers_per_chunk: int
    cancelled: bool = False
    note: str = ""

    @classmethod
    def of(cls, request_id: str, num_blocks: int, layout: KVLayout, layers_per_chunk: int) -> HandoffHeader:
        return cls(RequestRef.of(request_id), num_blocks, layout, min(layers_per_chunk, layout.num_layers))

    @classmethod
    def cancel(cls, request_id: str, reason: str) -> HandoffHeader:
        """The header of a sender that cannot send: no blocks follow."""
        return cls(RequestRef.of(request_id), 0, None, 1, cancelled=True, note=reason)

    def to_tensor(self, device: torch.device) -> torch.Tensor:
        shown = self.request.prefix.encode()
        flags = (_CANCELLED if self.cancelled else 0) | (_SHOWN_CUT if self.request.cut else 0)
        layout = self.layout or _NO_LAYOUT
        note = _cut(self.note.encode("utf-8", "replace"), _NOTE_BYTES).encode()
        fixed = _FIXED.pack(_MAGIC, flags, self.request.digest, self.num_blocks, layout.num_layers,
                            layout.block_size, layout.num_kv_heads, layout.head_dim,
                            _DTYPES.index(layout.dtype), self.layers_per_chunk, len(shown), shown, len(note))
        buffer = bytearray(MESSAGE_BYTES)
        buffer[:_FIXED.size] = fixed
        buffer[_FIXED.size:_FIXED.size + len(note)] = note
        return torch.frombuffer(buffer, dtype=torch.uint8).to(device)

    @classmethod
    def from_tensor(cls, message: torch.Tensor) -> HandoffHeader:
        """Parse a header; HandoffError if the bytes are not one."""
        raw = message.cpu().numpy().tobytes()
        if len(raw) != MESSAGE_BYTES or raw[:len(_MAGIC)] != _MAGIC:
            raise HandoffError(f"peer sent {raw[:16]!r}... where a tierserve-kv-handoff/2 header was expected")
        (_, flags, digest, num_blocks, layers, block_size, heads, head_dim, dtype, step, shown_len, shown,
         note_len) = _FIXED.unpack_from(raw)
        if flags & ~(_CANCELLED | _SHOWN_CUT) or shown_len > _SHOWN_BYTES or note_len > _NOTE_BYTES:
            raise HandoffError(f"malformed handoff header (flags {flags:#x}, lengths {shown_len}/{note_len})")
        request = RequestRef(digest, shown[:shown_len].decode(errors="replace"), bool(flags & _SHOWN_CUT))
        note = raw[_FIXED.size:_FIXED.size + note_len].decode(errors="replace")
        if flags & _CANCELLED:
            return cls(request, 0, None, 1, cancelled=True, note=note)
        if dtype >= len(_DTYPES) or num_blocks < 1 or step < 1:
            raise HandoffError(f"malformed handoff header (dtype code {dtype}, {num_blocks} blocks, "
                               f"{step} layers per chunk)")
        try:
            layout = KVLayout(layers, block_size, heads, head_dim, _DTYPES[dtype])
        except ValueError as exc:
            raise HandoffError(f"malformed handoff header: {exc}") from exc
        return cls(request, num_blocks, layout, step)

    def mismatch(self, expected: HandoffHeader) -> str | None:
        """Why this header does not fit what the receiver expects, or None."""
        if (problem := self.request.mismatch(expected.request)) is not None:
            return problem
        if self.layout != expected.layout:
            # neither is cancelled here (the receiver checks ``cancelled`` first), so both have a layout
            return (f"sender layout {cast(KVLayout, self.layout).tag} differs from receiver layout "
                    f"{cast(KVLayout, expected.layout).tag}")
        if self.num_blocks != expected.num_blocks:
            return (f"sender has {self.num_blocks} blocks for request {self.request.shown!r}, "
                    f"receiver allocated {expected.num_blocks}")
        return None


_NO_LAYOUT = KVLayout(1, 1, 1, 1, _DTYPES[0])


def answer_tensor(problem: str | None, device: torch.device) -> torch.Tensor:
    """The receiver's answer: empty text accepts, any text rejects with that reason."""
    text = _cut((problem or "").encode("utf-8", "replace"), MESSAGE_BYTES - 2).encode()
    buffer = bytearray(MESSAGE_BYTES)
    buffer[:2] = len(text).to_bytes(2, "little")
    buffer[2:2 + len(text)] = text
    return torch.frombuffer(buffer, dtype=torch.uint8).to(device)


def read_answer(message: torch.Tensor) -> str | None:
    raw = message.cpu().numpy().tobytes()
    length = min(int.from_bytes(raw[:2], "little"), MESSAGE_BYTES - 2)
    return raw[2:2 + length].decode(errors="replace") or None


def empty_message(device: torch.device) -> torch.Tensor:
    return torch.zeros(MESSAGE_BYTES, dtype=torch.uint8, device=device)


def _cut(raw: bytes, limit: int) -> str:
    """The longest whole-character prefix of ``raw`` (UTF-8) that fits in ``limit`` bytes."""
    return raw[:limit].decode("utf-8", "ignore")
