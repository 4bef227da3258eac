"""A hash table from 64-bit block ids to 32-bit values, in two numpy arrays, used in batches.

Open addressing over buckets of 8 slots (a SwissTable's groups): a key lives in its home
bucket (its low bits) or, when that was full, in a later one. Keys 0 and 1 mark an empty
slot and a deleted one (a tombstone); ids below 2 are stored as 2 (block ids are hash
bytes: the clash costs nothing that matters). A bucket with an empty slot never had a key
probe past it, so a lookup stops there; a deletion leaves an empty slot where its bucket
has one already, else a tombstone. 12 bytes a slot, filled to at most 3/4 (tombstones
included) and grown to half full: 16-32 bytes a key.

Every operation takes an array of keys; the Python overhead is a few numpy calls per batch,
not per key. ``cluster._block_table`` (C) implements the same class where it was built.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

WIDTH = 8
EMPTY, TOMB = 0, 1
MAX_LOAD = 0.75
_U64 = np.uint64


def table_ids(ids: np.ndarray) -> np.ndarray:
    return np.maximum(ids, _U64(2))


def _first_set_byte(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For (n, 8) bools: whether each row has a True, and the column of its first."""
    words = rows.view(_U64).ravel()
    found = words != 0
    low = words & (~words + _U64(1))  # the lowest set bit
    return found, (np.bitwise_count(low - _U64(1)) >> 3).astype(np.intp)


class BlockTable:
    """id -> value (1 .. 2**32-1); an absent id reads as 0, and storing 0 deletes."""

    def __init__(self, capacity: int = 1024):
        buckets = 1 << max(1, (max(capacity, WIDTH) // WIDTH - 1).bit_length())
        self._keys = np.zeros(buckets * WIDTH, _U64)
        self._vals = np.zeros(buckets * WIDTH + 1, np.uint32)  # the last one reads 0 for "absent"
        self._mask = _U64(buckets - 1)
        self.live = self.tombs = 0

    def __len__(self) -> int:
        return self.live

    @property
    def capacity(self) -> int:
        return len(self._keys)

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes + self._vals.nbytes

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The slot of each key, -1 where absent."""
        slots = np.full(len(keys), -1, np.intp)
        rows2d = self._keys.reshape(-1, WIDTH)
        todo = np.arange(len(keys))
        bucket = (keys & self._mask).astype(np.intp)
        while len(todo):
            rows = rows2d.take(bucket, axis=0)
            found, col = _first_set_byte(rows == keys[:, None])
            slots[todo[found]] = bucket[found] * WIDTH + col[found]
            go = ~found & ((rows == EMPTY).view(_U64).ravel() == 0)  # not here, and the bucket was full
            if not go.any():
                break
            todo, keys, bucket = todo[go], keys[go], (bucket[go] + 1) & int(self._mask)
        return slots

    def get(self, keys: np.ndarray) -> np.ndarray:
        return self._vals.take(self.find(keys))

    def update(self, keys: np.ndarray, move: Callable[[np.ndarray], np.ndarray]) -> None:
        """Each key's value becomes ``move(values)`` (vectorised; 0 deletes, from 0 inserts).
        ``keys`` must be distinct."""
        slots = self.find(keys)
        new = move(self._vals.take(slots))
        here = slots >= 0
        gone = here & (new == 0)
        kept = here & ~gone
        self._vals[slots[kept]] = new[kept]
        if gone.any():
            self._delete(slots[gone])
        added = ~here & (new != 0)
        if added.any():
            self._insert(keys[added], new[added])

    def remap(self, new_of: np.ndarray) -> None:
        """Every value v becomes ``new_of[v]`` (0 deletes)."""
        occupied = np.flatnonzero(self._keys >= 2)
        new = new_of[self._vals[occupied]]
        self._vals[occupied] = new
        if (new == 0).any():
            self._delete(occupied[new == 0])

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        occupied = np.flatnonzero(self._keys >= 2)
        return self._keys[occupied], self._vals[occupied]

    def _delete(self, slots: np.ndarray) -> None:
        rows = self._keys.reshape(-1, WIDTH).take(slots // WIDTH, axis=0)
        has_empty = (rows == EMPTY).view(_U64).ravel() != 0
        self._keys[slots] = np.where(has_empty, EMPTY, TOMB).astype(_U64)
        self._vals[slots] = 0
        self.live -= len(slots)
        self.tombs += int(len(slots) - has_empty.sum())

    def _insert(self, keys: np.ndarray, vals: np.ndarray) -> None:
        """Add distinct keys that are not present."""
        if self.live + self.tombs + len(keys) > MAX_LOAD * self.capacity:
            self._rehash(self.live + len(keys))
        rows2d, mask = self._keys.reshape(-1, WIDTH), int(self._mask)
        bucket = (keys & self._mask).astype(np.intp)
        order = np.argsort(bucket)  # keys bound for one bucket side by side
        keys, vals, bucket = keys[order], vals[order], bucket[order]
        while len(keys):
            free = np.packbits(rows2d.take(bucket, axis=0) < 2, axis=1, bitorder="little").ravel()
            col = _KTH_FREE[free, np.minimum(_rank_sorted(bucket), WIDTH)]  # the k-th key takes the k-th free slot
            ok = col < WIDTH
            slots = bucket[ok] * WIDTH + col[ok]
            self.tombs -= int((self._keys[slots] == TOMB).sum())
            self._keys[slots], self._vals[slots] = keys[ok], vals[ok]
            self.live += len(slots)
            keys, vals, bucket = keys[~ok], vals[~ok], bucket[~ok] + 1
            if len(bucket) and bucket[-1] > mask:  # wrapped around: sort again
                bucket &= mask
                order = np.argsort(bucket)
                keys, vals, bucket = keys[order], vals[order], bucket[order]

    def _rehash(self, live: int) -> None:
        keys, vals = self.items()
        fresh = BlockTable(max(2 * live, 1024))
        fresh._insert(keys, vals)
        self.__dict__.update(fresh.__dict__)


def _kth_free() -> np.ndarray:
    """[free-slot bitmask, k] -> the column of the k-th free slot (WIDTH: none)."""
    table = np.full((256, WIDTH + 1), WIDTH, np.intp)
    for mask in range(256):
        cols = [c for c in range(WIDTH) if mask >> c & 1]
        table[mask, :len(cols)] = cols
    return table


_KTH_FREE = _kth_free()


def _rank_sorted(groups: np.ndarray) -> np.ndarray:
    """For sorted ``groups``: how many equal elements come before each."""
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    if len(starts) == len(groups):
        return np.zeros(len(groups), np.intp)
    return np.arange(len(groups)) - np.repeat(starts, np.diff(np.r_[starts, len(groups)]))


def _rank_within(groups: np.ndarray) -> np.ndarray:
    """For each element, how many equal elements come before it."""
    if len(groups) < 2:
        return np.zeros(len(groups), np.intp)
    order = np.argsort(groups, kind="stable")
    sorted_ = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_[1:] != sorted_[:-1]])
    if len(starts) == len(groups):
        return np.zeros(len(groups), np.intp)
    ranks = np.empty(len(groups), np.intp)
    ranks[order] = np.arange(len(groups)) - np.repeat(starts, np.diff(np.r_[starts, len(groups)]))
    return ranks


def distinct_rounds(keys: np.ndarray) -> list[np.ndarray]:
    """Positions of ``keys`` split into rounds of distinct keys, each key's occurrences in
    order over the rounds (the r-th occurrence of every key in round r)."""
    ordered = np.sort(keys)
    if not (ordered[1:] == ordered[:-1]).any():
        return [np.arange(len(keys))]
    ranks = _rank_within(keys)
    top = int(ranks.max()) if len(ranks) else 0
    if top == 0:
        return [np.arange(len(keys))]
    return [np.flatnonzero(ranks == r) for r in range(top + 1)]
