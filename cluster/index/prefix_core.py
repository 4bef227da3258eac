"""The compact prefix index's core: block ids -> interned holder states, in two forms with
the same methods and answers.

- ``cluster.index._prefix_core.Core`` (C, ``_prefix_core.c``): what routers use. Built at install
  time (``pip install -e .``; optional: a machine without a C compiler gets the next one).
- ``NumpyCore``: the same in Python and numpy (``block_table`` + ``holder_states``): the
  reference the C core is tested against, and the fallback. About 25x slower to match a
  prompt (numpy calls cost microseconds each, and a match needs dozens), within the memory
  goal.

Ids are 64-bit block ids (kvstore/kv_events.py), workers small integers, and a *code* is a
move by one worker (``holder_states.move_code``).

  apply(ids, codes, lengths)      event e moves its lengths[e] ids (consecutive) by codes[e]
  clear(worker)                   the worker holds (and is predicted to hold) nothing
  predict(worker, ids, number)    it will hold ids; prediction ``number`` records the pairs
  unpredict(worker, ids, number)  undo prediction ``number`` where no later one replaced it
  match(ids, counts) -> int       counts[w] = leading ids worker w holds; returns the most
  compact()                       drop holder states no block is in
  export() -> (ids, states)       every block and its state (bytes: uint64, uint32)
  state(s) -> (held, predicted)   a state's worker bitsets
  len(), nbytes, num_states, num_pending

The C module also hashes prompts (``prompt_block_ids``): engine/block_hash.hash_blocks's
blake2b chain, the same digests, ~3x faster (a router hashes every prompt it routes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from cluster.index.block_table import BlockTable, distinct_rounds, table_ids
from cluster.index.holder_states import PREDICT, UNPREDICT, HolderStates, move_code
from engine.block_hash import hash_blocks
from kvstore.kv_events import ID_DTYPE, block_ids

log = logging.getLogger(__name__)
_MIX = 0x9E3779B97F4A7C15


def _pair_keys(ids: np.ndarray, worker: int) -> np.ndarray:
    return table_ids(ids ^ np.uint64((worker + 1) * _MIX & 0xFFFFFFFFFFFFFFFF))


class NumpyCore:
    def __init__(self) -> None:
        self.table = BlockTable()
        self.states = HolderStates()
        self.pending = BlockTable()

    def __len__(self) -> int:
        return len(self.table)

    @property
    def nbytes(self) -> int:
        s = self.states
        return self.table.nbytes + self.pending.nbytes + sum(h.bit_length() // 8 + p.bit_length() // 8 + 90
                                                             for h, p in zip(s.held, s.predicted))

    @property
    def num_states(self) -> int:
        return len(self.states)

    @property
    def num_pending(self) -> int:
        return len(self.pending)

    def apply(self, ids: np.ndarray, codes: np.ndarray, lengths: np.ndarray) -> None:
        if not len(ids):
            return
        ids = table_ids(ids)
        per_block = np.repeat(codes, lengths)
        for rnd in distinct_rounds(ids):
            some_ids, some_codes = (ids, per_block) if len(rnd) == len(ids) else (ids[rnd], per_block[rnd])
            self.table.update(some_ids, lambda old, codes=some_codes: self.states.moves(old, codes))  # type: ignore[misc]

    def clear(self, worker: int) -> None:
        self.table.remap(self.states.without(worker))

    def predict(self, worker: int, ids: np.ndarray, number: int) -> None:
        ids = np.unique(table_ids(ids))
        code, bit, predicted = move_code(PREDICT, worker), 1 << worker, []

        def move(old: np.ndarray) -> np.ndarray:
            new = self.states.moves(old, np.full(len(old), code, np.uint32))
            distinct, inverse = np.unique(new, return_inverse=True)
            mine = np.array([bool(self.states.predicted[s] & bit) for s in distinct.tolist()])
            predicted.append(mine[inverse])
            return new

        self.table.update(ids, move)
        if len(ids):
            self.pending.update(_pair_keys(ids[predicted[0]], worker),
                                lambda old: np.full(len(old), number, np.uint32))

    def unpredict(self, worker: int, ids: np.ndarray, number: int) -> None:
        ids, latest = table_ids(ids), []

        def forget(old: np.ndarray) -> np.ndarray:
            latest.append(old == number)
            return np.where(latest[0], 0, old).astype(np.uint32)

        self.pending.update(_pair_keys(ids, worker), forget)
        ids = ids[latest[0]]
        if len(ids):
            code = move_code(UNPREDICT, worker)
            self.table.update(ids, lambda old: self.states.moves(old, np.full(len(old), code, np.uint32)))

    def match(self, ids: np.ndarray, counts: np.ndarray) -> int:
        counts[:] = 0
        states = self.table.get(table_ids(ids))
        misses = np.flatnonzero(states == 0)
        n = int(misses[0]) if len(misses) else len(states)
        if n == 0:
            return 0
        states = states[:n]
        starts = [0, *(np.flatnonzero(states[1:] != states[:-1]) + 1).tolist()]
        holders, alive, runs = self.states.holders, self.states.holders[int(states[0])], []
        for start, state in zip(starts, states[starts].tolist()):
            now = alive & holders[state]
            if now != alive:
                runs.append((start, alive & ~now))
                alive = now
                if not alive:
                    break
        if alive:
            runs.append((n, alive))
        nbytes = max(len(counts), max(w.bit_length() for _, w in runs)) // 8 + 1
        for count, workers in runs:
            bits = np.unpackbits(np.frombuffer(workers.to_bytes(nbytes, "little"), np.uint8), bitorder="little")
            counts[bits[:len(counts)].astype(bool)] = count
        return runs[-1][0]

    def compact(self) -> None:
        remap = self.states.compact(np.flatnonzero(np.bincount(self.table.items()[1])))
        self.table.remap(remap)

    def export(self) -> tuple[bytes, bytes]:
        keys, vals = self.table.items()
        return keys.tobytes(), vals.tobytes()

    def state(self, s: int) -> tuple[int, int]:
        return self.states.held[s], self.states.predicted[s]


def native_core() -> type | None:
    """The C core's class, or None where it was not built."""
    try:
        from cluster.index._prefix_core import Core
    except ImportError:
        return None
    return Core


def best_core() -> type:
    """The C core where it was built, else the numpy one (logged once)."""
    core = native_core()
    if core is None:
        if not getattr(best_core, "warned", False):
            log.warning("cluster.index._prefix_core (C) is not built: the prefix index runs on numpy, ~25x slower "
                        "to match; `pip install -e .` builds it")
            best_core.warned = True  # type: ignore[attr-defined]
        return NumpyCore
    return core


def native_hash() -> Callable[..., bytes] | None:
    """The C prompt hash (``_prefix_core.block_ids``), or None where it was not built (or was
    built before it had one)."""
    try:
        from cluster.index._prefix_core import block_ids as hashed_ids
    except ImportError:
        return None
    return hashed_ids


_HASH = native_hash()


def prompt_block_ids(tokens: Sequence[int], block_size: int, salt: bytes = b"") -> np.ndarray:
    """``block_ids(hash_blocks(tokens, block_size, salt))``: the block ids of a prompt's full
    blocks, hashed in C where the core is built (the same digests: tests/cluster/test_prompt_hash.py)."""
    if _HASH is not None:
        return np.frombuffer(_HASH(tokens, block_size, salt), ID_DTYPE)
    return block_ids(hash_blocks(tokens, block_size, salt))
