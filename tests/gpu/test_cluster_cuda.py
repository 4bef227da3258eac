"""Prefill replica on GPU 0, decode replica on GPU 1, KV over NCCL: exact against the engine."""

from __future__ import annotations

import asyncio

import pytest
import ray
import torch

from cluster.bringup.local_cluster import Cluster
from cluster.config import parse_cluster_config
from engine.sampling_params import SamplingParams
from tests.engine.conftest import make_engine

pytestmark = [pytest.mark.multi_gpu, pytest.mark.ray, pytest.mark.redis]


async def collect(dispatcher, prompt, params):
    tokens = []
    async for delta in dispatcher.generate(None, prompt, params):
        tokens += delta.new_token_ids
    return tokens


def test_prefill_gpu0_decode_gpu1_over_nccl(tiny_model):
    torch.backends.cuda.matmul.allow_tf32 = False
    gpu = {"num_gpus": 1, "num_cpus": 1}
    config = parse_cluster_config({"model": str(tiny_model), "name": "gpu-test", "pools": {
        "prefill": {"replicas": 1, "hardware": gpu}, "decode": {"replicas": 1, "hardware": gpu}}})
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (24,), generator=g)
    prompts = [torch.randint(3, 500, (int(n),), generator=g).tolist() for n in lengths]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    expected = [r.token_ids for r in make_engine(tiny_model).generate(prompts, params)]
    cluster = Cluster(config)
    dispatcher = cluster.start()
    try:
        devices = {info.worker_id: info.device for info in cluster.infos}
        assert devices["prefill-0"].startswith("cuda") and devices["decode-0"].startswith("cuda")
        # each actor sees its GPU as cuda:0: tell them apart by the physical device's UUID
        uuids = {r.worker_id: ray.get(r.actor.device_uuid.remote()) for r in cluster.pools.all}
        here = {str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())}
        assert set(uuids) == {"prefill-0", "decode-0"} and set(uuids.values()) <= here, (uuids, here)
        assert uuids["prefill-0"] != uuids["decode-0"], f"prefill and decode share one GPU: {uuids}"

        async def main():
            try:
                return await asyncio.gather(*(collect(dispatcher, p, params) for p in prompts))
            finally:
                await dispatcher.aclose()
        assert asyncio.run(main()) == expected
        loads = ray.get([r.actor.load.remote() for r in cluster.pools.all])
        assert all(l.handoff_bytes > 0 for l in loads)
    finally:
        cluster.shutdown()
