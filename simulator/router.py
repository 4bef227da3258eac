"""Router policies: which replica of a pool takes a request."""

from __future__ import annotations

from collections.abc import Sequence

from simulator.replica import Replica
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
        # the first of the least (queued tokens, KV in use), as one int: queued * 2**48 + in use
        # (KV tokens in use < 2**48; hot: Replica.in_use inlined; on_demand is the same for a pool)
        if self.policy == "prefix_aware" and req.hash_ids and replicas[0].cache is not None:
            keys = [(r.queued_tokens - r.cached_tokens(req) << 48)
                    + (r.kv_used + r.batch.context if r.on_demand else r.kv_used) for r in replicas]
        elif replicas[0].on_demand:
            keys = [(r.queued_tokens << 48) + r.kv_used + r.batch.context for r in replicas]
        else:
            keys = [(r.queued_tokens << 48) + r.kv_used for r in replicas]
        return replicas[keys.index(min(keys))]

    def pick_decode(self, replicas: Sequence[Replica]) -> Replica:
        if self.policy == "round_robin":
            return self._next(replicas)
        if replicas[0].on_demand:  # Replica.kv_load (hot); on_demand is the same for a pool
            loads = [r.kv_used + r.pending_tokens + r.batch.context for r in replicas]
        else:
            loads = [r.kv_used + r.pending_tokens for r in replicas]
        return replicas[loads.index(min(loads))]  # the first of the least loaded

    def _next(self, replicas: Sequence[Replica]) -> Replica:
        key = id(replicas)
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        return replicas[turn % len(replicas)]
