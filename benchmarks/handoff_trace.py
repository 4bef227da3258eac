"""Where a KV handoff's time goes: a profiler timeline of one handoff on each side.

  PYTHONPATH=. python -m benchmarks.handoff_trace --tokens 4096 --layers-per-chunk 8 --out out/trace

Same set-up as ``benchmarks.handoff`` (two processes, a pair group through Redis, Llama-3-8B
KV shapes, random block ids). After a warm-up, ``torch.profiler`` records a few handoffs (the same loop as the
benchmark's timings: barrier, call, device sync);
each side prints its last one as a timeline relative to the start of its ``send``/``recv``
call: host operations (top level) and device kernels (NCCL, gather, scatter), with start and
duration in microseconds, and writes a Chrome trace per side to --out; and, for scale, the
median time of the same calls without the profiler. Read it next to the
"part:" rows of ``benchmarks.handoff``: the gaps between kernels are what a handoff pays
over raw send/recv.
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

import kvstore.handoff as handoff_module
from benchmarks.handoff import LLAMA3_8B, RANKS, _cache, _device, _timed
from kvstore.config import TransportConfig
from kvstore.keys import RedisKeys
from kvstore.pair_groups import PairGroups

MARK = "handoff"


def _worker(rank: int, args: argparse.Namespace, url: str, prefix: str) -> None:
    import redis
    if args.spin_s is not None:
        handoff_module._SPIN_S = args.spin_s
    device = _device(args, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    me, peer = RANKS[rank], RANKS[1 - rank]
    transport = TransportConfig(advertise_host="127.0.0.1", transfer_timeout_s=120,
                                layers_per_chunk=args.layers_per_chunk)
    with PairGroups(me, redis.Redis.from_url(url), RedisKeys(prefix), transport, device) as groups:
        group = groups.get(peer)
        kv, ids = _cache(args.tokens // LLAMA3_8B.block_size, device, seed=args.tokens + rank)
        handoff = handoff_module.KVHandoff(groups, transport)
        move = handoff.send if rank == 0 else handoff.recv

        def marked(i: int) -> None:
            with record_function(MARK):
                move(kv, ids, peer, f"trace-{i}")

        plain = _timed(args, group, device, marked)  # args carries warmup and iters
        print(f"{me}: without the profiler, handoff calls took {plain * 1e6:.0f} us "
              f"(median of {args.iters})", flush=True)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            _timed(args, group, device, marked)
        args.out.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(args.out / f"trace-{me}.json"))
        print(_timeline(me, prof.events()), flush=True)


def _timeline(side: str, events) -> str:
    marks = sorted((e for e in events if e.name == MARK), key=lambda e: e.time_range.start)
    if not marks:
        return f"{side}: no handoff recorded"
    last = marks[-1]
    t0, t1 = last.time_range.start, last.time_range.end
    rows = []
    for e in events:
        start = e.time_range.start
        on_device = e.device_type == DeviceType.CUDA
        if not t0 <= start <= t1 + 20_000 or e.name == MARK:
            continue
        if on_device or (e.cpu_parent is not None and e.cpu_parent.name == MARK):
            rows.append((start - t0, e.time_range.elapsed_us(), "gpu" if on_device else "cpu", e.name))
    rows.sort()
    lines = [f"== {side}: handoff call {t1 - t0:.0f} us (host); events relative to its start",
             f"{'start us':>9} {'dur us':>8}  where name"]
    lines += [f"{start:9.1f} {dur:8.1f}  {where:5} {name[:90]}" for start, dur, where, name in rows]
    end = max((s + d for s, d, w, _ in rows if w == "gpu"), default=0.0)
    lines.append(f"last device work ends at {end:.1f} us")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from kvstore.redis_server import RedisServer
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.device_count() >= 2 else "cpu")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--layers-per-chunk", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--spin-s", type=float, default=None,
                        help="override kvstore.handoff's host spin before it backs off to sleeps")
    parser.add_argument("--out", type=Path, default=Path("out/handoff-trace"))
    args = parser.parse_args(argv)
    server = RedisServer()
    url = server.start()
    try:
        ctx = mp.get_context("spawn")
        prefix = f"trace-{uuid.uuid4().hex[:8]}"
        procs = [ctx.Process(target=_worker, args=(r, args, url, prefix)) for r in (0, 1)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=600)
        if any(proc.exitcode != 0 for proc in procs):
            raise RuntimeError(f"trace workers failed: exit codes {[p.exitcode for p in procs]}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
