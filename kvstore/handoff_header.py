"""The messages that open a KV handoff: the sender's header and the receiver's answer.

Both travel as fixed-size uint8 tensors over the pair group before any payload, so a
mismatch (wrong request, block count or layout) is reported on both sides with the
receiver's explanation instead of hanging or writing garbage.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from kvstore.errors import HandoffError
from kvstore.layout import KVLayout

MESSAGE_BYTES = 1024
_MAGIC = "tierserve-kv-handoff/1"


@dataclass(frozen=True)
class HandoffHeader:
    """What the sender is about to send."""

    request_id: str
    num_blocks: int
    layout: KVLayout
    layers_per_chunk: int

    def to_tensor(self, device: torch.device) -> torch.Tensor:
        fields = asdict(self)
        return _pack(json.dumps({"magic": _MAGIC, **fields}).encode(), device)

    @classmethod
    def from_tensor(cls, message: torch.Tensor) -> HandoffHeader:
        fields = json.loads(_unpack(message))
        if fields.pop("magic", None) != _MAGIC:
            raise HandoffError(f"peer sent a message that is not a {_MAGIC} header")
        return cls(fields["request_id"], fields["num_blocks"], KVLayout(**fields["layout"]),
                   fields["layers_per_chunk"])

    def mismatch(self, expected: HandoffHeader) -> str | None:
        """Why this header does not fit what the receiver expects, or None."""
        if self.request_id != expected.request_id:
            return f"request {self.request_id!r} arrived where {expected.request_id!r} was expected"
        if self.layout != expected.layout:
            return f"sender layout {self.layout.tag} differs from receiver layout {expected.layout.tag}"
        if self.num_blocks != expected.num_blocks:
            return (f"sender has {self.num_blocks} blocks for request {self.request_id!r}, "
                    f"receiver allocated {expected.num_blocks}")
        return None


def answer_tensor(problem: str | None, device: torch.device) -> torch.Tensor:
    """The receiver's answer: empty text accepts, any text rejects with that reason."""
    return _pack((problem or "").encode()[:MESSAGE_BYTES - 2], device)


def read_answer(message: torch.Tensor) -> str | None:
    return _unpack(message) or None


def empty_message(device: torch.device) -> torch.Tensor:
    return torch.zeros(MESSAGE_BYTES, dtype=torch.uint8, device=device)


def _pack(payload: bytes, device: torch.device) -> torch.Tensor:
    if len(payload) + 2 > MESSAGE_BYTES:
        raise HandoffError(f"handoff header of {len(payload)} bytes exceeds {MESSAGE_BYTES - 2}; "
                           f"is the request id unreasonably long?")
    buffer = bytearray(MESSAGE_BYTES)
    buffer[:2] = len(payload).to_bytes(2, "little")
    buffer[2:2 + len(payload)] = payload
    return torch.frombuffer(buffer, dtype=torch.uint8).to(device)


def _unpack(message: torch.Tensor) -> str:
    raw = message.cpu().numpy().tobytes()
    return raw[2:2 + int.from_bytes(raw[:2], "little")].decode()
