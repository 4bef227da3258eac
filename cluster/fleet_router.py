"""A routing decision among hundreds of replicas: the compact prefix index's match, then the
rule of ``pool_handles.pick_prefill`` over arrays instead of Replica objects.

With the C core the whole decision is one call (``Core.route``); without it, the match
and then ``prefill_work`` + ``pick_index`` in numpy. Both follow ``pool_handles.pick``
(cache affinity while the pool is balanced, the least loaded replica when it is not, ties
to the earlier replica) and ``RequestShape.prefill_cost``, so the same loads and matches
give the same replica as the dispatcher's own rule (tests/cluster/test_fleet_router.py).
Two routers that applied the same events and see the same loads therefore choose alike: no
part of a decision depends on arrival order, dict order or a random draw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cluster.compact_index import CompactPrefixIndex
from cluster.pool_handles import IMBALANCE_RATIO, IMBALANCE_SLACK_REQUESTS, IMBALANCE_SLACK_TOKENS
from engine.block_hash import BlockHash
from kvstore.host_tier import HOST_WORKER
from kvstore.kv_events import block_ids


def prefill_work(counts: np.ndarray, host_blocks: int, prompt_tokens: int, block_size: int,
                 host_pull_weight: float) -> np.ndarray:
    """Tokens each replica would compute (host-tier pulls at ``host_pull_weight``)."""
    uncached = np.maximum(0, prompt_tokens - counts * block_size)
    if host_blocks <= 0 or host_pull_weight >= 1:
        return uncached.astype(np.float64)
    pulled = np.maximum(0, host_blocks - counts) * block_size
    return (uncached - pulled) + host_pull_weight * pulled


def pick_index(work: np.ndarray, loads: np.ndarray, inflight: np.ndarray) -> int:
    """``pool_handles.pick`` over arrays: the index of the chosen replica."""
    imbalanced = (loads.max() > IMBALANCE_RATIO * loads.min() + IMBALANCE_SLACK_TOKENS
                  or inflight.max() > IMBALANCE_RATIO * inflight.min() + IMBALANCE_SLACK_REQUESTS)
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
    their loads in arrays: ``loads`` prompt tokens queued, ``inflight`` requests."""

    def __init__(self, replicas: Sequence[str], index: CompactPrefixIndex, block_size: int,
                 host_worker: str = HOST_WORKER, host_pull_weight: float = 0.5):
        self.replicas, self.index, self.block_size = list(replicas), index, block_size
        self.host_worker, self.host_pull_weight = host_worker, host_pull_weight
        self.loads = np.zeros(len(self.replicas), np.float64)
        self.inflight = np.zeros(len(self.replicas), np.int64)
        self.columns = np.array([index.worker(r) for r in self.replicas], np.int64)
        self._native = hasattr(index.core, "route")

    def route(self, hashes: Sequence[BlockHash] | np.ndarray, prompt_tokens: int) -> int:
        """The replica (index into ``replicas``) to prefill a prompt whose chained block hashes
        (16-byte hashes, or block ids) are ``hashes``."""
        host = self.index.workers.get(self.host_worker, -1)
        if self._native:
            if len(hashes) and isinstance(hashes[0], bytes):
                ids, stride = b"".join(hashes), 16  # the C core reads each hash's first 8 bytes
            else:
                ids, stride = np.ascontiguousarray(block_ids(hashes)), 8
            return self.index.core.route(ids, stride, self.columns, self.loads, self.inflight, prompt_tokens,
                                         self.block_size, host, self.host_pull_weight, IMBALANCE_RATIO,
                                         IMBALANCE_SLACK_REQUESTS, IMBALANCE_SLACK_TOKENS)
        counts = self.index.matched_counts(block_ids(hashes), len(self.index.names))
        work = prefill_work(counts[self.columns], int(counts[host]) if host >= 0 else 0, prompt_tokens,
                            self.block_size, self.host_pull_weight)
        return pick_index(work, self.loads, self.inflight)
