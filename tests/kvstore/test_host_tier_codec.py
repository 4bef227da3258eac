"""The host tier with a lossy codec, in a real redis-server: what is stored, what comes back,
checksums over the compressed payload, readers with another setting, capacity in payload bytes."""

from __future__ import annotations

import pytest
import torch

from kvstore.checksum import checksum
from kvstore.errors import ChecksumMismatchError, LayoutMismatchError
from kvstore.host_tier import HostTier
from kvstore.kv_codec import CodecFormat, decode, encode
from kvstore.layout import KVLayout
from kvstore.store import KVStore
from tests.kvstore.conftest import SMALL, make_store, random_cache
from tests.kvstore.test_host_tier import keys_for

pytestmark = pytest.mark.redis


def tier(store: KVStore, codec: str, batch_bytes: int = 64 << 20, residual_tokens: int = 0) -> HostTier:
    """A HostTier over ``store``'s Redis keys with its own codec (as another worker would have);
    every full block compressed unless ``residual_tokens``."""
    return HostTier(store.redis, store.keys, store.index, store.leases, store.host.capacity_bytes,
                    batch_bytes=batch_bytes, codec=codec, residual_tokens=residual_tokens)


def codec_round_trip(kv: torch.Tensor, ids: list[int], codec: str) -> torch.Tensor:
    """Blocks ``ids`` of ``kv`` as the codec alone returns them ([L, 2, n, ...])."""
    fmt = CodecFormat.of(KVLayout.of_cache(kv), codec)
    index = torch.tensor(ids)
    out = torch.zeros_like(kv)
    decode(out, index, encode(kv, index, fmt)[0], fmt)
    return out[:, :, ids]


def stored(store: KVStore, key) -> bytes:
    return store.redis.hget(store.keys.payload(str(key)), "d")


@pytest.mark.parametrize("codec", ["kivi4", "kivi2"])
def test_put_get_stores_compressed_payloads_and_returns_the_decoded_blocks(store: KVStore, codec: str) -> None:
    host = tier(store, codec, batch_bytes=3 * 512)  # 3 blocks a batch: several batches
    src, dst = random_cache(SMALL, 20, seed=1), random_cache(SMALL, 20, seed=2)
    keys, src_ids, dst_ids = keys_for(7), [11, 2, 17, 5, 19, 0, 3], [8, 13, 1, 12, 4, 7, 9]
    assert host.put(keys, src, src_ids) == 7
    fmt = CodecFormat.of(SMALL, codec)
    assert [len(stored(store, k)) for k in keys] == [fmt.payload_bytes] * 7
    assert host.used_bytes() == 7 * fmt.payload_bytes < 7 * SMALL.bytes_per_block
    host.get(keys, dst, dst_ids)
    want = codec_round_trip(src, src_ids, codec)
    assert torch.equal(dst[:, :, dst_ids].view(torch.int16), want.view(torch.int16))
    assert not torch.equal(want.view(torch.int16), src[:, :, src_ids].view(torch.int16))


def test_exact_codec_stores_the_blocks_bytes_unchanged(store: KVStore) -> None:
    src, dst = random_cache(SMALL, 6, seed=3), random_cache(SMALL, 6, seed=4)
    keys = keys_for(3)
    tier(store, "exact").put(keys, src, [4, 0, 2])
    for key, block in zip(keys, [4, 0, 2]):
        assert stored(store, key) == src[:, :, block].contiguous().view(torch.uint8).numpy().tobytes()
    tier(store, "kivi4").get(keys, dst, [1, 3, 5])  # a reader set to compress still reads raw blocks exactly
    assert torch.equal(dst[:, :, [1, 3, 5]].view(torch.int16), src[:, :, [4, 0, 2]].view(torch.int16))


def test_a_reader_with_another_setting_decodes_by_the_header(store: KVStore) -> None:
    src, dst = random_cache(SMALL, 6, seed=5), random_cache(SMALL, 6, seed=6)
    keys = keys_for(4)
    tier(store, "kivi2").put(keys[:2], src, [0, 1])
    tier(store, "kivi4").put(keys[2:], src, [2, 3])
    tier(store, "exact").get(keys, dst, [5, 4, 3, 2])  # one batch holding both formats
    assert torch.equal(dst[:, :, [5, 4]].view(torch.int16), codec_round_trip(src, [0, 1], "kivi2").view(torch.int16))
    assert torch.equal(dst[:, :, [3, 2]].view(torch.int16), codec_round_trip(src, [2, 3], "kivi4").view(torch.int16))


def test_a_block_the_codec_cannot_hold_is_stored_raw_beside_compressed_ones(store: KVStore) -> None:
    src, dst = random_cache(SMALL, 4, seed=7), random_cache(SMALL, 4, seed=8)
    src[1, 0, 2, 3, 1, 5] = float("inf")
    keys = keys_for(3)
    tier(store, "kivi4").put(keys, src, [0, 2, 3])
    fmt = CodecFormat.of(SMALL, "kivi4")
    assert [len(stored(store, k)) for k in keys] == [fmt.payload_bytes, SMALL.bytes_per_block, fmt.payload_bytes]
    assert store.host.used_bytes() == 2 * fmt.payload_bytes + SMALL.bytes_per_block
    tier(store, "kivi4").get(keys, dst, [1, 0, 3])
    assert torch.equal(dst[:, :, 0].view(torch.int16), src[:, :, 2].view(torch.int16))
    lossy = codec_round_trip(src, [0, 3], "kivi4")
    assert torch.equal(dst[:, :, [1, 3]].view(torch.int16), lossy.view(torch.int16))


@pytest.mark.parametrize("where", [5, 200], ids=["header", "codes"])
def test_a_corrupted_compressed_payload_is_caught_by_its_checksum(store: KVStore, where: int) -> None:
    kv = random_cache(SMALL, 4, seed=9)
    keys = keys_for(2)
    tier(store, "kivi4").put(keys, kv, [0, 1])
    name = store.keys.payload(str(keys[1]))
    data = bytearray(store.redis.hget(name, "d"))
    data[where] ^= 0x10
    store.redis.hset(name, "d", bytes(data))
    with pytest.raises(ChecksumMismatchError, match=f"host block {keys[1]}: checksum mismatch"):
        tier(store, "kivi4").get(keys, kv, [2, 3])


def test_a_payload_for_another_layout_is_refused_by_name(store: KVStore) -> None:
    kv = random_cache(SMALL, 4, seed=10)
    keys = keys_for(1)
    tier(store, "kivi4").put(keys, kv, [0])
    other = KVLayout(SMALL.num_layers, SMALL.block_size, SMALL.num_kv_heads, SMALL.head_dim, "float16")
    payload = encode(kv.to(torch.float16), torch.tensor([0]), CodecFormat.of(other, "kivi4"))[0][0].numpy().tobytes()
    store.redis.hset(store.keys.payload(str(keys[0])), mapping={"d": payload, "c": checksum(payload)})
    with pytest.raises(LayoutMismatchError, match=f"host block {keys[0]}: compressed for layout "
                                                  f"{other.tag}, cache is {SMALL.tag}"):
        tier(store, "kivi4").get(keys, kv, [1])


def test_capacity_counts_compressed_bytes(redis_url: str) -> None:
    fmt = CodecFormat.of(SMALL, "kivi2")
    kv_store = make_store(redis_url, host_tier_bytes=3 * SMALL.bytes_per_block, host_tier_codec="kivi2",
                          host_tier_codec_residual_tokens=0)
    try:
        kv = random_cache(SMALL, 8, seed=11)
        fits = 3 * SMALL.bytes_per_block // fmt.payload_bytes
        assert fits == 5
        keys = keys_for(fits + 1)
        assert kv_store.host.put(keys[:fits], kv, range(fits)) == fits  # raw, only 3 would fit
        assert kv_store.host.contains(keys) == [True] * fits + [False]
        kv_store.host.put(keys[fits:], kv, [fits])  # evicts the least recently used one
        assert kv_store.host.contains(keys).count(True) == fits
        assert kv_store.host.used_bytes() == fits * fmt.payload_bytes
    finally:
        kv_store.wipe()
        kv_store.close()


@pytest.mark.parametrize("residual, exact", [(0, 0), (1, 1), (4, 1), (5, 2), (8, 2), (100, 5)])
def test_the_residual_window_keeps_the_puts_last_blocks_exact(store: KVStore, residual: int, exact: int) -> None:
    """SMALL blocks hold 4 tokens: the blocks holding the put's last ``residual`` tokens are raw,
    in the put's order (not the cache's), also across batches; the rest come back as the codec returns them."""
    src, dst = random_cache(SMALL, 8, seed=12), random_cache(SMALL, 8, seed=13)
    keys, src_ids, dst_ids = keys_for(5), [6, 1, 4, 0, 7], [2, 5, 3, 7, 0]
    host = tier(store, "kivi4", batch_bytes=2 * 512, residual_tokens=residual)
    assert host.put(keys, src, src_ids) == 5
    fmt = CodecFormat.of(SMALL, "kivi4")
    assert [len(stored(store, k)) for k in keys] == [fmt.payload_bytes] * (5 - exact) + [SMALL.bytes_per_block] * exact
    host.get(keys, dst, dst_ids)
    lossy = codec_round_trip(src, src_ids, "kivi4")
    for i in range(5):
        want = src[:, :, src_ids[i]] if i >= 5 - exact else lossy[:, :, i]
        assert torch.equal(dst[:, :, dst_ids[i]].view(torch.int16), want.view(torch.int16)), i


def test_a_later_put_does_not_recompress_an_exact_residual_block(store: KVStore) -> None:
    """A longer prefix written later finds its first blocks present: the earlier put's exact
    tail stays exact, the new tail is exact too."""
    src = random_cache(SMALL, 8, seed=14)
    keys = keys_for(6)
    host = tier(store, "kivi4", residual_tokens=4)
    host.put(keys[:3], src, [0, 1, 2])
    assert host.put(keys, src, [0, 1, 2, 3, 4, 5]) == 3
    fmt = CodecFormat.of(SMALL, "kivi4")
    sizes = [len(stored(store, k)) for k in keys]
    coded, raw = fmt.payload_bytes, SMALL.bytes_per_block
    assert sizes == [coded, coded, raw, coded, coded, raw]


def test_the_codec_knob_is_checked_where_the_config_is_built() -> None:
    from kvstore.config import KVStoreConfig
    assert KVStoreConfig(redis_url="redis://x").host_tier_codec == "exact"
    assert KVStoreConfig(redis_url="redis://x").host_tier_codec_residual_tokens == 64
    with pytest.raises(ValueError, match="host_tier_codec must be one of exact, kivi4, kivi2, got 'kivi8'"):
        KVStoreConfig(redis_url="redis://x", host_tier_codec="kivi8")
    for bad in (-1, 1.5, True, "64"):
        with pytest.raises(ValueError, match=f"KVStoreConfig.host_tier_codec_residual_tokens must be an integer "
                                             f">= 0, got {bad!r}"):
            KVStoreConfig(redis_url="redis://x", host_tier_codec_residual_tokens=bad)


def test_the_cluster_config_passes_the_codec_to_the_replicas_store_config(redis_url: str) -> None:
    from cluster.bringup.local_cluster import Cluster
    from cluster.config import ConfigFileError, parse_cluster_config
    base = {"model": "m", "pools": {"colocated": {"replicas": 1}}}
    assert parse_cluster_config(base).kvstore.host_tier_codec == "exact"
    config = parse_cluster_config({**base, "kvstore": {"host_tier_codec": "kivi2", "redis_url": redis_url}})
    cluster = Cluster(config)
    cluster._start_redis()  # builds the KVStoreConfig every replica's spec carries
    assert cluster.kvstore.host_tier_codec == "kivi2"
    assert cluster.kvstore.host_tier_codec_residual_tokens == 64
    config = parse_cluster_config({**base, "kvstore": {"host_tier_codec_residual_tokens": 0, "redis_url": redis_url}})
    cluster = Cluster(config)
    cluster._start_redis()
    assert cluster.kvstore.host_tier_codec_residual_tokens == 0
    with pytest.raises(ConfigFileError, match="kvstore.host_tier_codec must be one of exact, kivi4, kivi2"):
        parse_cluster_config({**base, "kvstore": {"host_tier_codec": "zip"}})
    with pytest.raises(ConfigFileError, match="kvstore.host_tier_codec_residual_tokens must be an integer >= 0"):
        parse_cluster_config({**base, "kvstore": {"host_tier_codec_residual_tokens": -16}})
