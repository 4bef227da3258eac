"""An attention replica: one attention worker (cache partition) per model worker it serves,
their links, and a KV handoff endpoint through which prefill workers send prompts' KV.

The replica's memory is split evenly among the model workers assigned to it (``sessions``);
each model worker owns the block accounting of its partition. ``attach(model_id)`` forms that
model worker's link (the model worker connects at the same time) and serves it on a thread
until it detaches or the link breaks; a restarted model worker attaches again and gets the same
partition (tables empty: its accounting starts empty too, so nothing leaks).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import redis
import torch

from attention_offload.link import LinkEndpoint
from attention_offload.worker import AttentionShape, AttentionWorker
from engine.config import CacheConfig
from kvstore.config import TransportConfig
from kvstore.handoff import KVHandoff
from kvstore.keys import RedisKeys
from kvstore.pair_groups import PairGroups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttentionInfo:
    """What a model worker needs to know before it attaches."""

    worker_id: str
    num_blocks: int       # per session (model worker)
    block_size: int
    device: str
    sessions: tuple[str, ...]


def cache_blocks(shape: AttentionShape, cache: CacheConfig, dtype: torch.dtype, device: torch.device) -> int:
    """Blocks of the whole replica: the configured count, or what memory holds (no weights here)."""
    if cache.num_blocks is not None:
        return cache.num_blocks
    per_block = shape.bytes_per_block(cache.block_size, dtype)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * cache.memory_fraction) - (256 << 20)  # room for a step's q/k/v and outputs
    else:
        budget = cache.cpu_cache_bytes
    if budget < per_block:
        raise ValueError(f"no memory for an attention cache: {budget} bytes for blocks of {per_block}")
    return budget // per_block


class AttentionService:
    def __init__(self, worker_id: str, shape: AttentionShape, cache: CacheConfig, dtype: torch.dtype,
                 device: torch.device | str, sessions: tuple[str, ...], client: redis.Redis, keys: RedisKeys,
                 transport: TransportConfig, link_device: str | None = None):
        """``link_device``: the links' (None: the cache's); see OffloadSpec.link_device."""
        if not sessions:
            raise ValueError(f"attention replica {worker_id} serves no model worker")
        self.worker_id, self.device = worker_id, torch.device(device)
        self.sessions = tuple(sessions)
        total = cache_blocks(shape, cache, dtype, self.device)
        per = total // len(sessions)
        self.workers = {s: AttentionWorker(shape, per, cache.block_size, dtype, self.device) for s in sessions}
        self.endpoint = LinkEndpoint(worker_id, client, keys, transport, link_device or self.device)
        self.groups = PairGroups(worker_id, client, keys, transport, self.device)
        self.handoff = KVHandoff(self.groups, transport)
        self._threads: dict[str, threading.Thread] = {}
        self.ended: dict[str, str] = {}
        self._lock = threading.Lock()

    def info(self) -> AttentionInfo:
        any_worker = next(iter(self.workers.values()))
        return AttentionInfo(self.worker_id, any_worker.num_blocks, any_worker.block_size, str(self.device),
                             self.sessions)

    def attach(self, model_id: str) -> None:
        """Form ``model_id``'s link (it connects at the same time) and serve it on a thread."""
        worker = self._worker(model_id)
        link = self.endpoint.connect(model_id)
        thread = threading.Thread(target=self._serve, args=(model_id, worker, link), name=f"attention-{model_id}",
                                  daemon=True)
        with self._lock:
            self._threads[model_id] = thread
        thread.start()

    def _serve(self, model_id: str, worker: AttentionWorker, link) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        reason = worker.serve(link)
        self.ended[model_id] = reason
        log.warning("attention replica %s: session of %s ended: %s", self.worker_id, model_id, reason)

    def receive_kv(self, request_id: str, block_ids: list[int], peer: str, model_id: str) -> int:
        """A prefill worker's KV for ``model_id``'s reservation, into its partition."""
        return self.handoff.recv(self._worker(model_id).kv_cache, block_ids, peer, request_id)

    def tables(self, model_id: str) -> int:
        """Block tables held for ``model_id``'s session (0 between sessions)."""
        return len(self._worker(model_id).mirror)

    def _worker(self, model_id: str) -> AttentionWorker:
        if model_id not in self.workers:
            raise KeyError(f"attention replica {self.worker_id} does not serve {model_id!r} "
                           f"(it serves {', '.join(self.sessions)})")
        return self.workers[model_id]

    def close(self) -> None:
        self.endpoint.close_all()
        self.groups.close_all()
