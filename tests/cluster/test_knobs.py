"""One knob, one name, one default: the cluster config's kvstore knobs are KVStoreConfig's and
TransportConfig's by the same names and defaults, and reach the replicas; replicas must agree on
the KV block size."""

from __future__ import annotations

import pytest

from cluster.bringup.local_cluster import Cluster, one_block_size
from cluster.config import ConfigFileError, KVStoreSection, parse_cluster_config
from kvstore.config import KVStoreConfig, TransportConfig
from workers.messages import EngineInfo

BASE = {"model": "m", "pools": {"prefill": {"replicas": 1}, "decode": {"replicas": 1}}}


def test_kvstore_knobs_have_one_default():
    section = KVStoreSection()
    assert section.host_tier_bytes == KVStoreConfig(redis_url="redis://x").host_tier_bytes == 1 << 30
    assert section.layers_per_chunk == TransportConfig().layers_per_chunk


def test_layers_per_chunk_from_the_cluster_config_reaches_the_transport():
    config = parse_cluster_config({**BASE, "kvstore": {"layers_per_chunk": 2}})
    assert Cluster(config).transport().layers_per_chunk == 2
    assert Cluster(parse_cluster_config(BASE)).transport().layers_per_chunk == TransportConfig().layers_per_chunk
    with pytest.raises(ConfigFileError, match="layers_per_chunk must be an int >= 1"):
        parse_cluster_config({**BASE, "kvstore": {"layers_per_chunk": 0}})


def _info(worker_id: str, block_size: int) -> EngineInfo:
    return EngineInfo(worker_id, 256, 1000, (2,), 64, block_size, "cpu")


def test_replicas_must_share_one_block_size():
    assert one_block_size([_info("prefill-0", 16), _info("decode-0", 16)]) == 16
    with pytest.raises(ValueError, match="one KV block size, got prefill-0: 16, decode-0: 32"):
        one_block_size([_info("prefill-0", 16), _info("decode-0", 32)])
