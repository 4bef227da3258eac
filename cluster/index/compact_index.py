"""The router's prefix index at fleet scale: 64-bit block ids -> interned holder sets.

Same answers as ``cluster.index.prefix_index.PrefixIndex`` (the reference, a radix tree of Python
objects) in ~20-35 bytes a block instead of ~700, with events applied a batch at a time
by a core in C (``prefix_core``; numpy where the C one was not built).

A chained hash names its whole prefix, so no tree is needed: the index maps each block id
to the set of workers holding it (``holder_states``), and a request's match walks its ids
in order, intersecting holder sets, until no worker is left. A block no worker holds is
dropped at once; a block whose STORED event came without its parent's simply never
matches past the gap (the tree kept a placeholder for the parent, forever). Tiers are not
kept: the host tier is a holder of its own (``HOST_WORKER``).

Predictions (see PrefixIndex) are a second bitset in each state, undone when their
prediction expires unless a later prediction of the same (worker, block) is pending. At
most ``max_predicted`` (worker, block) pairs are kept until their expiry (pending or
confirmed since; the config's ``router.max_predicted``): beyond that the oldest predictions
expire early, so a router routing faster than events confirm cannot grow without bound.

Memory is bounded by what the workers hold: a block leaves the index the moment no worker
holds it (its last EVICTED, its holders' CLEARED, a prediction undone), the tables shrink
once a sixteenth full, and unused holder states are compacted away. ``size`` reports it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cluster.config import MAX_PREDICTED
from cluster.index.holder_states import EVICT, STORE, move_code
from cluster.index.prefix_core import best_core
from engine.block_hash import BlockHash
from kvstore.kv_events import EventBatch, EventKind, KVEvent, block_ids

_MOVES = {EventKind.STORED: STORE, EventKind.EVICTED: EVICT}
STATE_SLACK = 4096  # holder states beyond twice the last compaction's count before the next


@dataclass(frozen=True)
class IndexSize:
    blocks: int            # blocks some worker holds or is predicted to
    predicted: int         # (worker, block) predictions pending
    states: int            # distinct holder sets
    workers: int
    nbytes: int            # the index's arrays


class CompactPrefixIndex:
    def __init__(self, max_predicted: int = MAX_PREDICTED, core: type | None = None):
        self.max_predicted = max_predicted
        self.workers: dict[str, int] = {}
        self.names: list[str] = []
        self.core = (core or best_core())()
        self._predictions: deque[tuple[float, int, int, np.ndarray]] = deque()  # (expiry, number, worker, ids)
        self._number = 0
        self._queued = 0  # ids in self._predictions
        self._states_after_compact = 1

    def __len__(self) -> int:
        return len(self.core)

    def worker(self, name: str) -> int:
        index = self.workers.get(name)
        if index is None:
            index = self.workers[name] = len(self.names)
            self.names.append(name)
        return index

    # -- events ---------------------------------------------------------------------------

    def apply(self, event: KVEvent) -> None:
        self.apply_batch(EventBatch.of([event]))

    def apply_batch(self, batch: EventBatch) -> None:
        """Apply a batch of events in order."""
        codes: list[int] = []
        lengths: list[int] = []
        start, offset = 0, 0
        for worker, kind, count in batch.events:
            if kind is EventKind.CLEARED:
                self._apply(batch.ids[start:offset], codes, lengths)
                codes, lengths, start = [], [], offset
                self.clear(worker)
            elif count:
                codes.append(move_code(_MOVES[kind], self.worker(worker)))
                lengths.append(count)
                offset += count
        self._apply(batch.ids[start:offset], codes, lengths)
        if self.core.num_states > 2 * self._states_after_compact + STATE_SLACK:
            self.core.compact()
            self._states_after_compact = self.core.num_states

    def _apply(self, ids: np.ndarray, codes: list[int], lengths: list[int]) -> None:
        if codes:
            self.core.apply(np.ascontiguousarray(ids), np.array(codes, np.uint32), np.array(lengths, np.uint32))

    def clear(self, worker: str) -> None:
        """``worker`` holds nothing (any more): drop it from every block."""
        if worker in self.workers:
            self.core.clear(self.workers[worker])

    # -- predictions ----------------------------------------------------------------------

    def predict(self, worker_id: str, hashes: Sequence[BlockHash] | np.ndarray, expires_at: float) -> None:
        """Record that ``worker_id`` will hold ``hashes`` once its prefill stores them; blocks
        it already holds are left as they are."""
        ids = np.ascontiguousarray(block_ids(hashes))
        if not len(ids):
            return
        worker = self.worker(worker_id)
        self._number = self._number % 0xFFFFFFFE + 1
        self.core.predict(worker, ids, self._number)
        self._predictions.append((expires_at, self._number, worker, ids))
        self._queued += len(ids)
        while self._queued > self.max_predicted and self._predictions:
            self._unpredict(self._predictions.popleft())

    def expire(self, now: float) -> None:
        """Drop predictions older than their expiry that no STORED event confirmed."""
        while self._predictions and self._predictions[0][0] <= now:
            self._unpredict(self._predictions.popleft())

    def _unpredict(self, prediction: tuple[float, int, int, np.ndarray]) -> None:
        _, number, worker, ids = prediction
        self._queued -= len(ids)
        self.core.unpredict(worker, ids, number)

    # -- matching -------------------------------------------------------------------------

    def matched_counts(self, hashes: Sequence[BlockHash] | np.ndarray, num_workers: int | None = None) -> np.ndarray:
        """For each worker index (``self.workers``), how many leading blocks of ``hashes`` it holds."""
        counts = np.zeros(len(self.names) if num_workers is None else num_workers, np.int64)
        self.core.match(np.ascontiguousarray(block_ids(hashes)), counts)
        return counts

    def matched_blocks(self, hashes: Sequence[BlockHash] | np.ndarray) -> dict[str, int]:
        """For each worker, how many leading blocks of ``hashes`` it holds (any tier)."""
        counts = self.matched_counts(hashes)
        held = np.flatnonzero(counts)
        return dict(zip([self.names[i] for i in held.tolist()], counts[held].tolist()))

    # -- size and contents ----------------------------------------------------------------

    def size(self) -> IndexSize:
        arrays = self.core.nbytes + 8 * self._queued + 100 * len(self._predictions)
        return IndexSize(len(self.core), self.core.num_pending, self.core.num_states, len(self.names), arrays)

    def export_held(self) -> HeldExport:
        """What every worker holds (not predictions), copied out of the index: cheap, so it
        can run on the router's thread; ``HeldExport.by_worker`` does the rest anywhere."""
        keys, states = self.core.export()
        distinct = np.flatnonzero(np.bincount(np.frombuffer(states, np.uint32))).tolist()
        return HeldExport(keys, states, {s: self.core.state(s)[0] for s in distinct}, list(self.names))

    def held(self) -> dict[str, np.ndarray]:
        """Every worker's blocks (held, not predicted)."""
        return self.export_held().by_worker()


@dataclass(frozen=True)
class HeldExport:
    keys: bytes                 # block ids (uint64)
    states: bytes               # each one's holder state (uint32)
    held: dict[int, int]        # state -> bitset of the workers holding its blocks
    names: list[str]            # worker index -> name

    def by_worker(self) -> dict[str, np.ndarray]:
        keys, states = np.frombuffer(self.keys, np.uint64), np.frombuffer(self.states, np.uint32)
        order = np.argsort(states, kind="stable")
        keys, states = keys[order], states[order]
        cuts = np.flatnonzero(np.r_[True, states[1:] != states[:-1]]) if len(states) else np.zeros(0, np.intp)
        out: dict[int, list[np.ndarray]] = {}
        for lo, hi in zip(cuts.tolist(), [*cuts[1:].tolist(), len(states)]):
            workers = self.held[int(states[lo])]
            while workers:
                low = workers & -workers
                out.setdefault(low.bit_length() - 1, []).append(keys[lo:hi])
                workers ^= low
        return {self.names[w]: np.concatenate(parts) for w, parts in sorted(out.items())}
