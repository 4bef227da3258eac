"""Identity of a KV block in the store: chained content hash + model id + layout.

The same tokens under another model, dtype or cache geometry are different bytes, so
the key folds the model id and layout into an 8-byte namespace digest; with the 16-byte
chained block hash (engine.block_hash) that gives a 24-byte (48 hex chars) key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from engine.block_hash import BlockHash
from kvstore.layout import KVLayout

HASH_BYTES = 16
NAMESPACE_BYTES = 8


def namespace_digest(model_id: str, layout: KVLayout) -> bytes:
    """8 bytes naming (model id, layout); stable across processes and machines."""
    return hashlib.blake2b(f"{model_id}\x00{layout.tag}".encode(), digest_size=NAMESPACE_BYTES).digest()


@dataclass(frozen=True)
class BlockKey:
    """One block's identity. ``str(key)`` is its compact Redis form."""

    block_hash: BlockHash
    model_id: str
    layout: KVLayout

    def __post_init__(self) -> None:
        if not isinstance(self.block_hash, bytes) or len(self.block_hash) != HASH_BYTES:
            raise ValueError(f"BlockKey.block_hash must be {HASH_BYTES} bytes (engine.block_hash), "
                             f"got {self.block_hash!r}")
        if not self.model_id:
            raise ValueError("BlockKey.model_id must be a non-empty string")

    @cached_property
    def encoded(self) -> bytes:
        """24 bytes: namespace digest then block hash."""
        return namespace_digest(self.model_id, self.layout) + self.block_hash

    def __str__(self) -> str:
        return self.encoded.hex()


def block_keys(hashes: Sequence[BlockHash], model_id: str, layout: KVLayout) -> list[BlockKey]:
    """Keys of a request's chained block hashes, in order."""
    return [BlockKey(h, model_id, layout) for h in hashes]
