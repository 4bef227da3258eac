"""Who holds a block, interned: one small integer per distinct (held, predicted) pair of
worker bitsets, so the prefix table stores 4 bytes a block whatever the fleet's size.

A fleet's blocks fall into few distinct holder sets (a prefix lives on one or a few
workers), so the table of states stays small; ``compact`` drops the unused ones. A change
to a state (a worker stored, evicted, predicted or lost a prediction of a block) is a
*move*, memoised: applying one event to many blocks costs one dict lookup per distinct
(state, move), not per block.
"""

from __future__ import annotations

import numpy as np

STORE, EVICT, PREDICT, UNPREDICT = 1, 2, 3, 4
_OP_BITS = 3


def move_code(op: int, worker: int) -> int:
    """The code of ``op`` by the worker of index ``worker`` (what ``HolderStates.move`` takes)."""
    return worker << _OP_BITS | op


class HolderStates:
    """State 0 is "no holder". ``held[s]`` / ``predicted[s]``: worker bitsets (bit i = the
    worker of index i); a worker is never both (STORE confirms a prediction)."""

    def __init__(self) -> None:
        self.held: list[int] = [0]
        self.predicted: list[int] = [0]
        self.holders: list[int] = [0]  # held | predicted: what matching reads
        self._ids: dict[tuple[int, int], int] = {(0, 0): 0}
        self._moves: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.held)

    def intern(self, held: int, predicted: int) -> int:
        key = (held, predicted)
        state = self._ids.get(key)
        if state is None:
            state = self._ids[key] = len(self.held)
            self.held.append(held)
            self.predicted.append(predicted)
            self.holders.append(held | predicted)
        return state

    def move(self, state: int, code: int) -> int:
        key = state << 32 | code
        new = self._moves.get(key)
        if new is None:
            new = self._moves[key] = self._apply(state, code)
        return new

    def moves(self, states: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """``move`` for arrays of states and codes (one dict lookup per distinct pair)."""
        pairs = states.astype(np.uint64) << np.uint64(32) | codes.astype(np.uint64)
        if len(pairs) and (pairs == pairs[0]).all():
            return np.full(len(pairs), self.move(int(states[0]), int(codes[0])), np.uint32)
        distinct, inverse = np.unique(pairs, return_inverse=True)
        move = self._moves.get
        new = [move(p) for p in distinct.tolist()]
        if None in new:
            new = [self.move(p >> 32, p & 0xFFFFFFFF) for p in distinct.tolist()]
        return np.array(new, np.uint32)[inverse]

    def _apply(self, state: int, code: int) -> int:
        op, bit = code & ((1 << _OP_BITS) - 1), 1 << (code >> _OP_BITS)
        held, predicted = self.held[state], self.predicted[state]
        if op == STORE:
            held, predicted = held | bit, predicted & ~bit
        elif op == EVICT:
            held, predicted = held & ~bit, predicted & ~bit
        elif op == PREDICT:
            predicted = predicted if held & bit else predicted | bit
        elif op == UNPREDICT:
            predicted &= ~bit
        else:
            raise ValueError(f"unknown holder move {op}")
        return self.intern(held, predicted)

    def without(self, worker: int) -> np.ndarray:
        """Every state's state once ``worker`` holds nothing (a remap array)."""
        code = move_code(EVICT, worker)
        return np.array([self.move(s, code) for s in range(len(self.held))], np.uint32)

    def compact(self, used: np.ndarray) -> np.ndarray:
        """Keep the states in ``used`` (and 0), renumbered; returns old -> new ids."""
        keep = np.union1d(used, [0]).astype(np.intp)
        remap = np.zeros(len(self.held), np.uint32)
        remap[keep] = np.arange(len(keep), dtype=np.uint32)
        held, predicted = [self.held[s] for s in keep], [self.predicted[s] for s in keep]
        self.held, self.predicted = held, predicted
        self.holders = [h | p for h, p in zip(held, predicted)]
        self._ids = {(h, p): i for i, (h, p) in enumerate(zip(held, predicted))}
        self._moves.clear()
        return remap
