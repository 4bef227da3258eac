"""One shape for every way KV blocks leave or enter a paged cache: ``BlockTransport``.

A transport is bound to one cache (or forwards to the worker that holds it) and moves a set
of its blocks, named by block id, to or from an address: a peer worker and request for a
handoff (NCCL between GPUs, gloo on CPU: kvstore/handoff.py), content keys for the host tier
(kvstore/host_tier.py), or an offloaded model worker's attention replica
(attention_offload/model_side.py). The ids come from the engine's KV port (engine/kv_port.py),
which keeps the blocks still while a transfer runs. Every call ends one of three ways:

* done: it returns how much it moved (payload bytes for a handoff; blocks for the host tier:
  those newly stored on send, those loaded on receive);
* rejected or failed: it raises a ``KVStoreError`` saying by whom and why (HandoffError,
  MissingBlocksError, ChecksumMismatchError, CapacityError, LayoutMismatchError);
* timed out: it raises a ``TimeoutError`` (HandoffTimeoutError), or the Redis client's.

The adapters here are thin: the protocols beneath them are unchanged, and run on a thread.
Cancelling a handoff's ``send`` (its receiver failed: nobody will take the blocks) tells the
transfer on its thread to give up: over NCCL it ends at once and drops the pair group, over
gloo at its timeout. The call returns only when that thread is done with the blocks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    import torch

    from kvstore.block_key import BlockKey
    from kvstore.handoff import KVHandoff
    from kvstore.host_tier import HostTier

A = TypeVar("A", contravariant=True)


class BlockTransport(Protocol[A]):
    async def send(self, block_ids: Sequence[int], to: A) -> int:
        """Copy these blocks of the cache to ``to``; returns once they are there."""
        ...

    async def receive(self, block_ids: Sequence[int], source: A) -> int:
        """Copy ``source``'s blocks into these blocks of the cache, in its order."""
        ...


@dataclass(frozen=True)
class Peer:
    """A handoff's other end: the worker whose cache holds (or takes) the blocks, and the
    request they belong to (both ends name the same one)."""

    worker_id: str
    request_id: str


class HandoffTransport:
    """``BlockTransport[Peer]`` over a worker's KVHandoff and its own cache."""

    def __init__(self, handoff: KVHandoff, kv: torch.Tensor):
        self.handoff, self.kv = handoff, kv

    async def send(self, block_ids: Sequence[int], to: Peer) -> int:
        give_up = threading.Event()
        sending = asyncio.ensure_future(asyncio.to_thread(self.handoff.send, self.kv, list(block_ids), to.worker_id,
                                                          to.request_id, give_up))
        try:
            return await asyncio.shield(sending)
        except asyncio.CancelledError:
            give_up.set()
            await asyncio.gather(sending, return_exceptions=True)  # the thread reads the blocks until it ends
            raise

    async def receive(self, block_ids: Sequence[int], source: Peer) -> int:
        return await asyncio.to_thread(self.handoff.recv, self.kv, list(block_ids), source.worker_id,
                                       source.request_id)


class HostTierTransport:
    """``BlockTransport[Sequence[BlockKey]]`` over the host tier and a worker's cache: the
    address is the blocks' content keys, one per block id."""

    def __init__(self, host: HostTier, kv: torch.Tensor):
        self.host, self.kv = host, kv

    async def send(self, block_ids: Sequence[int], to: Sequence[BlockKey]) -> int:
        return await asyncio.to_thread(self.host.put, to, self.kv, block_ids)

    async def receive(self, block_ids: Sequence[int], source: Sequence[BlockKey]) -> int:
        await asyncio.to_thread(self.host.get, source, self.kv, block_ids)
        return len(block_ids)
