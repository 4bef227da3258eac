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
            queued = [r.queued_tokens - r.cached_tokens(req) for r in replicas]
        else:
            queued = [r.queued_tokens for r in replicas]
        # min over (queued tokens, KV in use), the first on ties; KV in use only read on ties (hot)
        least = min(queued)
        if queued.count(least) == 1:
            return replicas[queued.index(least)]
        return min((r for r, q in zip(replicas, queued) if q == least), key=Replica.in_use)

    def pick_decode(self, replicas: Sequence[Replica]) -> Replica:
        if self.policy == "round_robin":
            return self._next(replicas)
        loads = [r.kv_load() for r in replicas]
        return replicas[loads.index(min(loads))]  # the first of the least loaded

    def _next(self, replicas: Sequence[Replica]) -> Replica:
        key = id(replicas)
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        return replicas[turn % len(replicas)]
