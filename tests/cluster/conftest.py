"""A real local cluster (Ray, redis-server, 2 prefill + 2 decode actors) on the tiny model."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from cluster.bringup.local_cluster import Cluster
from cluster.config import parse_cluster_config


def cluster_config(model, **pools):
    return parse_cluster_config({"model": str(model), "pools": pools})


TWO_BY_TWO = {"prefill": {"replicas": 2, "hardware": {"num_cpus": 0.25}},
              "decode": {"replicas": 2, "hardware": {"num_cpus": 0.25}}}


@pytest.fixture(scope="module")
def cluster(tiny_model):
    c = Cluster(cluster_config(tiny_model, **TWO_BY_TWO))
    c.start()
    yield c
    c.shutdown()


@contextlib.contextmanager
def event_loop():
    """A new event loop; its tasks are cancelled and finished before it closes."""
    loop = asyncio.new_event_loop()
    yield loop
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()


@pytest.fixture(scope="module")
def loop():
    """One event loop for a module: the dispatcher's per-pair locks live in it."""
    with event_loop() as loop:
        yield loop


async def collect(dispatcher, prompt, params, request_id=None):
    deltas = []
    async for delta in dispatcher.generate(request_id, prompt, params):
        deltas.append(delta)
    return deltas


async def gather(*coros):
    return await asyncio.gather(*coros)
