"""Paged KV (Design.paged_kv): prefix-cache blocks stored once and sharing a colocated replica's
memory with its running requests, as the engine's block pool does."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simulator.costs import CostModels, kv_capacity_tokens
from simulator.design import Design, PoolSpec
from simulator.errors import SimInputError
from simulator.hardware import GIB
from simulator.prefix_cache import PagedPrefixCache
from simulator.replica import Replica
from simulator.simulation import Simulation
from simulator.traces.load import load_trace
from simulator.traces.trace import make_trace


def small_h100(costs: CostModels, kv_tokens: int) -> CostModels:
    """The catalog plus H100-small: an H100 with memory for about ``kv_tokens`` KV tokens."""
    h100, model = costs.catalog["H100"], costs.model
    extra = (kv_tokens - kv_capacity_tokens(model, h100, 1, 8192)) * model.kv_bytes_per_token
    small = replace(h100, name="H100-small", memory_gib=h100.memory_gib + extra / (GIB * h100.memory_fraction))
    return CostModels(model, replace(costs.catalog, hardware={**costs.catalog.hardware, "H100-small": small}))


def peak_running(requests) -> int:
    events = sorted([(r.prefill_start, 1) for r in requests] + [(r.finish_at, -1) for r in requests])
    running = peak = 0
    for _, d in events:
        running += d
        peak = max(peak, running)
    return peak


def shared_prefix_burst(n: int = 64) -> tuple:
    """n requests at once: a 2048-token prefix (32 blocks of 64) shared by all, 64 own tokens each."""
    hashes = [tuple(range(32)) + (1000 + i,) for i in range(n)]
    return make_trace("burst", [0.0] * n, [2048 + 64] * n, [64] * n, hashes, block_tokens=64)


def test_shared_prefix_blocks_are_stored_once(costs: CostModels) -> None:
    small = small_h100(costs, 5 * (2048 + 128))  # whole prompt + output of five requests
    trace = shared_prefix_burst()
    runs = {paged: Simulation(Design(colocated=PoolSpec("H100-small", 1), paged_kv=paged), small, trace).run()
            for paged in (False, True)}
    assert peak_running(runs[False].requests) <= 5
    assert peak_running(runs[True].requests) > 30  # the prefix once, then 128 tokens a request
    assert runs[True].requests[-1].finish_at < runs[False].requests[-1].finish_at / 3
    replica = runs[True].replicas["colocated"][0]
    assert replica.kv_used == 0 and not replica.cache.pins
    assert len(replica.cache.blocks) <= replica.kv_capacity // 64


def test_memory_holds_cache_plus_running_at_every_step(costs: CostModels, monkeypatch) -> None:
    """Running requests' own KV plus every cached block never exceeds the replica's capacity."""
    checked = []

    def checking(method):
        def wrapped(self, *args):
            out = method(self, *args)
            if self.paged:
                assert self.kv_used >= 0
                assert self.kv_used + len(self.cache.blocks) * self.block_tokens <= self.kv_capacity
                assert set(self.cache.pins) <= set(self.cache.blocks)
                checked.append(1)
            return out
        return wrapped

    for name in ("_start_paged", "_prefilled", "_finished"):
        monkeypatch.setattr(Replica, name, checking(getattr(Replica, name)))
    small = small_h100(costs, 40_000)
    spec = ("synthetic:n=600,rate=40,prompt=lognormal:400:0.5,output=lognormal:60:0.5,"
            "prefix_groups=12,prefix_tokens=2048,block=16,seed=3")
    for router in ("round_robin", "prefix_aware"):
        record = Simulation(Design(colocated=PoolSpec("H100-small", 2), router=router, paged_kv=True), small,
                            load_trace(spec)).run()
        assert record.rejected == 0 and all(r.finish_at > 0 for r in record.requests)
        assert all(r.kv_used == 0 and not r.cache.pins for r in record.replicas["colocated"])
    assert len(checked) > 3000


def test_cached_hits_are_leading_full_blocks_and_leave_the_last_token(costs: CostModels) -> None:
    hashes = [tuple(range(4)), tuple(range(4))]  # 4 blocks of 64 = the whole 256-token prompt
    trace = make_trace("same prompt twice", [0.0, 1.0], [256, 256], [4, 4], hashes, block_tokens=64)
    record = Simulation(Design(colocated=PoolSpec("H100", 1), paged_kv=True), costs, trace).run()
    assert [r.cached for r in record.requests] == [0, 192]  # 3 blocks: the last token is computed


def test_eviction_skips_pinned_blocks() -> None:
    cache = PagedPrefixCache(3)
    cache.insert((1, 2, 3))
    cache.pin((1,))
    cache.capacity = 2
    cache.insert((4,))
    assert list(cache.blocks) == [1, 4]  # 2 and 3 were idle and older; 1 is in use
    cache.capacity = 0
    cache.evict()
    assert list(cache.blocks) == [1]
    cache.unpin((1,))
    cache.evict()
    assert not cache.blocks and not cache.pins


def test_paged_kv_is_for_colocated_pools() -> None:
    with pytest.raises(SimInputError, match="colocated"):
        Design(prefill=PoolSpec("H100", 1), decode=PoolSpec("H100", 1), paged_kv=True)
