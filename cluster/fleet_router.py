"""A routing decision among hundreds of replicas: the compact prefix index's match, then the
rule of ``pool_handles.pick_prefill`` over arrays instead of Replica objects.

With the C core the whole decision is one call (``Core.route``); without it, the match
and then ``prefill_work`` + ``pick_index`` in numpy. ``pick`` is the same rule for a match
made before (the dispatcher's RequestShape: cluster/prefill_board.py, ``Core.pick``). Both
follow ``pool_handles.pick`` (cache affinity while the pool is balanced, the least loaded
replica when it is not, ties to the earlier replica) and ``RequestShape.prefill_cost``, so
the same loads and matches give the same replica as the dispatcher's own rule
(tests/cluster/test_fleet_router.py, test_prefill_board.py).
Two routers that applied the same events and see the same loads therefore choose alike: no
part of a decision depends on arrival order, dict order or a random draw.

Segment reuse (engine/segments, cluster/index/segment_index.py) enters a decision as a *credit*: per
replica, the prompt tokens it need not compute past its cached prefix because it holds the
request's segments, taken off its work before the pick (``RequestShape.segment_tokens`` in the
dispatcher's rule). A segment index answers that lookup (``SegmentLookup``); the router keeps
no segment semantics of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cluster.index.compact_index import CompactPrefixIndex
from engine.block_hash import BlockHash
from kvstore.kv_events import block_ids


@dataclass(frozen=True)
class Balance:
    """When a pool counts as imbalanced (``pool_handles``' constants; ``dispatchers()``
    imports them there, which a process that only routes may rather not: it imports torch)."""

    ratio: float
    slack_tokens: float
    slack_requests: int

    @classmethod
    def dispatchers(cls) -> Balance:
        from cluster.pool_handles import IMBALANCE_RATIO, IMBALANCE_SLACK_REQUESTS, IMBALANCE_SLACK_TOKENS
        return cls(IMBALANCE_RATIO, IMBALANCE_SLACK_TOKENS, IMBALANCE_SLACK_REQUESTS)


class SegmentLookup(Protocol):
    """What a segment index answers in a routing decision (implemented beside router/segments.py)."""

    def credit(self, segments: Sequence[int], replicas: Sequence[str]) -> np.ndarray:
        """Per replica (float64, ``replicas`` order): prompt tokens of ``segments`` (the request's
        segment ids) past the replica's cached prefix that it would fill from its segment store."""
        ...


def prefill_work(counts: np.ndarray, host_blocks: int, prompt_tokens: int, block_size: int,
                 host_pull_weight: float, credit: np.ndarray | None = None) -> np.ndarray:
    """Tokens each replica would compute (host-tier pulls at ``host_pull_weight``, less ``credit``:
    ``RequestShape.prefill_cost``)."""
    uncached = np.maximum(0, prompt_tokens - counts * block_size)
    if host_blocks <= 0 or host_pull_weight >= 1:
        work = uncached.astype(np.float64)
    else:
        pulled = np.maximum(0, host_blocks - counts) * block_size
        work = (uncached - pulled) + host_pull_weight * pulled
    return work if credit is None else work - credit


def pick_index(work: np.ndarray, loads: np.ndarray, inflight: np.ndarray, balance: Balance) -> int:
    """``pool_handles.pick`` over arrays: the index of the chosen replica."""
    imbalanced = (loads.max() > balance.ratio * loads.min() + balance.slack_tokens
                  or inflight.max() > balance.ratio * inflight.min() + balance.slack_requests)
    keys = (inflight, loads) if imbalanced else (work, loads, inflight)
    options = np.flatnonzero(keys[0] == keys[0].min())
    for key in keys[1:]:
        if len(options) == 1:
            break
        values = key[options]
        options = options[values == values.min()]
    return int(options[0])


class FleetRouter:
    """Prefill routing for a pool of replicas named ``replicas`` (their order breaks ties),
    their loads in arrays: ``loads`` prompt tokens queued, ``inflight`` requests. Blocks the
    holder ``host_worker`` has (the host tier: ``kvstore.keys.HOST_WORKER``) can be
    pulled at ``host_pull_weight`` of computing them."""

    def __init__(self, replicas: Sequence[str], index: CompactPrefixIndex, block_size: int,
                 host_worker: str | None = None, host_pull_weight: float = 0.5, balance: Balance | None = None):
        self.replicas, self.index, self.block_size = list(replicas), index, block_size
        self.host_worker, self.host_pull_weight = host_worker, host_pull_weight
        self.balance = balance or Balance.dispatchers()
        self.loads = np.zeros(len(self.replicas), np.float64)
        self.inflight = np.zeros(len(self.replicas), np.int64)
        self.columns = np.array([index.worker(r) for r in self.replicas], np.int64)
        self._native = hasattr(index.core, "route")
        self._pick = getattr(index.core, "pick", None)  # a C core built before pick existed has route only

    def route(self, hashes: Sequence[BlockHash] | np.ndarray, prompt_tokens: int,
              credit: np.ndarray | None = None) -> int:
        """The replica (index into ``replicas``) to prefill a prompt whose chained block hashes
        (16-byte hashes, or block ids) are ``hashes``; ``credit``: tokens each replica need not
        compute beyond its prefix (a ``SegmentLookup``'s answer), None for none."""
        if credit is not None:
            credit = np.ascontiguousarray(credit, np.float64)
        host = self.index.workers.get(self.host_worker, -1) if self.host_worker else -1
        if self._native:
            ids: bytes | np.ndarray
            if len(hashes) and isinstance(hashes[0], bytes):
                ids, stride = b"".join(hashes), 16  # the C core reads each hash's first 8 bytes
            else:
                ids, stride = np.ascontiguousarray(block_ids(hashes)), 8
            b = self.balance
            return self.index.core.route(ids, stride, self.columns, self.loads, self.inflight, prompt_tokens,
                                         self.block_size, host, self.host_pull_weight, b.ratio, b.slack_requests,
                                         b.slack_tokens, credit)
        counts = self.index.matched_counts(block_ids(hashes), len(self.index.names))
        work = prefill_work(counts[self.columns], int(counts[host]) if host >= 0 else 0, prompt_tokens,
                            self.block_size, self.host_pull_weight, credit)
        return pick_index(work, self.loads, self.inflight, self.balance)

    def pick(self, counts: np.ndarray, host_blocks: int, prompt_tokens: int, block_size: int, host_pull_weight: float,
             credit: np.ndarray | None = None, among: np.ndarray | None = None) -> int:
        """The rule of ``route`` for a match made before (``RequestShape.matched_blocks``): ``counts``
        (int64, per replica) leading blocks each replica holds, ``host_blocks`` the host tier's.
        ``among``: the replicas to choose from (indexes, in order; None: all). Returns an index
        into ``replicas``."""
        loads, inflight = self.loads, self.inflight
        if among is not None:
            counts, loads, inflight = counts[among], loads[among], inflight[among]
            credit = None if credit is None else credit[among]
        b = self.balance
        if self._pick is not None:
            chosen = self._pick(counts, loads, inflight, prompt_tokens, block_size, host_blocks, host_pull_weight,
                                b.ratio, b.slack_requests, b.slack_tokens, credit)
        else:
            chosen = pick_index(prefill_work(counts, host_blocks, prompt_tokens, block_size, host_pull_weight, credit),
                                loads, inflight, b)
        return chosen if among is None else int(among[chosen])
