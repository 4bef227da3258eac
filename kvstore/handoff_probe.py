"""Timing the KV handoff between two processes: GPU0 -> GPU1 over NCCL, or two CPU processes over gloo.

Both processes form a pair group through Redis, as prefill and decode workers do, and time the same
transfers in lockstep (a barrier before each). ``run_pair`` spawns them around any per-rank
measurement function; ``time_pair`` is the plain measurement `tierserve calibrate` runs: for each
prompt length, ``KVHandoff`` (the default transport: header, gather, chunks, scatter) moving that
many tokens' blocks between random, non-contiguous block ids of a cache of the given layout, checked
byte for byte, beside raw send/recv of one contiguous buffer of the same bytes; then all-reduces
over the pair (tensor parallelism's collective on two devices).
benchmarks/handoff.py adds its chunk-size sweep and the handoff's pieces on the same helpers.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from queue import Empty

import torch
import torch.multiprocessing as mp

from kvstore.config import TransportConfig
from kvstore.handoff import KVHandoff
from kvstore.keys import RedisKeys
from kvstore.layout import KVLayout
from kvstore.pair_groups import PairGroup, PairGroups

RANKS = ("a-sender", "b-receiver")  # sorted, so process rank == pair-group rank
DEVICES = ("cuda", "cpu")


@dataclass(frozen=True)
class HandoffTime:
    """Median seconds to move ``tokens`` tokens' KV (``nbytes``) by ``method``, and the fastest time
    (other work on the machine only adds time); ``exact``: the receiver's blocks equal the sender's,
    byte for byte (None: not checked)."""

    method: str
    tokens: int
    nbytes: int
    seconds: float
    exact: bool | None = None
    fastest: float | None = None


def check_pair_device(device: str) -> None:
    """Raise ValueError unless a pair can run on ``device`` here."""
    if device not in DEVICES:
        raise ValueError(f"the pair's device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and torch.cuda.device_count() < 2:
        raise ValueError(f"a GPU pair needs two GPUs (NCCL), this machine has {torch.cuda.device_count()}; "
                         "a CPU pair (gloo) runs anywhere")


def pair_device(device: str, rank: int) -> torch.device:
    return torch.device(f"cuda:{rank}") if device == "cuda" else torch.device("cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def barrier(group: PairGroup, device: torch.device) -> None:
    """Ping both ways so that both sides start the next transfer together."""
    probe = torch.zeros(1, dtype=torch.uint8, device=device)
    for sender in (0, 1):
        op = group.backend.send if group.rank == sender else group.backend.recv
        op([probe], group.peer_rank, 7).wait()
    sync(device)


def filled_cache(layout: KVLayout, num_blocks: int, device: torch.device, seed: int) -> tuple[torch.Tensor, list[int]]:
    """A cache of ``layout`` with 25% spare blocks, filled from an integer hash of ``seed`` (the same
    bytes on every device, so the receiver can rebuild the sender's), and ``num_blocks`` random ids."""
    shape = (layout.num_layers, 2, num_blocks + num_blocks // 4 + 1, *layout.block_shape[2:])
    kv = torch.empty(shape, dtype=layout.torch_dtype, device=device)
    for layer in range(shape[0]):
        words = kv[layer].view(torch.int16).view(-1)
        x = torch.arange(words.numel(), dtype=torch.int64, device=device) + seed * 131 + layer * 977
        words.copy_(((x & 0x7FFFFFFF) * 2654435761 >> 7) & 0x7FFF)  # no NaN/inf patterns in 16-bit halves
    gen = torch.Generator().manual_seed(seed)
    return kv, torch.randperm(shape[2], generator=gen)[:num_blocks].tolist()


def timed(group: PairGroup, device: torch.device, run: Callable[[int], object], iters: int, warmup: int) -> float:
    """Median wall seconds of ``run(i)`` after a barrier, each finished on the device."""
    return statistics.median(timings(group, device, run, iters, warmup))


def timings(group: PairGroup, device: torch.device, run: Callable[[int], object], iters: int,
            warmup: int) -> list[float]:
    """Wall seconds of ``iters`` runs of ``run(i)`` after ``warmup`` ones, each after a barrier and
    finished on the device."""
    times = []
    for i in range(warmup + iters):
        barrier(group, device)
        start = time.perf_counter()
        run(i)
        sync(device)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def run_pair(worker: Callable, args: tuple, device: str, redis_url: str, results: int,
             on_result: Callable[[], object] | None = None, timeout_s: float = 900.0) -> list:
    """Spawn the two ranks, each ``worker(rank, groups, group, device, *args, out)`` inside a pair
    group formed through ``redis_url``; ``out.put`` sends the receiver's results (the sender puts
    None for each). Returns the receiver's ``results`` items; ``on_result`` is called per item (progress)."""
    check_pair_device(device)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    prefix = f"handoff-probe-{uuid.uuid4().hex[:8]}"
    procs = [ctx.Process(target=_rank_main, args=(rank, worker, args, device, redis_url, prefix, queue))
             for rank in (0, 1)]
    for proc in procs:
        proc.start()
    got = []
    try:
        for _ in range(2 * results):
            item = _next_item(queue, procs, time.monotonic() + timeout_s)
            if isinstance(item, BaseException):
                raise RuntimeError(f"a handoff probe process failed: {item!r}") from item
            if item is not None:
                got.append(item)
            if on_result is not None:
                on_result()
    except BaseException:
        for proc in procs:  # a rank left waiting on its dead peer would wait out the transfer timeout
            proc.kill()
        raise
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    if any(proc.exitcode != 0 for proc in procs):
        raise RuntimeError(f"handoff probe processes failed: exit codes {[p.exitcode for p in procs]}")
    return got


def _next_item(queue, procs: list, deadline: float) -> object:
    """The next result; RuntimeError as soon as a rank dies without sending one (killed, or crashed
    outside Python) or both ranks ended with results missing; TimeoutError at ``deadline``."""
    while True:
        try:
            return queue.get(timeout=1.0)
        except Empty:
            codes = [p.exitcode for p in procs]  # a rank that exits 0 has sent all it had
            if any(code not in (None, 0) for code in codes) or None not in codes:
                raise RuntimeError(f"a handoff probe process ended before sending its results (exit codes "
                                   f"{codes})") from None
            if time.monotonic() > deadline:
                raise TimeoutError("the handoff probe sent no result in time") from None


def _rank_main(rank: int, worker: Callable, args: tuple, device: str, redis_url: str, prefix: str,
               queue) -> None:
    import redis
    dev = pair_device(device, rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    transport = TransportConfig(advertise_host="127.0.0.1", transfer_timeout_s=120)
    try:
        with PairGroups(RANKS[rank], redis.Redis.from_url(redis_url), RedisKeys(prefix), transport, dev) as groups:
            worker(rank, groups, groups.get(RANKS[1 - rank]), dev, *args, queue)
    except Exception as exc:
        queue.put(RuntimeError(f"rank {rank}: {type(exc).__name__}: {exc}"))
        raise


def _pair_worker(rank: int, groups: PairGroups, group: PairGroup, device: torch.device, layout: KVLayout,
                 tokens: tuple[int, ...], allreduce_bytes: tuple[int, ...], iters: int, warmup: int, out) -> None:
    for n in tokens:
        for m in handoff_times(groups, group, device, layout, n, iters, warmup):
            out.put(m if rank == 1 else None)
    for nbytes in allreduce_bytes:
        m = allreduce_time(group, device, nbytes, iters, warmup)
        out.put(m if rank == 1 else None)


def allreduce_time(group: PairGroup, device: torch.device, nbytes: int, iters: int, warmup: int) -> HandoffTime:
    """A sum all-reduce of ``nbytes`` (bf16 on CUDA, fp32 on CPU) over the pair: tensor parallelism's
    collective on two devices (method "all-reduce", tokens 0)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.ones(max(1, nbytes // dtype.itemsize), dtype=dtype, device=device)
    times = timings(group, device, lambda i: group.backend.allreduce([x]).wait(), iters, warmup)
    return HandoffTime("all-reduce", 0, x.numel() * dtype.itemsize, statistics.median(times), None, min(times))


def handoff_times(groups: PairGroups, group: PairGroup, device: torch.device, layout: KVLayout, tokens: int,
                  iters: int, warmup: int, chunks: tuple[int | None, ...] = (None,)) -> list[HandoffTime]:
    """Raw send/recv of ``tokens`` tokens' KV bytes, then ``KVHandoff`` moving the same blocks with
    each of ``chunks`` layers per chunk (None: the transport's default, method "KVHandoff"); both ranks
    call it, the receiver's list is the measurement."""
    blocks = -(-tokens // layout.block_size)
    nbytes = blocks * layout.bytes_per_block
    src, src_ids = filled_cache(layout, blocks, device, seed=tokens)
    kv, ids = (src, src_ids) if group.rank == 0 else filled_cache(layout, blocks, device, seed=tokens + 1)
    raw = torch.empty(nbytes, dtype=torch.uint8, device=device)
    op = group.backend.send if group.rank == 0 else group.backend.recv
    out = [HandoffTime("raw send/recv", tokens, nbytes,
                       timed(group, device, lambda i: op([raw], group.peer_rank, 3).wait(), iters, warmup))]
    for lpc in chunks:
        transport = TransportConfig(transfer_timeout_s=120) if lpc is None else \
            TransportConfig(transfer_timeout_s=120, layers_per_chunk=lpc)
        handoff = KVHandoff(groups, transport)
        move = handoff.send if group.rank == 0 else handoff.recv
        times = timings(group, device, lambda i: move(kv, ids, group.peer, f"probe-{tokens}-{lpc}-{i}"),  # noqa: B023
                        iters, warmup)
        exact = None if group.rank == 0 else torch.equal(kv[:, :, ids].view(torch.uint8),
                                                         src[:, :, src_ids].view(torch.uint8))
        if group.rank == 1:
            kv[:, :, ids] = 0  # the next chunking must write every byte again
        out.append(HandoffTime("KVHandoff" if lpc is None else f"KVHandoff chunk={lpc}", tokens, nbytes,
                               statistics.median(times), exact, min(times)))
    return out


def time_pair(layout: KVLayout, device: str, tokens: tuple[int, ...], redis_url: str,
              allreduce_bytes: tuple[int, ...] = (), iters: int = 5, warmup: int = 2,
              on_result: Callable[[], object] | None = None) -> list[HandoffTime]:
    """The receiver's raw and KVHandoff times for each prompt length (two per length), then an
    all-reduce time for each size in ``allreduce_bytes``."""
    if any(t < 1 for t in tokens) or any(b < 1 for b in allreduce_bytes) or not (tokens or allreduce_bytes):
        raise ValueError(f"token counts and all-reduce sizes must be positive (and some given), got "
                         f"{list(tokens)}, {list(allreduce_bytes)}")
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got {iters}, {warmup}")
    return run_pair(_pair_worker, (layout, tuple(tokens), tuple(allreduce_bytes), iters, warmup), device, redis_url,
                    2 * len(tokens) + len(allreduce_bytes), on_result)
