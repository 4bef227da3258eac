"""Router policies: which replica of a pool takes a request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from simulator.replica import Replica

if TYPE_CHECKING:
    from simulator.request import Request


class Router:
    """round_robin: in turn; least_loaded: fewest queued prompt tokens, then least KV in use;
    prefix_aware: fewest queued tokens counting this prompt minus what the replica has cached
    (Mooncake-style cache-aware balancing). Decode replicas go to the least KV held and asked for."""

    __slots__ = ("policy", "_turn")

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self._turn: dict[int, int] = {}

    def pick_prefill(self, replicas: Sequence[Replica], req: Request) -> Replica:
        if self.policy == "round_robin":
            return self._next(replicas)
        if self.policy == "prefix_aware" and req.hash_ids and replicas[0].cache is not None:
            return min(replicas, key=lambda r: (r.queued_tokens - r.cached_tokens(req), r.in_use()))
        return min(replicas, key=lambda r: (r.queued_tokens, r.in_use()))

    def pick_decode(self, replicas: Sequence[Replica]) -> Replica:
        if self.policy == "round_robin":
            return self._next(replicas)
        return min(replicas, key=Replica.kv_load)

    def _next(self, replicas: Sequence[Replica]) -> Replica:
        key = id(replicas)
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        return replicas[turn % len(replicas)]
