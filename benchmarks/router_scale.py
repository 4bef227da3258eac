"""The router at cluster scale (issue 22): what KV-event ingest, the prefix index's memory and
a routing decision cost, for today's index (``PrefixIndex``, the baseline) and the compact
one (``CompactPrefixIndex`` + ``FleetRouter``) on each of its cores (``compact-numpy``, the
reference, and ``compact-c``), measured in one run.

  python -m benchmarks.router_scale [--blocks 1000000] [--repeat 3] [--out DIR] [--quick]

Workload: 4K-token prompts as chains of 256 blocks of random 16-byte hashes; a prompt
starts with 0-128 blocks of one of 64 shared prefixes. Each part runs in a fresh process
(so one implementation's memory does not hide the other's):

- ingest: STORED events of whole chains (256 blocks) from 64 workers until the index holds
  ``--blocks`` blocks, read from their wire bytes (today's format for the baseline, packed
  ids for the compact index, applied ``--batch`` messages at a time as one XREAD returns
  them); then churn at that size (each new chain's STORED + an old chain's EVICTED); then
  the same with small events (16 blocks, a worker's pump every 20 ms).
- memory: RSS growth of the process while the index fills, per block held.
- route: 256 workers' index at ``--blocks``; per request, its block ids' match and the
  pick among the replicas (balanced loads): 40% prompts seen before, 40% a shared prefix
  and a new tail, 20% new. p50/p99 over ``--requests``; hashing the prompt's tokens
  (engine/block_hash.py) and recording the prediction are timed apart.
- sweep: the decision's cost against the number of replicas (16-1024, same index).

- redis: the ingest end to end, XREAD from a real redis-server (on the same cores).

``--dispatcher`` measures instead what ``tierserve serve`` runs per request: ClusterView's
prefill choice end to end (``shape``: hash the prompt's tokens, match, then ``pick_prefill``)
at 16-1024 replicas, the pick over the pool's board (FleetRouter.pick: C, and numpy) against
the Python rule over Replica objects (the choice before the board), CPU time, the best of
``--repeat`` passes per request; written to ``dispatcher_choice.json``.

Each part runs ``--repeat`` times (the machine is shared: rates are the best run's, p99s the
median run's, ``best_of_3_p99_us`` the p99 of each request's least time in three passes).
Results in --out: ``router_scale.json`` (the whole record), ``router_cost.json`` (the few
numbers simulator/router_cost.py sizes a fleet's routers from) and ``router_scale.png``
(router CPU cores and index memory against fleet size, from simulator/router_cost.py's model,
for a fleet of prefill replicas each prefilling 10k tokens/s).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import numpy as np
import redis

from benchmarks.common import cpu_model
from cluster.fleet_router import FleetRouter
from cluster.index.compact_index import CompactPrefixIndex
from cluster.index.prefix_core import NumpyCore, native_core, prompt_block_ids
from cluster.index.prefix_index import PrefixIndex
from cluster.pool_handles import Replica, RequestShape, pick_prefill
from engine.block_hash import ROOT_HASH, hash_blocks
from kvstore.keys import RedisKeys, Tier
from kvstore.kv_events import EventBatch, EventKind, KVEvent, KVEventSubscriber, block_ids
from simulator.router_cost import UTILIZATION

CHAIN, GROUPS, PREFIX = 256, 64, 128
BLOCK_TOKENS, TOKENS_PER_S = 16, 10_000  # a prefill replica's rate in the fleet model
FLEET = [8, 16, 32, 64, 128, 256, 512, 1024]
IMPLS = ("baseline", "compact-numpy", "compact-c")
GOALS = {"ingest_blocks_per_s": 1e6, "bytes_per_block": 100, "route_p99_us": 50}


class Workload:
    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.prefixes = [self._hashes(PREFIX) for _ in range(GROUPS)]
        self.chains: list[list[bytes]] = []

    def _hashes(self, n: int) -> list[bytes]:
        raw = self.rng.bytes(16 * n)
        return [raw[i:i + 16] for i in range(0, 16 * n, 16)]

    def chain(self, shared: bool = True) -> list[bytes]:
        n = int(self.rng.integers(0, PREFIX + 1)) if shared else 0
        prefix = self.prefixes[int(self.rng.integers(GROUPS))][:n]
        return prefix + self._hashes(CHAIN - n)

    def chains_for(self, blocks: int) -> list[list[bytes]]:
        """Enough new chains for about ``blocks`` distinct blocks."""
        while len(self.chains) * (CHAIN - PREFIX // 2) < blocks:
            self.chains.append(self.chain())
        return self.chains


def stored(worker: str, chain: list[bytes]) -> KVEvent:
    return KVEvent(worker, EventKind.STORED, Tier.GPU, tuple(chain), tuple([ROOT_HASH] + chain[:-1]))


def legacy_encode(e: KVEvent) -> bytes:
    """The wire format before packed ids: lists of 16-byte hashes."""
    return msgpack.packb([e.worker_id, e.kind.value, e.tier.value, list(e.hashes), list(e.parents)],
                         use_bin_type=True)


def legacy_decode(data: bytes) -> KVEvent:
    worker, kind, tier, hashes, parents = msgpack.unpackb(data, raw=False)
    return KVEvent(worker, EventKind(kind), Tier(tier), tuple(hashes), tuple(parents))


class Impl:
    """One index under test: how it takes wire messages and answers a route."""

    def __init__(self, name: str):
        self.name = name
        if name == "baseline":
            self.index = PrefixIndex()
        elif name == "compact-numpy":
            self.index = CompactPrefixIndex(core=NumpyCore)
        elif (core := native_core()) is not None:
            self.index = CompactPrefixIndex(core=core)
        else:
            raise SystemExit("compact-c: cluster.index._prefix_core is not built (pip install -e .)")

    def encode(self, e: KVEvent) -> bytes:
        return legacy_encode(e) if self.name == "baseline" else e.encode()

    def ingest(self, messages: list[bytes]) -> None:
        if self.name == "baseline":
            for m in messages:
                self.index.apply(legacy_decode(m))
        else:
            self.index.apply_batch(EventBatch.decode(messages))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def messages_for(impl: Impl, work: Workload, blocks: int, workers: int, split: int = CHAIN) -> list[bytes]:
    """STORED events (wire bytes) of enough chains for about ``blocks`` distinct blocks."""
    return [impl.encode(stored(f"w{i % workers}", chain[lo:lo + split]))
            for i, chain in enumerate(work.chains_for(blocks)) for lo in range(0, CHAIN, split)]


def fill(impl: Impl, messages: list[bytes], blocks: int, batch: int, per_message: int = CHAIN
         ) -> tuple[tuple[float, float], int]:
    """Apply ``messages`` until the index holds ``blocks``: (CPU, wall) seconds, blocks sent."""
    sent, clock = 0, Clock()
    for lo in range(0, len(messages), batch):
        impl.ingest(messages[lo:lo + batch])
        sent += per_message * len(messages[lo:lo + batch])
        if len(impl.index) >= blocks:
            break
    return clock.split(), sent


def churn(impl: Impl, work: Workload, workers: int, batch: int, chains: int, split: int = CHAIN
          ) -> tuple[tuple[float, float], int]:
    """Each worker stores new chains and evicts its oldest ones' blocks: the index keeps its size."""
    messages, old = [], work.chains
    for i in range(chains):
        w, chain = f"w{i % workers}", work.chain()
        gone = old[i % len(old)]
        for lo in range(0, CHAIN, split):
            messages.append(impl.encode(stored(w, chain[lo:lo + split])))
            messages.append(impl.encode(KVEvent(w, EventKind.EVICTED, hashes=tuple(gone[lo:lo + split]))))
    clock = Clock()
    for lo in range(0, len(messages), batch):
        impl.ingest(messages[lo:lo + batch])
    return clock.split(), 2 * chains * CHAIN


def part_ingest(args, impl: Impl) -> dict:
    work = Workload(args.seed)
    messages = messages_for(impl, work, args.blocks, 64)
    gc.collect()
    base = rss_bytes()
    seconds, sent = fill(impl, messages, args.blocks, args.batch)
    del messages
    gc.collect()
    grown = rss_bytes() - base
    size = len(impl.index)
    churn_s, churned = churn(impl, work, 64, args.batch, max(20, args.blocks // 4000))
    small = Impl(impl.name)
    small_messages = messages_for(small, Workload(args.seed + 1), args.blocks // 10, 64, split=16)
    small_s, small_sent = fill(small, small_messages, args.blocks // 10, args.batch, per_message=16)
    out = {"blocks": size, "fill_blocks_per_s": sent / seconds[0], "churn_blocks_per_s": churned / churn_s[0],
           "small_events_blocks_per_s": small_sent / small_s[0], "fill_wall_blocks_per_s": sent / seconds[1],
           "rss_bytes_per_block": grown / size}
    if impl.name != "baseline":
        out["accounted_bytes_per_block"] = impl.index.size().nbytes / size
    return out


def replicas_with_loads(n: int, rng: np.random.Generator) -> tuple[list[Replica], np.ndarray, np.ndarray]:
    pending = rng.integers(0, 8192, n)
    inflight = rng.integers(0, 8, n)
    replicas = [Replica(f"w{i}", "prefill", None, inflight=int(c), pending_tokens=int(p))
                for i, (p, c) in enumerate(zip(pending, inflight))]
    return replicas, pending, inflight


def requests(work: Workload, n: int) -> list[list[bytes]]:
    out = []
    for _ in range(n):
        roll = work.rng.random()
        if roll < 0.4:
            out.append(work.chains[int(work.rng.integers(len(work.chains)))])
        else:
            out.append(work.chain(shared=roll < 0.8))
    return out


def timed(fn, items) -> tuple[list[float], list[float]]:
    """CPU seconds (this thread's) and wall seconds of ``fn(item)`` for each item."""
    cpu, wall = [], []
    for item in items:
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn(item)
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return cpu, wall


def quantiles_us(times: tuple[list[float], list[float]]) -> dict:
    cpu, wall = times
    return {"p50_us": 1e6 * float(np.percentile(cpu, 50)), "p99_us": 1e6 * float(np.percentile(cpu, 99)),
            "mean_us": 1e6 * statistics.fmean(cpu), "wall_p50_us": 1e6 * float(np.percentile(wall, 50)),
            "wall_p99_us": 1e6 * float(np.percentile(wall, 99))}


class Clock:
    """CPU seconds of this thread and wall seconds since it was made."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.thread_time()

    def split(self) -> tuple[float, float]:
        return time.thread_time() - self.cpu, time.perf_counter() - self.wall


def part_route(args, impl: Impl) -> dict:
    work, rng = Workload(args.seed), np.random.default_rng(args.seed + 2)
    fill(impl, messages_for(impl, work, args.blocks, 256), args.blocks, args.batch)
    extra = work.chains[:len(work.chains) // 8]  # an eighth of the prompts cached on a second worker too
    impl.ingest([impl.encode(stored(f"w{(i * 7 + 3) % 256}", c)) for i, c in enumerate(extra)])
    asks = requests(work, args.requests)
    out = {"blocks": len(impl.index)}
    for n in args.replicas:
        replicas, pending, inflight = replicas_with_loads(n, rng)
        if impl.name == "baseline":
            def decide(hashes):
                shape = RequestShape(CHAIN * BLOCK_TOKENS, BLOCK_TOKENS, impl.index.matched_blocks(hashes), 0.5,
                                     tuple(hashes))
                return pick_prefill(replicas, shape)
        else:
            router = FleetRouter([r.worker_id for r in replicas], impl.index, BLOCK_TOKENS)
            router.loads[:], router.inflight[:] = pending, inflight

            def decide(hashes):
                return router.route(hashes, CHAIN * BLOCK_TOKENS)
        timed(decide, asks[:200])  # warm up
        out[f"route_{n}"] = quantiles_us(timed(decide, asks))
        out[f"route_{n}"]["best_of_3_p99_us"] = best_of_3_p99(decide, asks)
    out["match_only"] = quantiles_us(timed(impl.index.matched_blocks, asks))
    tokens = [list(range(i, i + CHAIN * BLOCK_TOKENS)) for i in range(50)]
    hash_ids = prompt_block_ids if impl.name == "compact-c" else lambda t, size: block_ids(hash_blocks(t, size))
    out["hash_prompt"] = quantiles_us(timed(lambda t: hash_ids(t, BLOCK_TOKENS), tokens))
    out["predict"] = quantiles_us(timed(lambda h: impl.index.predict("w1", h, 1e9), asks[:500]))
    return out


def best_of_3_p99(fn, items) -> float:
    """p99 over items of each item's least CPU time in three runs: what the decision costs
    with the other tenants' preemptions (and the cold caches they leave) filtered out."""
    runs = [timed(fn, items)[0] for _ in range(3)]
    return 1e6 * float(np.percentile(np.min(runs, axis=0), 99))


def part_redis(args, impl: Impl) -> dict:
    """Ingest end to end: XREAD from a real redis-server on this machine (sharing its cores),
    ``--batch`` entries a read, decoded and applied."""
    from kvstore.redis_server import RedisServer

    work = Workload(args.seed)
    messages = messages_for(impl, work, args.blocks, 64)
    with RedisServer() as url:
        client = redis.Redis.from_url(url)
        keys = RedisKeys("bench")
        for lo in range(0, len(messages), 500):
            pipe = client.pipeline(transaction=False)
            for m in messages[lo:lo + 500]:
                pipe.xadd(keys.kv_events, {b"e": m})
            pipe.execute()
        events = KVEventSubscriber(client, keys)
        clock, sent = Clock(), 0
        while raw := events.read_raw(0, args.batch):
            impl.ingest(raw)
            sent += CHAIN * len(raw)
        cpu, wall = clock.split()
    return {"blocks": len(impl.index), "cpu_blocks_per_s": sent / cpu, "wall_blocks_per_s": sent / wall}


def part_dispatch(args, impl: Impl) -> dict:
    """ClusterView.shape + pick_prefill per request, with ``impl``'s core under the view's index
    (``compact-c`` or ``compact-numpy``); ``python_rule``: the same shape's pick by
    pool_handles.pick_prefill over the usable Replica objects (what the dispatcher ran before)."""
    from cluster.cluster_view import ClusterView
    from cluster.pool_handles import Pools

    rng = np.random.default_rng(args.seed)
    prefixes = [rng.integers(0, 50_000, PREFIX * BLOCK_TOKENS).tolist() for _ in range(GROUPS)]

    def prompt() -> list[int]:
        n = int(rng.integers(0, PREFIX + 1)) * BLOCK_TOKENS
        return prefixes[int(rng.integers(GROUPS))][:n] + rng.integers(0, 50_000, CHAIN * BLOCK_TOKENS - n).tolist()

    cached = [prompt() for _ in range(max(1, args.blocks // (CHAIN - PREFIX // 2)))]
    asks = [cached[int(rng.integers(len(cached)))] if rng.random() < 0.4 else prompt() for _ in range(args.requests)]
    out: dict = {"blocks": 0, "requests": len(asks)}
    for n in args.replicas:
        replicas, _, _ = replicas_with_loads(n, rng)
        pools = Pools(prefill=replicas)
        view = ClusterView(pools, BLOCK_TOKENS, None)
        view.prefixes = impl.index = CompactPrefixIndex(core=impl.index.core.__class__)
        impl.ingest([impl.encode(stored(f"w{i % n}", hash_blocks(p, BLOCK_TOKENS))) for i, p in enumerate(cached)])
        out["blocks"] = len(impl.index)
        others = list(replicas)  # not the pool's own list: ClusterView picks by the Python rule
        shapes = [view.shape(p, None) for p in asks]
        assert all(view.pick_prefill(replicas, s) is view.pick_prefill(others, s) for s in shapes)
        parts = {"shape": lambda p: view.shape(p, None),
                 "pick_board": lambda s: view.pick_prefill(replicas, s),
                 "pick_python_rule": lambda s: view.pick_prefill(others, s),
                 "choice_board": lambda p: view.pick_prefill(replicas, view.shape(p, None)),
                 "choice_python_rule": lambda p: view.pick_prefill(others, view.shape(p, None))}
        out[f"replicas_{n}"] = {name: best_of_runs(fn, shapes if name.startswith("pick") else asks, args.repeat)
                                for name, fn in parts.items()}
    return out


def best_of_runs(fn, items, repeat: int) -> dict:
    """CPU time per item, the least of ``repeat`` passes (after a warm-up pass): p50, p99, mean."""
    fn(items[0])
    runs = np.min([timed(fn, items)[0] for _ in range(max(1, repeat))], axis=0)
    return {"p50_us": 1e6 * float(np.percentile(runs, 50)), "p99_us": 1e6 * float(np.percentile(runs, 99)),
            "mean_us": 1e6 * float(np.mean(runs))}


PARTS = {"ingest": part_ingest, "route": part_route, "redis": part_redis}
ALL_PARTS = {**PARTS, "dispatch": part_dispatch}


def child(args) -> None:
    impl = Impl(args.impl)
    print(json.dumps({**ALL_PARTS[args.part](args, impl), "load_avg_1m": os.getloadavg()[0]}))


def run_child(args, part: str, impl: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.router_scale", "--child", part, "--impl", impl,
           "--blocks", str(args.blocks), "--batch", str(args.batch), "--requests", str(args.requests),
           "--seed", str(args.seed), "--repeat", str(args.repeat), "--replicas", *map(str, args.replicas)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{part}/{impl} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_of(runs: list[dict], part: str) -> dict:
    """Ingest: the best rate of the runs; route: the run of median p99 at 256 replicas."""
    if part in ("ingest", "redis"):
        rate = "fill_blocks_per_s" if part == "ingest" else "cpu_blocks_per_s"
        best = max(runs, key=lambda r: r[rate])
        return {**best, "runs": [{k: v for k, v in r.items() if k.endswith("per_s")} for r in runs]}
    sizes = [int(k[6:]) for k in runs[0] if k.startswith("route_") and k[6:].isdigit()]
    key = f"route_{256 if 256 in sizes else max(sizes)}"
    ordered = sorted(runs, key=lambda r: r[key]["p99_us"])
    return {**ordered[len(ordered) // 2], "runs_p99_us": [r[key]["p99_us"] for r in runs]}


def machine() -> dict:
    cpu = cpu_model()
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(),
            "load_avg_1_5_15": list(os.getloadavg()), "python": platform.python_version(), "numpy": np.__version__}


def router_cost(results: dict) -> dict:
    """The few numbers simulator/router_cost.py sizes a fleet's routers from, per index."""
    impls = {}
    for impl, r in results.items():
        ingest, route = r["ingest"], r["route"]
        rates = [ingest["fill_blocks_per_s"], ingest["churn_blocks_per_s"], ingest["small_events_blocks_per_s"]]
        if "redis" in r:
            rates.append(r["redis"]["cpu_blocks_per_s"])
        sizes = sorted(int(k[6:]) for k in route if k.startswith("route_") and k[6:].isdigit())
        impls[impl] = {"ingest_blocks_per_s": min(rates),
                       "decision_us": {str(n): route[f"route_{n}"]["mean_us"] for n in sizes},
                       "decision_p99_us": {str(n): route[f"route_{n}"]["p99_us"] for n in sizes},
                       "hash_us_per_block": route["hash_prompt"]["mean_us"] / CHAIN,
                       "predict_us_per_block": route["predict"]["mean_us"] / CHAIN,
                       "bytes_per_block": ingest.get("accounted_bytes_per_block", ingest["rss_bytes_per_block"])}
    return {"source": "benchmarks/router_scale.py", **machine(), "block_tokens": BLOCK_TOKENS,
            "prompt_blocks": CHAIN, "note": "ingest: the slowest of fill, churn, 16-block events and XREAD from "
            "redis (CPU); decision: mean CPU time of match + pick on 4K-token prompts", "impls": impls}


def fleet_model(cost: dict, fleet: list[int], blocks_per_replica: float) -> dict:
    """simulator/router_cost.py's answer for ``n`` prefill replicas at 10k tokens/s each, 4K-token
    prompts, each replica caching ``blocks_per_replica`` blocks."""
    from simulator.router_cost import RouterCost, routers_needed
    model = {}
    for impl in cost["impls"]:
        c = RouterCost.from_dict(cost, impl)
        model[impl] = [{"replicas": n, **routers_needed(c, n * TOKENS_PER_S, n * TOKENS_PER_S / (CHAIN * BLOCK_TOKENS),
                                                        n, CHAIN * BLOCK_TOKENS, BLOCK_TOKENS,
                                                        n * blocks_per_replica).as_dict()} for n in fleet]
    return model


def plot(out: Path, model: dict, record: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for i, (impl, rows) in enumerate(model.items()):
        n = [r["replicas"] for r in rows]
        ok = [r for r in rows if r["routers"] is not None]
        axes[0].plot([r["replicas"] for r in ok], [r["routers"] for r in ok], marker="o", color=f"C{i}", label=impl)
        axes[1].plot([r["replicas"] for r in ok], [r["cores"] for r in ok], marker="o", color=f"C{i}", label=impl)
        shard = [r["replicas"] for r in rows if r["routers"] is None]
        if shard:
            axes[0].scatter(shard, [64] * len(shard), marker="x", color=f"C{i}", s=60,
                            label=f"{impl}: ingest > {UTILIZATION:.0%} of a core (shard)")
        axes[2].plot(n, [r["index_bytes"] / 1e9 for r in rows], marker="o", color=f"C{i}", label=impl)
    axes[1].axhline(1.0, color="C3", linestyle="--", label="one core")
    labels = ("router processes needed", "router CPU cores in all (ingest x routers + routing)",
              "prefix index memory per router (GB)")
    for ax, label in zip(axes, labels):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2 if ax is axes[0] else 10)
        ax.set_xlabel("prefill replicas (10k tokens/s each)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="center left" if ax is axes[0] else "upper left")
    load, end = record["load_avg_1_5_15"][0], record.get("load_avg_at_end", [float("nan")])[0]
    fig.suptitle(f"router cost against fleet size (simulator/router_cost.py on numbers measured {record['date'][:16]} "
                 f"UTC, {record['cores']} cores shared, load {load:.1f} -> {end:.1f}; 4K-token prompts, "
                 f"16-token blocks, {UTILIZATION:.0%} of a core per router)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "router_scale.png", dpi=130)
    plt.close(fig)


def replot(out: Path) -> None:
    """The model and plot again from a run's router_cost.json and router_scale.json."""
    record = json.loads((out / "router_scale.json").read_text())
    cost = json.loads((out / "router_cost.json").read_text())
    record["fleet_model"] = fleet_model(cost, [r["replicas"] for r in next(iter(record["fleet_model"].values()))],
                                        record["blocks"] / 64)
    (out / "router_scale.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(out, record["fleet_model"], record)


def dispatcher(args, out: Path) -> None:
    """The ``--dispatcher`` run: both compact cores, one child each, into dispatcher_choice.json."""
    record = {"benchmark": "router_scale --dispatcher", **machine(), "repeat": args.repeat,
              "note": "CPU us per request, least of `repeat` passes; 4K-token prompts, 16-token blocks",
              "results": {impl: run_child(args, "dispatch", impl) for impl in ("compact-c", "compact-numpy")
                          if impl in args.impls}}
    record["load_avg_at_end"] = list(os.getloadavg())
    (out / "dispatcher_choice.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=1000, help="messages applied at once (one XREAD's worth)")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--replicas", type=int, nargs="+", default=FLEET)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="100k blocks, one run (a smoke test)")
    p.add_argument("--replot", metavar="DIR", help="redo the fleet model and plot of a run in DIR")
    p.add_argument("--dispatcher", action="store_true", help="time ClusterView's prefill choice instead (see above)")
    p.add_argument("--child", choices=ALL_PARTS, help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(argparse.Namespace(**{**vars(args), "part": args.child}))
        return 0
    if args.replot:
        replot(Path(args.replot))
        return 0
    if args.quick:
        args.blocks, args.repeat, args.requests = min(args.blocks, 100_000), 1, min(args.requests, 500)
    out = Path(args.out or os.environ.get("OUT") or "out/router-scale")
    out.mkdir(parents=True, exist_ok=True)
    if args.dispatcher:
        dispatcher(args, out)
        return 0
    results: dict = {}
    started = machine()
    for impl in args.impls:
        results[impl] = {}
        for part in PARTS:
            runs = [run_child(args, part, impl) for _ in range(args.repeat)]
            results[impl][part] = best_of(runs, part)
            print(f"{impl} {part}: {json.dumps(results[impl][part])}", flush=True)
    cost = router_cost(results)
    model = fleet_model(cost, args.replicas, args.blocks / 64)
    goals = {}
    if "compact-c" in results:
        c = results["compact-c"]
        goals = {"ingest_blocks_per_s": c["ingest"]["fill_blocks_per_s"],
                 "redis_ingest_blocks_per_s": c["redis"]["cpu_blocks_per_s"],
                 "bytes_per_block": c["ingest"].get("accounted_bytes_per_block"),
                 "rss_bytes_per_block": c["ingest"]["rss_bytes_per_block"],
                 "route_p99_us": c["route"].get("route_256", {}).get("p99_us"),
                 "route_best_of_3_p99_us": c["route"].get("route_256", {}).get("best_of_3_p99_us")}
    record = {"benchmark": "router_scale", **started, "load_avg_at_end": list(os.getloadavg()), "blocks": args.blocks,
              "batch": args.batch,
              "repeat": args.repeat, "results": results, "fleet_model": model, "goals": GOALS, "measured": goals}
    (out / "router_scale.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "router_cost.json").write_text(json.dumps(cost, indent=1) + "\n")
    plot(out, model, record)
    print(json.dumps({"measured": goals, "goals": GOALS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
