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

import numpy as np
import torch

from attention_offload.control import PER_SEQ, Kind, StepControl
from engine.attention import AttentionMetadata
from engine.batch import HostBatch


class TableSender:
    """The model worker's half: turns a step's host batch into its control message."""

    def __init__(self) -> None:
        self._sent: dict[str, tuple[int, np.ndarray]] = {}  # request id -> (handle, table sent)
        self._handles = itertools.count(1)
        self._steps = itertools.count()

    def step(self, host: HostBatch, bounds: list[int]) -> StepControl:
        seqs = np.empty((len(host.request_ids), PER_SEQ), dtype=np.int64)
        starts, new, sent = host.query_start_loc, [], {}
        for i, (rid, row) in enumerate(zip(host.request_ids, host.block_rows)):
            handle, old = self._sent.get(rid, (0, None))
            keep = len(old) if old is not None and len(old) <= len(row) and np.array_equal(row[:len(old)], old) else 0
            if old is None:
                handle = next(self._handles)
            seqs[i] = (handle, starts[i + 1] - starts[i], host.seq_lens[i], keep, len(row) - keep)
            new.append(row[keep:])
            sent[rid] = (handle, row.copy())
        self._sent = sent
        blocks = np.concatenate(new).astype(np.int64) if new else np.zeros(0, dtype=np.int64)
        return StepControl(Kind.STEP, next(self._steps), np.asarray(bounds, dtype=np.int64), seqs, blocks)

    @property
    def holding(self) -> bool:
        """Whether the attention worker holds tables this side sent."""
        return bool(self._sent)

    def reset(self) -> StepControl:
        """Forget every table sent (the attention worker is told the same)."""
        self._sent.clear()
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
            tables[handle] = added if not keep else (old[:keep] if not num_new else np.concatenate([old[:keep], added]))
            offset += num_new
        self._tables = tables
        return [self._metadata(ctrl, lo, hi) for lo, hi in zip(ctrl.bounds[:-1].tolist(), ctrl.bounds[1:].tolist())]

    def _metadata(self, ctrl: StepControl, lo: int, hi: int) -> AttentionMetadata:
        seqs = ctrl.seqs[lo:hi]
        handles, q_lens, seq_lens = seqs[:, 0].tolist(), seqs[:, 1], seqs[:, 2]
        rows = [self._tables[h] for h in handles]
        width = max(len(r) for r in rows)
        tables = np.zeros((len(rows), width), dtype=np.int32)
        for table, row in zip(tables, rows):
            table[:len(row)] = row
        bs = self.block_size
        slots = []
        for row, q, n in zip(rows, q_lens.tolist(), seq_lens.tolist()):
            pos = np.arange(n - q, n)
            slots.append(row[pos // bs] * bs + pos % bs)
        starts = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
        to = lambda a, dtype: torch.from_numpy(np.ascontiguousarray(a, dtype=dtype)).to(self.device, non_blocking=True)
        return AttentionMetadata(
            query_start_loc=to(starts, np.int32), seq_lens=to(seq_lens, np.int32), block_tables=to(tables, np.int32),
            slot_mapping=to(np.concatenate(slots), np.int64), max_query_len=int(q_lens.max()),
            max_seq_len=int(seq_lens.max()), decode_only=bool((q_lens == 1).all()))
