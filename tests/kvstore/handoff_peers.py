"""Two real processes exchanging KV over a pair group formed through Redis.

Used by tests/kvstore (gloo, CPU) and tests/gpu (NCCL, one GPU each). Both processes
build the same random caches from fixed seeds, so the receiver can check the bytes it
got without the test shipping tensors around. Each side reports one outcome per step.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp

from kvstore.config import TransportConfig
from kvstore.errors import KVStoreError
from kvstore.handoff import _TAG_HEADER, KVHandoff
from kvstore.handoff_header import MESSAGE_BYTES
from kvstore.keys import RedisKeys
from kvstore.layout import KVLayout
from kvstore.pair_groups import PairGroups

SENDER, RECEIVER = "prefill-0", "decode-0"
NUM_BLOCKS = 48


@dataclass(frozen=True)
class Step:
    """One handoff attempt: what each side believes about it."""

    send_request: str
    recv_request: str
    send_blocks: int
    recv_blocks: int
    seed: int
    reform: bool = False  # both sides drop their pair group first and form a new one
    garbage: bool = False  # the sender sends an unreadable header instead of a handoff


@dataclass(frozen=True)
class Outcome:
    step: int
    error: str | None = None   # "ErrorType: message"
    exact: bool | None = None  # receiver only: received blocks equal the sender's


def caches(layout: KVLayout, seed: int, device: str) -> tuple[torch.Tensor, list[int], list[int]]:
    """The sender's cache for ``seed`` and random, non-contiguous source / destination ids."""
    gen = torch.Generator().manual_seed(seed)
    shape = (layout.num_layers, 2, NUM_BLOCKS, layout.block_size, layout.num_kv_heads, layout.head_dim)
    kv = torch.randn(shape, generator=gen).to(layout.torch_dtype).to(device)
    src = torch.randperm(NUM_BLOCKS, generator=gen).tolist()
    dst = torch.randperm(NUM_BLOCKS, generator=gen).tolist()
    return kv, src, dst


def run_peer(role: str, redis_url: str, prefix: str, layout: KVLayout, steps: list[Step],
             config: TransportConfig, device: str, results: mp.Queue, step_done: mp.Barrier) -> None:
    import redis
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    client = redis.Redis.from_url(redis_url)
    peer = RECEIVER if role == SENDER else SENDER
    with PairGroups(role, client, RedisKeys(prefix), config, device) as groups:
        handoff = KVHandoff(groups, config)
        for index, step in enumerate(steps):
            if step.reform:
                groups.close(peer)
            if step.garbage and role == SENDER:
                group = groups.get(peer)
                garbage = torch.full((MESSAGE_BYTES,), 7, dtype=torch.uint8, device=device)
                group.backend.send([garbage], group.peer_rank, _TAG_HEADER).wait()
                results.put((role, Outcome(index)))
            else:
                results.put((role, _attempt(role, handoff, peer, layout, step, index, device)))
            step_done.wait(timeout=120)  # both finish a step before either starts the next


def _attempt(role: str, handoff: KVHandoff, peer: str, layout: KVLayout, step: Step, index: int,
             device: str) -> Outcome:
    src_kv, src_ids, dst_ids = caches(layout, step.seed, device)
    try:
        if role == SENDER:
            if step.send_request:
                handoff.send(src_kv, src_ids[:step.send_blocks], peer, step.send_request)
            return Outcome(index)
        dst_kv = torch.zeros_like(src_kv)
        ids = dst_ids[:step.recv_blocks]
        handoff.recv(dst_kv, ids, peer, step.recv_request)
        moved = dst_kv[:, :, ids].view(torch.uint8).cpu()
        expected = src_kv[:, :, src_ids[:step.recv_blocks]].view(torch.uint8).cpu()
        others = [i for i in range(NUM_BLOCKS) if i not in ids]
        untouched = bool(dst_kv[:, :, others].view(torch.uint8).count_nonzero() == 0)
        return Outcome(index, exact=torch.equal(moved, expected) and untouched)
    except KVStoreError as exc:
        return Outcome(index, error=f"{type(exc).__name__}: {exc}")


def run_pair(redis_url: str, prefix: str, layouts: tuple[KVLayout, KVLayout], steps: list[Step],
             configs: tuple[TransportConfig, TransportConfig], devices: tuple[str, str],
             timeout_s: float = 240) -> dict[str, list[Outcome]]:
    """Run the sender and receiver processes (each its layout, config, device); outcomes by side."""
    ctx = mp.get_context("spawn")
    results, step_done = ctx.Queue(), ctx.Barrier(2)
    procs = [ctx.Process(target=run_peer, args=(role, redis_url, prefix, layout, steps, config, device,
                                                results, step_done))
             for role, layout, config, device in zip((SENDER, RECEIVER), layouts, configs, devices)]
    for proc in procs:
        proc.start()
    outcomes: dict[str, list[Outcome]] = {SENDER: [], RECEIVER: []}
    try:
        for _ in range(2 * len(steps)):
            role, outcome = results.get(timeout=timeout_s)
            outcomes[role].append(outcome)
    except queue.Empty:
        raise AssertionError(f"peers stalled; outcomes so far: {outcomes}") from None
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
    return outcomes
