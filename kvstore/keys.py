"""Names of everything the kvstore keeps in Redis, under one prefix.

``<p>:loc:<key>``   hash: holder field ``<tier>|<worker>`` -> slot (block id there, -1 on host)
``<p>:lru:<tier>|<worker>`` sorted set: a holder's blocks by last use (logical clock)
``<p>:clock``       counter: the logical clock LRU scores come from
``<p>:pin:<key>``   sorted set: lease id -> expiry (ms); live members pin the block
``<p>:blk:<key>``   hash: host-tier payload ``d`` and its checksum ``c``
``<p>:host:used``   counter: payload bytes the host tier holds
``<p>:rdzv:<a>|<b>`` list: the rendezvous record of a pair group being formed
``<p>:pair:<a>|<b>`` string: the epoch of the pair's live group (absent: none, or dropped)
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

_WORKER_ID = re.compile(r"^[A-Za-z0-9_.:@/-]+$")


class Tier(str, enum.Enum):
    """Where a holder keeps a block: its paged KV cache (gpu) or host memory."""

    GPU = "gpu"
    HOST = "host"


HOST_WORKER = "redis-host"  # the host tier's holder name: its blocks are indexed as this worker's


def check_worker_id(worker_id: str) -> str:
    if not isinstance(worker_id, str) or not _WORKER_ID.match(worker_id):
        raise ValueError(f"worker id must be non-empty letters, digits and _.:@/-, got {worker_id!r}")
    return worker_id


@dataclass(frozen=True)
class Holder:
    """One copy of a block: which worker, which tier, which slot (block id) there."""

    worker_id: str
    tier: Tier
    slot: int

    @property
    def field(self) -> str:
        return holder_field(self.worker_id, self.tier)


def holder_field(worker_id: str, tier: Tier) -> str:
    return f"{Tier(tier).value}|{check_worker_id(worker_id)}"


def parse_holder(field: bytes | str, slot: bytes | str) -> Holder:
    text = field.decode() if isinstance(field, bytes) else field
    tier, _, worker = text.partition("|")
    return Holder(worker, Tier(tier), int(slot))


@dataclass(frozen=True)
class RedisKeys:
    """Key names under ``prefix``."""

    prefix: str

    def loc(self, key: str) -> str:
        return f"{self.prefix}:loc:{key}"

    def lru(self, worker_id: str, tier: Tier) -> str:
        return f"{self.prefix}:lru:{holder_field(worker_id, tier)}"

    def pin(self, key: str) -> str:
        return f"{self.prefix}:pin:{key}"

    def payload(self, key: str) -> str:
        return f"{self.prefix}:blk:{key}"

    @property
    def clock(self) -> str:
        return f"{self.prefix}:clock"

    @property
    def host_used(self) -> str:
        return f"{self.prefix}:host:used"

    @property
    def kv_events(self) -> str:
        return f"{self.prefix}:kv-events"

    def rendezvous(self, rank0: str, rank1: str) -> str:
        return f"{self.prefix}:rdzv:{check_worker_id(rank0)}|{check_worker_id(rank1)}"

    def pair_epoch(self, rank0: str, rank1: str) -> str:
        return f"{self.prefix}:pair:{check_worker_id(rank0)}|{check_worker_id(rank1)}"

    @property
    def pair_epochs(self) -> str:
        """SCAN pattern of every pair epoch."""
        return f"{self.prefix}:pair:*"
