"""KV transport on CUDA: NCCL handoff between two GPUs (two processes), host tier from GPU."""

from __future__ import annotations

import uuid

import pytest
import torch

from engine.block_hash import hash_blocks
from kvstore.block_key import block_keys
from kvstore.config import TransportConfig
from kvstore.layout import KVLayout
from tests.kvstore.conftest import make_store
from tests.kvstore.handoff_peers import RECEIVER, SENDER, Step, run_pair

pytestmark = [pytest.mark.gpu, pytest.mark.redis]

LAYOUT = KVLayout(num_layers=6, block_size=16, num_kv_heads=8, head_dim=128, dtype="bfloat16")


@pytest.mark.multi_gpu
def test_nccl_handoff_between_two_gpus_is_exact(redis_url: str) -> None:
    steps = [
        Step("r1", "r1", 17, 17, seed=1),               # random non-contiguous ids, GPU0 -> GPU1
        Step("r2", "r2", 5, 4, seed=2),                 # block count mismatch, both sides told
        Step("r3", "r3", 48, 48, seed=3),               # the whole cache
        Step("", "never-sent", 0, 1, seed=4),           # receiver times out and aborts NCCL
        Step("r5", "r5", 9, 9, seed=5, reform=True),    # a fresh communicator afterwards
    ]
    sender = TransportConfig(advertise_host="127.0.0.1", layers_per_chunk=4, transfer_timeout_s=60)
    receiver = TransportConfig(advertise_host="127.0.0.1", layers_per_chunk=4, transfer_timeout_s=3)
    out = run_pair(redis_url, f"t-{uuid.uuid4().hex[:8]}", (LAYOUT, LAYOUT), steps, (sender, receiver),
                   ("cuda:0", "cuda:1"))
    assert [o.exact for o in out[RECEIVER]] == [True, None, True, None, True], out
    assert "sender has 5 blocks for request 'r2', receiver allocated 4" in out[SENDER][1].error
    assert out[RECEIVER][3].error.startswith("HandoffTimeoutError: timed out waiting for")


def test_host_tier_round_trip_from_a_gpu_cache(redis_url: str) -> None:
    store = make_store(redis_url, host_tier_bytes=64 * LAYOUT.bytes_per_block)
    try:
        gen = torch.Generator().manual_seed(0)
        shape = (LAYOUT.num_layers, 2, 32, LAYOUT.block_size, LAYOUT.num_kv_heads, LAYOUT.head_dim)
        src = torch.randn(shape, generator=gen).to(torch.bfloat16).cuda()
        dst = torch.zeros_like(src)
        keys = block_keys(hash_blocks(list(range(10 * 16)), 16), "m", LAYOUT)
        src_ids, dst_ids = torch.randperm(32)[:10].tolist(), torch.randperm(32)[:10].tolist()
        assert store.host.put(keys, src, src_ids) == 10
        store.host.get(keys, dst, dst_ids)
        assert torch.equal(dst[:, :, dst_ids].view(torch.int16), src[:, :, src_ids].view(torch.int16))
        assert store.leases.pinned_blocks() == 0
    finally:
        store.wipe()
        store.close()
