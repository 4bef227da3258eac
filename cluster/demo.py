"""`tierserve demo`: the README's main job on the embedded default.

Starts a local cluster (local Ray, a private redis-server, 1 prefill + 1 decode replica on
the tiny model), serves it over HTTP on a free port, sends a few requests with the openai
client, prints outputs and per-stage timings, and shuts everything down.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from typing import cast

DEMO_PROMPTS = (
    "The prefill pool computes the prompt",
    "Hello, world! How are you today?",
    "Once upon a time there was a small model",
    "def f(x): return x * 2",
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run a local cluster on the embedded tiny model and send it a few requests")
    demo.add_argument("--model", default=None, help="checkpoint directory (default: the embedded tiny model)")
    demo.add_argument("--max-tokens", type=int, default=16)
    demo.add_argument("--replicas", type=int, default=1, help="replicas per pool")
    demo.add_argument("--design", choices=("disaggregated", "offload"), default="disaggregated",
                      help="offload: decode replicas run attention on an attention pool (docs/attention_offload.md)")
    demo.add_argument("--verbose", action="store_true", help="show Ray's own log lines and the replicas' output")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cluster.bringup.local_cluster import Cluster
    from cluster.config import parse_cluster_config
    from engine.default_model import default_model_dir
    from kvstore.config import KVStoreConfig
    from kvstore.redis_client import redact_url

    console = Console()
    model = args.model or str(default_model_dir())
    pool = {"replicas": args.replicas, "hardware": {"num_cpus": 0.5}}
    pools = {"prefill": pool, "decode": pool}
    if args.design == "offload":
        pools["attention"] = pool
    config = parse_cluster_config({"model": model, "name": "demo", "pools": pools})
    t0 = time.perf_counter()
    cluster = Cluster(config, progress=_progress, verbose=args.verbose)
    dispatcher = cluster.start()
    placed = " + ".join(f"{args.replicas} {role}" for role in pools)
    console.print(f"cluster up in {time.perf_counter() - t0:.1f}s: {placed} replica(s) of {model}, "
                  f"Redis at {redact_url(cast(KVStoreConfig, cluster.kvstore).redis_url)}")
    try:
        rows = _serve_and_ask(dispatcher, args.max_tokens)
    finally:
        _progress("shutting down the pools, Ray and redis-server")
        cluster.shutdown()
    for table in _tables(rows, dispatcher):
        console.print(table)
    console.print("clean shutdown: pools stopped, Ray and redis-server gone")
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _serve_and_ask(dispatcher, max_tokens: int) -> list[tuple]:
    """Start the router on free ports and send the demo prompts over HTTP, concurrently."""
    import openai

    from router.config import RouterConfig
    from router.server import Router

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    router = Router(dispatcher, RouterConfig(grpc_port=0, http_port=0))
    asyncio.run_coroutine_threadsafe(router.start(), loop).result(60)
    _progress(f"router listening on 127.0.0.1: http_port={router.http_port}; sending {len(DEMO_PROMPTS)} "
              "streamed requests")
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="demo")
        return asyncio.run(_ask_all(client, dispatcher.model_name, max_tokens))
    finally:
        asyncio.run_coroutine_threadsafe(router.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


async def _ask_all(client, model: str, max_tokens: int) -> list[tuple]:
    async def ask(prompt: str) -> tuple:
        start = time.perf_counter()
        ttft, text = None, ""
        stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                                 temperature=0, stream=True)
        async for chunk in stream:
            ttft = ttft if ttft is not None else time.perf_counter() - start
            text += chunk.choices[0].text
        return prompt, text, ttft, time.perf_counter() - start
    return list(await asyncio.gather(*(ask(p) for p in DEMO_PROMPTS)))


def _tables(rows: list[tuple], dispatcher) -> tuple:
    from rich.table import Table
    outputs = Table(title="requests (HTTP, streamed)")
    for col in ("prompt", "output", "TTFT ms", "total ms"):
        outputs.add_column(col)
    for prompt, text, ttft, total in rows:
        outputs.add_row(prompt, repr(text), f"{1000 * ttft:.1f}", f"{1000 * total:.1f}")
    stages = Table(title="per-stage timings in the dispatcher (ms)")
    for col in ("request", "prefill", "KV handoff", "decode", "total"):
        stages.add_column(col)
    for t in list(dispatcher.timings.entries.values())[-len(rows):]:
        ms = [f"{1000 * t.stages.get(name, 0.0):.1f}" for name in ("prefill", "handoff", "decode")]
        stages.add_row(t.request_id[:12], *ms, f"{1000 * t.total:.1f}")
    return outputs, stages
