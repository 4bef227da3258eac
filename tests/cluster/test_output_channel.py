"""Batched output channels: a worker's deltas reach each request, and a dead replica fails its
requests instead of leaving them waiting."""

from __future__ import annotations

import asyncio

import pytest
import ray

from cluster.local_cluster import Cluster
from cluster.output_channel import OutputChannels, ReplicaFailed
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from tests.cluster.conftest import cluster_config


def delta(rid: str, token: int, finished: bool = False) -> RequestOutput:
    return RequestOutput(rid, [token], "", finished)


def test_drain_yields_what_is_queued_as_one_batch_then_the_failure():
    async def go():
        channels = OutputChannels()
        sink = channels.sink("c")
        for i in range(3):
            sink.put_nowait(delta(f"r{i}", i))
        sink.put_nowait(ValueError("boom"))
        got = []
        with pytest.raises(RuntimeError, match="boom"):
            async for batch in channels.drain("c"):
                got.append([d.request_id for d in batch])
        assert got == [["r0", "r1", "r2"]] and "c" not in channels.queues
    asyncio.run(go())


@pytest.mark.ray
@pytest.mark.redis
def test_a_killed_replica_fails_its_requests(tiny_model):
    params = SamplingParams(max_tokens=2000, temperature=0, ignore_eos=True)
    with Cluster(cluster_config(tiny_model, colocated={"replicas": 1, "hardware": {"num_cpus": 0.25}})) as dispatcher:
        async def go():
            tokens = 0
            with pytest.raises(ReplicaFailed):
                async for d in dispatcher.generate(None, [5, 6, 7, 8], params):
                    tokens += len(d.new_token_ids)
                    if tokens == 3:
                        ray.kill(dispatcher.pools.colocated[0].actor)
            await dispatcher.aclose()
        asyncio.run(asyncio.wait_for(go(), 60))
