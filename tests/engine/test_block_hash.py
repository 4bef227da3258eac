"""hash_blocks (tokens packed once) gives hash_block's chain, digest for digest."""

from engine.block_hash import ROOT_HASH, hash_block, hash_blocks


def chained(tokens: list[int], block_size: int, salt: bytes = b"", parent: bytes = ROOT_HASH) -> list[bytes]:
    out = []
    for lo in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash_block(parent, tokens[lo:lo + block_size], salt)
        out.append(parent)
    return out


def test_hash_blocks_is_the_chain_of_hash_block():
    tokens = [(i * 7919) % 128_256 for i in range(1000)]
    for block_size, salt, parent in ((16, b"", ROOT_HASH), (16, b"tenant", ROOT_HASH), (7, b"s", b"\x05" * 16)):
        assert hash_blocks(tokens, block_size, salt, parent) == chained(tokens, block_size, salt, parent)
    assert hash_blocks(tokens[:15], 16) == [] and hash_blocks([], 16) == []
    assert len(hash_blocks(tokens[:33], 16)) == 2
