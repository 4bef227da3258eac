"""The dispatcher's prefill choice over arrays: ``pool_handles.pick_prefill``'s rule as
``FleetRouter.pick`` (one C call, numpy without the C core) for a pool whose replicas write
their loads and states onto a board as they change (``Replica.__setattr__``), so a choice
reads arrays instead of walking Replica objects. A colocated pool's choice is the same rule
with the KV each replica holds added to its load (``pick_colocated``: ``decode_weight``).

Which replicas are candidates is ``pool_handles.usable``'s rule: never a down one or one the
caller excludes, the ready ones if any, else the degraded ones. The request's side comes from
its RequestShape (the matches ClusterView.shape made, segment credits), so a choice is the
Python rule's for the same shape and loads (tests/cluster/test_prefill_board.py).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

import numpy as np

from cluster.fleet_router import FleetRouter
from cluster.index.compact_index import CompactPrefixIndex
from cluster.pool_handles import MIRRORED, Replica, RequestShape, held_tokens
from kvstore.keys import HOST_WORKER
from router.backend import HealthState

READY, DEGRADED, DOWN = 0, 1, 2
_CODES = {HealthState.READY: READY, HealthState.DEGRADED: DEGRADED, HealthState.DOWN: DOWN}


class PrefillBoard:
    """``replicas`` (a pool, in its order) attached: from now on they write their pending tokens,
    requests in flight and states here."""

    def __init__(self, replicas: list[Replica], index: CompactPrefixIndex, block_size: int,
                 decode_weight: float | None = None):
        self.replicas, self.block_size, self.decode_weight = replicas, block_size, decode_weight
        self.router = FleetRouter([r.worker_id for r in replicas], index, block_size, HOST_WORKER)
        self.slots = {r.worker_id: i for i, r in enumerate(replicas)}
        self.states = np.zeros(len(replicas), np.int8)
        # a prefill pool's load is its pending tokens; a colocated one's adds its held KV, weighted
        self.pending = self.router.loads if decode_weight is None else np.zeros(len(replicas), np.float64)
        self.held = np.zeros(len(replicas), np.float64)
        self._counts = np.zeros(len(replicas), np.int64)
        for i, r in enumerate(replicas):
            r.board, r.slot = self, i
            for name in MIRRORED:
                self.write(i, name, getattr(r, name))

    def write(self, slot: int, name: str, value: object) -> None:
        if isinstance(value, HealthState):
            self.states[slot] = _CODES[value]
        elif name == "pending_tokens":
            self.pending[slot] = cast(float, value)
        elif name == "inflight":
            self.router.inflight[slot] = cast(int, value)
        elif self.decode_weight is not None:  # load or claims: the KV it holds
            self.held[slot] = held_tokens(self.replicas[slot], self.block_size)

    def candidates(self, exclude: Collection[str]) -> np.ndarray | None:
        """The usable replicas' slots, in order; None for all of them."""
        if not exclude and not self.states.any():
            return None
        ok = self.states != DOWN
        for worker in exclude:
            if (slot := self.slots.get(worker)) is not None:
                ok[slot] = False
        ready = ok & (self.states == READY)
        return np.flatnonzero(ready if ready.any() else ok)

    def pick(self, shape: RequestShape, exclude: Collection[str] = ()) -> Replica | None:
        """The replica to prefill ``shape`` on; None when every one is down or excluded."""
        among = self.candidates(exclude)
        if among is not None and not len(among):
            return None
        counts = self._counts
        counts[:] = 0
        for worker, blocks in shape.matched_blocks.items():
            if (slot := self.slots.get(worker)) is not None:
                counts[slot] = blocks
        credit = None
        if shape.segment_tokens:
            credit = np.zeros(len(self.replicas), np.float64)
            for worker, tokens in shape.segment_tokens.items():
                if (slot := self.slots.get(worker)) is not None:
                    credit[slot] = tokens
        if self.decode_weight is not None:  # pick_colocated's load: pending + decode_weight * held
            np.multiply(self.held, self.decode_weight, out=self.router.loads)
            self.router.loads += self.pending
        chosen = self.router.pick(counts, shape.matched_blocks.get(HOST_WORKER, 0), shape.prompt_tokens,
                                  shape.block_size, shape.host_pull_weight, credit, among)
        return self.replicas[chosen]
