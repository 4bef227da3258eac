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
    """Chained hashes of every *full* block of ``token_ids`` (a trailing partial block has none).
    ``hash_block``'s digests, the tokens packed once and each block hashed in one call (a router
    hashes every prompt: 4K tokens in ~0.55 ms instead of ~0.9 ms)."""
    full = len(token_ids) // block_size * block_size
    data = memoryview(array("q", token_ids[:full]).tobytes())
    step, tail, blake = 8 * block_size, b"\x01salt" + salt if salt else b"", hashlib.blake2b
    hashes: list[BlockHash] = []
    for lo in range(0, 8 * full, step):
        parent = blake(b"".join((parent, data[lo:lo + step], tail)), digest_size=16).digest()
        hashes.append(parent)
    return hashes
