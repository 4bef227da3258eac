"""Block tables kept on both ends of a link, moved as deltas.

The model worker allocates blocks (its engine's KV cache manager) in the attention worker's
cache; each step the attention worker needs the tables of the step's sequences. Both ends
keep the tables of the sequences of the last step only: a sequence that is in this step and
was in the last sends the blocks appended since (``keep`` = what the attention worker has,
checked by content, so a preempted or restarted request whose table was replaced sends it
whole), any other sequence sends its whole table under a new handle; a table not in the step
is dropped on both ends. Decode steps thus move a block id per sequence every block_size
steps, and no table outlives its request.
"""

from __future__ import annotations

import itertools
from typing import cast

import numpy as np
import torch

from attention_offload.control import Kind, StepControl
from engine.attention import AttentionMetadata
from engine.batch import HostBatch


class TableSender:
    """The model worker's half: turns a step's host batch into its control message.

    Vectorized over the batch (every kept table compared in one operation): at 512 sequences of
    4K tokens a per-sequence loop of comparisons and copies cost ~12 ms of host time per step."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}      # request id -> its position in the last step
        self._rows: list[np.ndarray] = []     # the last step's tables (views of one copy)
        self._handles = np.zeros(0, dtype=np.int64)
        self._next_handle = 1
        self._steps = itertools.count()

    def step(self, host: HostBatch, bounds: list[int]) -> StepControl:
        rows, b = host.block_rows, len(host.request_ids)
        lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=b)
        prev = [self._index.get(rid, -1) for rid in host.request_ids]
        old_lens = np.fromiter((len(self._rows[p]) if p >= 0 else 0 for p in prev), dtype=np.int64, count=b)
        keep = np.where(old_lens <= lens, old_lens, 0)
        keep = np.where(self._same_prefix(rows, prev, keep), keep, 0)
        seen = np.asarray(prev) >= 0
        handles = np.where(seen, self._handles[np.maximum(prev, 0)] if len(self._handles) else 0, 0)
        fresh = int((~seen).sum())
        handles[~seen] = np.arange(self._next_handle, self._next_handle + fresh)
        self._next_handle += fresh
        seqs = np.stack([handles, np.diff(host.query_start_loc).astype(np.int64), host.seq_lens.astype(np.int64),
                         keep, lens - keep], axis=1)
        new = [r[k:] for r, k in zip(rows, keep.tolist()) if k < len(r)]
        flat = np.concatenate(rows) if b else np.zeros(0, dtype=np.int32)
        ends = np.cumsum(lens).tolist()
        self._rows = [flat[e - n:e] for e, n in zip(ends, lens.tolist())]
        self._index = {rid: i for i, rid in enumerate(host.request_ids)}
        self._handles = handles
        blocks = np.concatenate(new).astype(np.int64) if new else np.zeros(0, dtype=np.int64)
        return StepControl(Kind.STEP, next(self._steps), np.asarray(bounds, dtype=np.int64), seqs, blocks)

    def _same_prefix(self, rows: list[np.ndarray], prev: list[int], keep: np.ndarray) -> np.ndarray:
        """Whether each row's first ``keep`` blocks are those its table had in the last step."""
        same = np.ones(len(rows), dtype=bool)
        kept = [i for i, k in enumerate(keep.tolist()) if k]
        if not kept:
            return same
        old = np.concatenate([self._rows[prev[i]][:keep[i]] for i in kept])
        now = np.concatenate([rows[i][:keep[i]] for i in kept])
        wrong = np.flatnonzero(old != now)
        if len(wrong):
            owners = np.searchsorted(np.cumsum(keep[kept]), wrong, side="right")
            same[np.asarray(kept)[owners]] = False
        return same

    @property
    def holding(self) -> bool:
        """Whether the attention worker holds tables this side sent."""
        return bool(self._index)

    def reset(self) -> StepControl:
        """Forget every table sent (the attention worker is told the same)."""
        self._index, self._rows, self._handles = {}, [], np.zeros(0, dtype=np.int64)
        return StepControl(Kind.RESET, next(self._steps))


class TableMirror:
    """The attention worker's half: applies a step's deltas and builds each micro-batch's
    attention metadata on ``device``."""

    def __init__(self, block_size: int, device: torch.device):
        self.block_size, self.device = block_size, device
        self._tables: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._tables)

    def reset(self) -> None:
        self._tables.clear()

    def apply(self, ctrl: StepControl) -> list[AttentionMetadata]:
        tables, offset = {}, 0
        for handle, _, _, keep, num_new in ctrl.seqs.tolist():
            old = self._tables.get(handle)
            if keep and (old is None or len(old) < keep):
                raise ValueError(f"step {ctrl.step}: sequence {handle} keeps {keep} blocks the attention worker "
                                 f"does not have ({0 if old is None else len(old)})")
            added = ctrl.new_blocks[offset:offset + num_new]
            kept = cast(np.ndarray, old)  # not None where keep is set: checked above
            tables[handle] = added if not keep else (kept[:keep] if not num_new
                                                     else np.concatenate([kept[:keep], added]))
            offset += num_new
        self._tables = tables
        return [self._metadata(ctrl, lo, hi) for lo, hi in zip(ctrl.bounds[:-1].tolist(), ctrl.bounds[1:].tolist())]

    def _metadata(self, ctrl: StepControl, lo: int, hi: int) -> AttentionMetadata:
        seqs = ctrl.seqs[lo:hi]
        q_lens, seq_lens = seqs[:, 1], seqs[:, 2]
        rows = [self._tables[h] for h in seqs[:, 0].tolist()]
        lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        tables = np.zeros((len(rows), int(lens.max())), dtype=np.int32)
        tables[np.arange(tables.shape[1]) < lens[:, None]] = np.concatenate(rows)  # row-major: each row's blocks
        starts = np.concatenate([[0], np.cumsum(q_lens)])
        tokens = int(starts[-1])
        seq_of = np.repeat(np.arange(len(rows)), q_lens)
        pos = (seq_lens - q_lens)[seq_of] + np.arange(tokens) - starts[:-1][seq_of]
        bs = self.block_size
        slots = tables[seq_of, pos // bs].astype(np.int64) * bs + pos % bs
        def to(a, dtype):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=dtype)).to(self.device, non_blocking=True)
        return AttentionMetadata(
            query_start_loc=to(starts, np.int32), seq_lens=to(seq_lens, np.int32), block_tables=to(tables, np.int32),
            slot_mapping=to(slots, np.int64), max_query_len=int(q_lens.max()),
            max_seq_len=int(seq_lens.max()), decode_only=bool((q_lens == 1).all()))
