"""A real 2 prefill + 2 decode cluster behind the real router, for killing parts of it under load.

One cluster serves every case of the module (bring-up costs most of the suite's time); each
case leaves it whole again (the killed part back and serving) and every block free.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from cluster.bringup.local_cluster import Cluster
from cluster.config import parse_cluster_config
from kvstore.store import KVStore
from router.config import RouterConfig
from router.server import Router

POOLS = {"prefill": {"replicas": 2, "hardware": {"num_cpus": 0.25}},
         "decode": {"replicas": 2, "hardware": {"num_cpus": 0.25}}}
REQUEST_TIMEOUT_S = 90.0  # a request without a terminal outcome by then has hung


@dataclass
class Outcome:
    """How one streamed request ended: done (every token), unavailable (a 503 before any
    token, or an 'unavailable' error event after some), or anything else (a failure)."""

    kind: str
    tokens: int = 0
    status: int = 200
    retry_after: str | None = None
    message: str = ""


class Faulty:
    """The cluster, its router (on its own loop thread) and helpers to load and inspect it."""

    def __init__(self, model, pools: dict = POOLS, name: str = "faults", **fields):
        """``pools``, ``name`` and other cluster config ``fields`` (dtype, load_format, ...) for
        other uses of the harness (benchmarks/soak.py)."""
        config = parse_cluster_config({"model": str(model), "pools": pools, "name": name,
                                       "router": {"policy": "round-robin"}, **fields})
        self.cluster = Cluster(config)
        self.dispatcher = self.cluster.start()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="router-loop", daemon=True)
        self.thread.start()
        self.router = Router(self.dispatcher, RouterConfig(grpc_port=0, http_port=0))
        self.call(self.router.start())
        self.base_url = f"http://127.0.0.1:{self.router.http_port}"
        self.model_name = self.router.model_name

    def call(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def replica(self, worker_id: str):
        return next(r for r in self.cluster.pools.all if r.worker_id == worker_id)

    def pid(self, worker_id: str) -> int:
        import ray
        return ray.get(self.replica(worker_id).actor.pid.remote(), timeout=30)

    def health(self) -> tuple[int, dict]:
        response = httpx.get(f"{self.base_url}/health", timeout=10)
        return response.status_code, response.json()

    def state(self, worker_id: str) -> str:
        pool = worker_id.rpartition("-")[0]
        return self.health()[1]["pools"][pool]["replicas"][worker_id]

    def assert_all_free(self, timeout_s: float = 20.0) -> None:
        """Every replica up and holding no blocks, no handoff, no request; no Redis lease left."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.call(self.dispatcher.pools.refresh())
            loads = {r.worker_id: r.load for r in self.cluster.pools.all}
            busy = {w: l for w, l in loads.items()
                    if l is None or l.total_blocks - l.free_blocks or l.held_handoffs or l.running or l.waiting}
            if not busy or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not busy, f"replicas still holding blocks or requests: {busy}"
        store = KVStore.connect(self.cluster.kvstore)
        try:
            assert store.leases.pinned_blocks() == 0
        finally:
            store.close()

    def close(self) -> None:
        try:
            self.call(self.router.stop())
            self.call(self.dispatcher.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.cluster.shutdown()


@pytest.fixture(scope="module")
def faulty(tiny_model) -> Iterator[Faulty]:
    running = Faulty(tiny_model)
    try:
        yield running
    finally:
        running.close()


async def stream_one(http: httpx.AsyncClient, model: str, prompt: str, max_tokens: int,
                     first_token: asyncio.Event | None = None) -> Outcome:
    """One streamed completion through the router's HTTP API, to its terminal outcome."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    chunks = tokens = 0
    async with http.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            error = response.json().get("error", {})
            kind = "unavailable" if response.status_code == 503 and error.get("code") == "unavailable" else "failed"
            return Outcome(kind, 0, response.status_code, response.headers.get("retry-after"),
                           error.get("message", response.text))
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                if line == "data: [DONE]":
                    break
                continue
            event = json.loads(line[len("data: "):])
            if "error" in event:
                error = event["error"]
                return Outcome("unavailable" if error.get("code") == "unavailable" else "failed", max(chunks, 1),
                               message=error.get("message", ""))
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if event.get("choices"):
                chunks += 1
                if first_token is not None:
                    first_token.set()
    return Outcome("done" if tokens == max_tokens else "failed", tokens, message="stream ended")


def check_terminal(outcomes: list[Outcome], max_tokens: int) -> None:
    """Every request ended cleanly: all its tokens, or a 503 / 'unavailable' event that names
    no traceback (a 503 before any token carries Retry-After)."""
    for o in outcomes:
        assert o.kind in ("done", "unavailable"), o
        assert "Traceback" not in o.message and "File \"" not in o.message, o
        if o.kind == "done":
            assert o.tokens == max_tokens, o
        if o.kind == "unavailable" and o.tokens == 0 and o.status == 503:
            assert o.retry_after is not None and int(o.retry_after) >= 1, o
