"""Batched output channels: a worker's deltas reach each request, and a dead replica fails its
requests instead of leaving them waiting."""

from __future__ import annotations

import asyncio

import pytest
import ray

from cluster.bringup.local_cluster import Cluster
from cluster.output_channel import ReplicaFailed
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from tests.cluster.conftest import cluster_config
from workers.output_channels import OutputChannels


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
            tokens, killed = 0, False
            with pytest.raises(ReplicaFailed):
                async for d in dispatcher.generate(None, [5, 6, 7, 8], params):
                    tokens += len(d.new_token_ids)
                    if tokens >= 3 and not killed:  # a delta may carry several tokens
                        ray.kill(dispatcher.pools.colocated[0].actor)
                        killed = True
            assert killed
            await dispatcher.aclose()
        asyncio.run(asyncio.wait_for(go(), 60))


def test_a_closed_channel_aborts_the_requests_still_running_on_it():
    aborted = []

    async def go():
        channels = OutputChannels(abort=aborted.append)
        for rid in ("done", "left"):
            channels.sink("c", rid)
        channels.sink("c").put_nowait(delta("done", 1, finished=True))
        stream = channels.drain("c")
        assert [d.request_id for d in await anext(stream)] == ["done"]
        await stream.aclose()  # the dispatcher went away
        assert "c" not in channels.queues and "c" not in channels.running
    asyncio.run(go())
    assert aborted == ["left"]


@pytest.mark.ray
@pytest.mark.redis
def test_closing_a_dispatcher_aborts_its_running_requests_on_the_workers(tiny_model):
    params = SamplingParams(max_tokens=4000, temperature=0, ignore_eos=True)  # runs to max_model_len
    config = cluster_config(tiny_model, colocated={"replicas": 1, "hardware": {"num_cpus": 0.25}})
    with Cluster(config) as dispatcher:
        replica = dispatcher.pools.colocated[0]
        max_len = ray.get(replica.actor.info.remote()).max_model_len

        async def go():
            started = asyncio.Event()

            async def consume():
                async for _ in dispatcher.generate(None, [5, 6, 7, 8], params):
                    started.set()
            task = asyncio.create_task(consume())
            await started.wait()
            await dispatcher.aclose()  # its output streams end: the worker must drop the request
            while (load := await replica.actor.load.remote()).running:
                await asyncio.sleep(0.05)
            with pytest.raises(ReplicaFailed, match="closed"):
                await task  # the caller is told, not left waiting
            return load, await replica.actor.profile.remote()
        load, profile = asyncio.run(asyncio.wait_for(go(), 120))
        # run to its end, the request's steps would take max_len - 1 tokens (its 4 prompt tokens, then
        # one per step until the context is full): any fewer, and the worker dropped it
        stepped = sum(kind["tokens"] for kind in profile.values())
        assert load.free_blocks == load.total_blocks
        assert stepped < max_len - 1, f"stepped {stepped} tokens, the whole {max_len - 1}: not aborted"


@pytest.mark.ray
@pytest.mark.redis
def test_one_dispatcher_serves_successive_event_loops(tiny_model):
    """Each loop gets its own channel: a reader stranded on a finished loop (asyncio.run
    returned) must not take the deltas of the next loop's requests."""
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
    config = cluster_config(tiny_model, colocated={"replicas": 1, "hardware": {"num_cpus": 0.25}})
    with Cluster(config) as dispatcher:
        async def one() -> int:
            return sum([len(d.new_token_ids) async for d in dispatcher.generate(None, [5, 6, 7], params)])
        for _ in range(4):
            assert asyncio.run(asyncio.wait_for(one(), 30)) == 3
