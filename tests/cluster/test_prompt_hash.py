"""The router's prompt hash in C (cluster/index/_prefix_core.c block_ids) gives engine/block_hash's
digests (their block ids), and the Python path serves where the C one is absent."""

from __future__ import annotations

import random

import numpy as np
import pytest

import cluster.index.prefix_core as prefix_core
from engine.block_hash import ROOT_HASH, hash_blocks
from kvstore.kv_events import ID_DTYPE, block_ids

NATIVE = prefix_core.native_hash()


@pytest.mark.skipif(NATIVE is None, reason="cluster.index._prefix_core is not built")
@pytest.mark.parametrize("seed", range(3))
def test_same_ids_as_the_python_chain(seed):
    rng = random.Random(seed)
    for _ in range(100):
        size = rng.choice([1, 2, 15, 16, 17, 32])  # one or two blake2b blocks a hash, with and without salt
        tokens = [rng.choice([0, 1, -5, 2**31, 2**63 - 1, rng.randrange(1 << 40)]) for _ in range(rng.randrange(300))]
        salt = rng.choice([b"", b"x", bytes(rng.randrange(256) for _ in range(rng.randrange(200)))])
        parent = rng.choice([ROOT_HASH, bytes(rng.randrange(256) for _ in range(16))])
        want = block_ids(hash_blocks(tokens, size, salt, parent))
        assert np.array_equal(np.frombuffer(NATIVE(tokens, size, salt, parent), ID_DTYPE), want)
        assert np.array_equal(prefix_core.prompt_block_ids(tokens, size, salt),
                              block_ids(hash_blocks(tokens, size, salt)))
    with pytest.raises(OverflowError):
        NATIVE([2**63], 1)
    with pytest.raises(ValueError):
        NATIVE([1], 0)


def test_python_path_without_the_c_hash(monkeypatch):
    monkeypatch.setattr(prefix_core, "_HASH", None)
    tokens = list(range(100))
    assert np.array_equal(prefix_core.prompt_block_ids(tokens, 16, b"t"), block_ids(hash_blocks(tokens, 16, b"t")))
    assert len(prefix_core.prompt_block_ids(tokens[:15], 16)) == 0
