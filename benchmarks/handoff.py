"""KV handoff and host-tier benchmark, Llama-3-8B KV shapes (32 layers, 8 KV heads, dim 128, bf16).

  PYTHONPATH=. python -m benchmarks.handoff --out out/handoff                  # 2 GPUs, NCCL
  PYTHONPATH=. python -m benchmarks.handoff --device cpu --tokens 256 1024     # gloo smoke run

Two processes (GPU0 -> GPU1, or two CPU processes over gloo) form a pair group through
Redis. For each prompt length it times, in the same run and on the same group, raw
send/recv of one contiguous buffer of the request's bytes and ``KVHandoff`` moving the
same blocks between random, non-contiguous block ids (header, gather, chunks, scatter),
for several layer-chunk sizes, and checks the moved bytes; then the pieces of a handoff alone
("part:" rows: header round trip, gather, scatter, raw send/recv in 4 messages), to tell where
its time over raw goes. Then the Redis host tier
(``HostTier.put/get``, including the device copy and checksums) against raw pipelined
SET/GET of the same per-block values; optionally Ray Direct Transport (``--parts rdt``).
Writes handoff.json, handoff_calibration.json ({"links": [...]}) and handoff.png to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from kvstore.block_codec import block_index_tensor, gather_layers, layer_chunk, scatter_layers
from kvstore.config import KVStoreConfig
from kvstore.handoff_header import empty_message
from kvstore.handoff_probe import (
    HandoffTime,
    check_pair_device,
    filled_cache,
    handoff_times,
    pair_device,
    run_pair,
    sync,
    timed,
)
from kvstore.layout import KVLayout
from kvstore.pair_groups import PairGroup, PairGroups

LLAMA3_8B = KVLayout(num_layers=32, block_size=16, num_kv_heads=8, head_dim=128, dtype="bfloat16")
PARTS = ("pair", "host", "rdt")


@dataclass(frozen=True)
class BenchConfig:
    """What to measure; see ``--help``."""

    device: str
    tokens: tuple[int, ...]
    host_tokens: tuple[int, ...]
    layers_per_chunk: tuple[int, ...]
    iters: int
    warmup: int
    redis_url: str
    out: Path
    parts: tuple[str, ...]

    def __post_init__(self) -> None:
        bad = [t for t in self.tokens + self.host_tokens if t < LLAMA3_8B.block_size or t % LLAMA3_8B.block_size]
        if bad:
            raise ValueError(f"token counts must be positive multiples of {LLAMA3_8B.block_size}, got {bad}")
        if self.iters < 1 or self.warmup < 0:
            raise ValueError("--iters must be >= 1 and --warmup >= 0")
        if not set(self.parts) <= set(PARTS):
            raise ValueError(f"--parts must be among {PARTS}, got {self.parts}")
        check_pair_device(self.device)


def gbps(m: HandoffTime) -> float:
    return m.nbytes / m.seconds / 1e9


def _pair_worker(rank: int, groups: PairGroups, group: PairGroup, device: torch.device, config: BenchConfig,
                 out) -> None:
    for tokens in config.tokens:
        measured = handoff_times(groups, group, device, LLAMA3_8B, tokens, config.iters, config.warmup,
                                 config.layers_per_chunk)
        measured += _parts(config, group, device, tokens)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for m in measured:
            out.put(m if rank == 1 else None)


PART = "part: "  # rows that time one piece of a handoff, to tell where its time over raw goes
PART_NAMES = ("header round trip", "gather", "scatter", "raw send/recv as 4 messages")


def _parts(config: BenchConfig, group: PairGroup, device: torch.device, tokens: int) -> list[HandoffTime]:
    """The pieces of a handoff, each timed alone on the same group: the header and answer round
    trip (two small messages), the receiver's scatter and the sender's gather of all layers
    (measured on the receiver's cache: the same bytes), and raw send/recv of the same bytes as 4
    messages (the default chunking's message count)."""
    kv, ids = filled_cache(LLAMA3_8B, tokens // LLAMA3_8B.block_size, device, seed=tokens + 1)
    nbytes = len(ids) * LLAMA3_8B.bytes_per_block
    message = empty_message(device)
    send, recv = group.backend.send, group.backend.recv

    def round_trip(i: int) -> None:
        first, second = (send, recv) if group.rank == 0 else (recv, send)
        first([message], group.peer_rank, 5).wait()
        second([message], group.peer_rank, 6).wait()

    index = block_index_tensor(ids, kv.shape[2], device)
    layers = kv.shape[0]
    chunk = layer_chunk(kv, index.numel(), 0, layers)
    local = group.rank == 1
    pieces = torch.empty(nbytes, dtype=torch.uint8, device=device).chunk(4)
    op = send if group.rank == 0 else recv

    def chunked(i: int) -> None:
        for work in [op([piece], group.peer_rank, 7 + k) for k, piece in enumerate(pieces)]:
            work.wait()

    def gather(i: int) -> None:
        if local:
            gather_layers(kv, index, 0, layers)

    def scatter(i: int) -> None:
        if local:
            scatter_layers(kv, index, 0, chunk)
    sizes = (2 * message.numel() * message.element_size(), nbytes, nbytes, nbytes)
    return [HandoffTime(PART + name, tokens, size, timed(group, device, fn, config.iters, config.warmup))
            for name, size, fn in zip(PART_NAMES, sizes, (round_trip, gather, scatter, chunked))]


def bench_pair(config: BenchConfig) -> list[HandoffTime]:
    """Run sender and receiver; returns the receiver's measurements."""
    from tqdm import tqdm
    expected = len(config.tokens) * (1 + len(config.layers_per_chunk) + len(PART_NAMES))
    with tqdm(total=2 * expected, desc="pair transfers", unit="result") as bar:
        return run_pair(_pair_worker, (config,), config.device, config.redis_url, expected, bar.update)


def bench_host_tier(config: BenchConfig) -> list[HandoffTime]:
    """HostTier.put/get against raw pipelined SET/GET of the same per-block bytes."""
    from engine.block_hash import hash_blocks
    from kvstore.block_codec import block_bytes, block_index_tensor, block_major_shape, gather_block_major
    from kvstore.block_key import block_keys
    from kvstore.store import KVStore
    device = pair_device(config.device, 0)
    store = KVStore.connect(KVStoreConfig(config.redis_url, key_prefix=f"bench-{uuid.uuid4().hex[:8]}",
                                          host_tier_bytes=64 << 30))
    out = []
    try:
        for tokens in config.host_tokens:
            n = tokens // LLAMA3_8B.block_size
            kv, ids = filled_cache(LLAMA3_8B, n, device, seed=tokens)
            staging = torch.empty(block_major_shape(kv, n), dtype=kv.dtype)
            rows = block_bytes(gather_block_major(kv, block_index_tensor(ids, kv.shape[2], device), staging))
            nbytes = n * LLAMA3_8B.bytes_per_block
            times: dict[str, list[float]] = {"raw SET": [], "raw GET": [], "HostTier.put": [], "HostTier.get": []}
            for i in range(config.warmup + config.iters):
                keys = block_keys(hash_blocks(list(range(tokens)), 16, salt=f"{i}".encode()), "bench", LLAMA3_8B)
                names = [f"{store.keys.prefix}:raw:{k}" for k in keys]
                timings = _host_round(store, kv, ids, keys, names, rows, device)
                for method, seconds in timings.items():
                    times[method].append(seconds)
                store.wipe()
            out += [HandoffTime(m, tokens, nbytes, statistics.median(t[config.warmup:])) for m, t in times.items()]
    finally:
        store.wipe()
        store.close()
    return out


def _host_round(store, kv, ids, keys, names, rows, device) -> dict[str, float]:
    def clock(fn) -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    def raw_set() -> None:
        pipe = store.redis.pipeline(transaction=False)
        for name, row in zip(names, rows):
            pipe.set(name, memoryview(row))
        pipe.execute()

    def raw_get() -> None:
        pipe = store.redis.pipeline(transaction=False)
        for name in names:
            pipe.get(name)
        pipe.execute()

    target = torch.zeros_like(kv)
    timings = {"raw SET": clock(raw_set), "raw GET": clock(raw_get),
               "HostTier.put": clock(lambda: store.host.put(keys, kv, ids)),
               "HostTier.get": clock(lambda: store.host.get(keys, target, ids))}
    if not torch.equal(target[:, :, ids].view(torch.uint8), kv[:, :, ids].view(torch.uint8)):
        raise RuntimeError("host tier returned different bytes than were stored")
    return timings


def bench_ray_rdt(config: BenchConfig) -> list[HandoffTime]:
    """Ray Direct Transport (actor method returning a tensor over a Ray collective group)."""
    import ray
    from ray.experimental.collective import create_collective_group
    cuda = config.device == "cuda"
    transport = "nccl" if cuda else "gloo"

    @ray.remote(num_gpus=1 if cuda else 0, num_cpus=1)
    class Endpoint:
        def __init__(self) -> None:
            self.buffer = torch.empty(0)

        def alloc(self, nbytes: int) -> None:
            self.buffer = torch.ones(nbytes, dtype=torch.uint8, device="cuda" if cuda else "cpu")

        @ray.method(tensor_transport=transport)
        def give(self) -> torch.Tensor:
            return self.buffer

        def take(self, tensor: torch.Tensor) -> int:
            if cuda:
                torch.cuda.synchronize()
            return int(tensor.numel())

    ray.init(num_cpus=4, num_gpus=2 if cuda else 0, include_dashboard=False, log_to_driver=False)
    try:
        sender, receiver = Endpoint.remote(), Endpoint.remote()
        create_collective_group([sender, receiver], backend=transport)
        out = []
        for tokens in config.tokens:
            nbytes = tokens // LLAMA3_8B.block_size * LLAMA3_8B.bytes_per_block
            ray.get(sender.alloc.remote(nbytes))
            times = []
            for _ in range(config.warmup + config.iters):
                start = time.perf_counter()
                assert ray.get(receiver.take.remote(sender.give.remote())) == nbytes
                times.append(time.perf_counter() - start)
            out.append(HandoffTime(f"Ray RDT ({transport})", tokens, nbytes, statistics.median(times[config.warmup:])))
        return out
    finally:
        ray.shutdown()


def machine_header(config: BenchConfig) -> dict[str, str]:
    gpu = torch.cuda.get_device_name(0) if config.device == "cuda" else "none"
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if config.device == "cuda" else "n/a"
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "host": platform.node(),
            "cpu": platform.processor() or platform.machine(), "gpu": gpu, "torch": torch.__version__,
            "nccl": nccl, "device": config.device}


def ratio_to_raw(results: list[HandoffTime]) -> dict[tuple[str, int], float]:
    """Each measurement's bandwidth as a fraction of its raw baseline at the same size."""
    raw = {(m.method, m.tokens): m.seconds for m in results if m.method.startswith("raw")}
    baseline = {"HostTier.put": "raw SET", "HostTier.get": "raw GET"}
    return {(m.method, m.tokens): raw[(baseline.get(m.method, "raw send/recv"), m.tokens)] / m.seconds
            for m in results
            if not m.method.startswith(("raw", PART))
            and (baseline.get(m.method, "raw send/recv"), m.tokens) in raw}


def calibration_links(config: BenchConfig, results: list[HandoffTime]) -> list[dict]:
    """Best measured time per size for each link the simulator models."""
    dev = "gpu" if config.device == "cuda" else "cpu"
    routes = {"KVHandoff": (f"{dev}0", f"{dev}1"), "HostTier.put": (f"{dev}0", "redis-host"),
              "HostTier.get": ("redis-host", f"{dev}0")}
    links = []
    for prefix, (src, dst) in routes.items():
        for tokens in sorted({m.tokens for m in results}):
            same = [m for m in results if m.method.startswith(prefix) and m.tokens == tokens]
            if same:
                best = min(same, key=lambda m: m.seconds)
                links.append({"src": src, "dst": dst, "bytes": best.nbytes, "seconds": best.seconds,
                              "method": best.method})
    return links


def write_outputs(config: BenchConfig, results: list[HandoffTime]) -> None:
    config.out.mkdir(parents=True, exist_ok=True)
    ratios = ratio_to_raw(results)
    rows = [{**asdict(m), "gbps": gbps(m), "fraction_of_raw": ratios.get((m.method, m.tokens))} for m in results]
    report = {"machine": machine_header(config), "layout": asdict(LLAMA3_8B), "iters": config.iters,
              "results": rows}
    (config.out / "handoff.json").write_text(json.dumps(report, indent=2))
    (config.out / "handoff_calibration.json").write_text(
        json.dumps({"links": calibration_links(config, results)}, indent=2))
    plot(config, results)
    print_table(results, ratios)


def plot(config: BenchConfig, results: list[HandoffTime]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    host = {"raw SET", "raw GET", "HostTier.put", "HostTier.get"}
    pair_title = "GPU0 -> GPU1 (NCCL)" if config.device == "cuda" else "process 0 -> 1 (gloo)"
    for ax, keep, title in ((axes[0], lambda m: m not in host, pair_title),
                            (axes[1], lambda m: m in host, "Redis host tier")):
        for method in dict.fromkeys(m.method for m in results if keep(m.method) and not m.method.startswith(PART)):
            pts = sorted((m.tokens, gbps(m)) for m in results if m.method == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="prompt tokens (Llama-3-8B KV, bf16)", ylabel="GB/s", title=title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    header = machine_header(config)
    fig.suptitle(f"KV transfer, {header['gpu']} / {header['device']}, {header['date'][:10]}")
    fig.tight_layout()
    fig.savefig(config.out / "handoff.png", dpi=120)


def print_table(results: list[HandoffTime], ratios: dict[tuple[str, int], float]) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title="KV transfer (median)")
    for column in ("method", "tokens", "MiB", "ms", "GB/s", "of raw", "exact"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for m in results:
        ratio = ratios.get((m.method, m.tokens))
        table.add_row(m.method, str(m.tokens), f"{m.nbytes / 2**20:.0f}", f"{m.seconds * 1e3:.3f}",
                      f"{gbps(m):.1f}", "" if ratio is None else f"{ratio:.0%}",
                      "" if m.exact is None else str(m.exact))
    Console().print(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.device_count() >= 2 else "cpu")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--host-tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--layers-per-chunk", type=int, nargs="+", default=[32, 8, 4, 2])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--redis-url", default=None, help="default: start a private redis-server")
    parser.add_argument("--parts", nargs="+", default=["pair", "host"],
                        help=f"what to run, among {PARTS} (rdt: Ray Direct Transport)")
    parser.add_argument("--out", type=Path, default=Path("out/handoff"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from kvstore.redis_server import RedisServer
    args = parse_args(argv)
    server = None if args.redis_url else RedisServer()
    url = args.redis_url or server.start()
    try:
        config = BenchConfig(args.device, tuple(args.tokens), tuple(args.host_tokens),
                             tuple(args.layers_per_chunk), args.iters, args.warmup, url, args.out,
                             tuple(args.parts))
        runners = {"pair": bench_pair, "host": bench_host_tier, "rdt": bench_ray_rdt}
        write_outputs(config, [m for part in config.parts for m in runners[part](config)])
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
