"""Router policies: which replica of a pool takes a request."""

from __future__ import annotations

from collections.abc import Sequence

from simulator.replica import Replica
from simulator.request import Request

MORE = 1 << 62  # more than any count of tokens: every replica's key beats it


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
        # the first of the least (queued tokens, KV in use), compared as a pair in one pass (hot:
        # Replica.in_use inlined; on_demand is the same for a pool; KV is read only where it may decide)
        aware = self.policy == "prefix_aware" and req.hash_ids and replicas[0].cache is not None
        on_demand = replicas[0].on_demand
        best_queued = best_kv = MORE
        for r in replicas:
            queued = r.queued_tokens - r.cached_tokens(req) if aware else r.queued_tokens
            if queued <= best_queued:
                kv = r.kv_used + r.batch.context if on_demand else r.kv_used
                if queued < best_queued or kv < best_kv:
                    best_queued, best_kv, pick = queued, kv, r
        return pick

    def pick_decode(self, replicas: Sequence[Replica]) -> Replica:
        if self.policy == "round_robin":
            return self._next(replicas)
        on_demand = replicas[0].on_demand  # Replica.kv_load inlined (hot); on_demand is the same for a pool
        best = MORE
        for r in replicas:
            load = r.kv_used + r.pending_tokens + r.batch.context if on_demand else r.kv_used + r.pending_tokens
            if load < best:  # the first of the least loaded
                best, pick = load, r
        return pick

    def _next(self, replicas: Sequence[Replica]) -> Replica:
        key = id(replicas)
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        return replicas[turn % len(replicas)]
