"""Chained content hashes of full KV blocks: the identity prefix caching and the kvstore use.

A block's hash covers its parent's hash, its token ids and an optional salt (per tenant),
so equal hashes mean equal prefixes. Hashes are 16-byte blake2b digests: stable across
processes and machines, unlike Python's ``hash``.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

BlockHash = bytes
ROOT_HASH: BlockHash = b"\x00" * 16


def hash_block(parent: BlockHash, token_ids: Sequence[int], salt: bytes = b"") -> BlockHash:
    """Hash of one full block given its parent's hash (ROOT_HASH for the first block)."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(array("q", token_ids).tobytes())
    if salt:
        h.update(b"\x01salt")
        h.update(salt)
    return h.digest()


def hash_blocks(token_ids: Sequence[int], block_size: int, salt: bytes = b"",
                parent: BlockHash = ROOT_HASH) -> list[BlockHash]:
    """Chained hashes of every *full* block of ``token_ids`` (a trailing partial block has none)."""
    hashes: list[BlockHash] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash_block(parent, token_ids[start:start + block_size], salt)
        hashes.append(parent)
    return hashes
