"""A 1 prefill + 1 decode + 1 attention cluster (Ray, redis-server, CPU, gloo) behind the router:
OpenAI and gRPC completions equal `tierserve generate`; the prompt's KV went from the prefill
replica to the attention replica, the decode replica ran every step's attention there."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import grpc
import openai
import pytest
import ray

from cluster.bringup.local_cluster import Cluster
from engine.tokenizer import Tokenizer
from router.config import RouterConfig
from router.proto import tierserve_pb2, tierserve_pb2_grpc
from router.server import Router
from tests.cluster.conftest import cluster_config

pytestmark = [pytest.mark.ray, pytest.mark.redis]

POOLS = {"prefill": {"replicas": 1, "hardware": {"num_cpus": 0.25}},
         "decode": {"replicas": 1, "hardware": {"num_cpus": 0.25}, "engine": {"micro_batches": 2}},
         "attention": {"replicas": 1, "hardware": {"num_cpus": 0.25}, "engine": {"num_blocks": 96}}}


def tierserve_generate(model, prompt: str, max_tokens: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "generate", "--model", str(model), "--prompt", prompt,
                          "--max-tokens", str(max_tokens), "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def offload_cluster(tiny_model):
    c = Cluster(cluster_config(tiny_model, **POOLS))
    c.start()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def router(offload_cluster):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    r = Router(offload_cluster.dispatcher, RouterConfig(grpc_port=0, http_port=0))
    asyncio.run_coroutine_threadsafe(r.start(), loop).result(60)
    yield r
    asyncio.run_coroutine_threadsafe(r.stop(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_completions_through_the_router_equal_tierserve_generate(offload_cluster, router, tiny_model):
    prompts = ["Hello, world! How are you today?", "Once upon a time there was a small model that knew nothing"]
    expected = [tierserve_generate(tiny_model, p, 12) for p in prompts]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="none")
    model = client.models.list().data[0].id
    for prompt, want in zip(prompts, expected):
        done = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
        assert done.choices[0].text == want["text"]
    ids = Tokenizer(tiny_model).encode(prompts[1])
    with grpc.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = tierserve_pb2_grpc.GenerationStub(channel)
        request = tierserve_pb2.GenerateRequest(token_ids=tierserve_pb2.TokenIds(ids=ids),
                                                sampling=tierserve_pb2.SamplingParams(max_tokens=12, temperature=0))
        tokens = [t for chunk in stub.GenerateStream(request, timeout=120) for t in chunk.token_ids]
    assert tokens == expected[1]["token_ids"]
    # the path: KV handed to the attention replica, attention served there, nothing left behind
    (attention,) = offload_cluster.attention
    (decode,) = offload_cluster.pools.decode
    assert ray.get(decode.actor.kv_peer.remote()) == "attention-0"
    load = ray.get(decode.actor.load.remote())
    assert load.total_blocks == 96 and load.free_blocks == 96
    deadline = time.monotonic() + 10
    while ray.get(attention.actor.tables.remote("decode-0")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the reset an idle decode replica sends is on its way
    assert ray.get(attention.actor.tables.remote("decode-0")) == 0  # no table outlives its request
    assert offload_cluster.dispatcher.handoff_bytes > 0


def test_a_killed_attention_replica_is_restarted_and_its_requests_recompute(offload_cluster, router, tiny_model):
    """The attention replica's process is killed while a request streams: Ray restarts it, the decode
    replica re-attaches and recomputes every request; the stream goes on to the engine's tokens."""
    from engine.llm_engine import LLMEngine
    from engine.sampling_params import SamplingParams
    from tests.attention_offload.local_offload import engine_config
    prompt = "The quick brown fox jumps over the lazy dog."
    want = LLMEngine(engine_config(tiny_model)).generate([prompt], SamplingParams(max_tokens=160, temperature=0,
                                                                                 ignore_eos=True))[0].text
    (attention,) = offload_cluster.attention
    pid = ray.get(attention.actor.pid.remote())
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="none", timeout=300)
    model = client.models.list().data[0].id
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=160, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    text, killed = "", False
    for chunk in stream:
        text += chunk.choices[0].text
        if not killed and len(text) > 20:
            import os
            import signal
            os.kill(pid, signal.SIGKILL)
            killed = True
    assert killed and text == want
    assert ray.get(attention.actor.pid.remote()) != pid  # a new process
    (decode,) = offload_cluster.pools.decode
    deadline = time.monotonic() + 30
    while ((load := ray.get(decode.actor.load.remote())).free_blocks != load.total_blocks
           and time.monotonic() < deadline):
        time.sleep(0.1)
    assert load.free_blocks == load.total_blocks and load.preemptions >= 1


def test_a_killed_decode_replica_reattaches_to_its_attention_replica(offload_cluster, router, tiny_model):
    """The decode (model) replica's process is killed: its session on the attention replica ends and
    its tables go; Ray restarts it, it attaches again to the same partition, and serves exactly."""
    import os
    import signal
    (attention,) = offload_cluster.attention
    (decode,) = offload_cluster.pools.decode
    os.kill(ray.get(decode.actor.pid.remote()), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while "decode-0" not in ray.get(attention.actor.ended.remote()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.get(attention.actor.ended.remote())["decode-0"] != "stopped"  # the link broke
    while time.monotonic() < deadline:  # restarted: its engine attached again
        try:
            ray.get(decode.actor.load.remote(), timeout=5)
            break
        except (ray.exceptions.RayError, TimeoutError):
            time.sleep(0.5)
    want = tierserve_generate(tiny_model, "Hello, world! How are you today?", 12)["text"]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="none", timeout=300)
    model = client.models.list().data[0].id
    for _ in range(60):  # the dispatcher sees the new incarnation ready within a few pings
        try:
            done = client.completions.create(model=model, prompt="Hello, world! How are you today?", max_tokens=12,
                                             temperature=0)
            break
        except openai.APIStatusError:
            time.sleep(1)
    assert done.choices[0].text == want
    load = ray.get(decode.actor.load.remote())
    assert load.free_blocks == load.total_blocks
