"""Flattening a scheduled step into the model's input tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.attention import AttentionMetadata
from engine.attention.shared_prefix import PlanCache
from engine.scheduler import ScheduledRequest
from engine.uploads import upload


@dataclass(frozen=True)
class HostBatch:
    """The step's sequences as the host built them (no device read-back): for a runner whose
    attention runs elsewhere and keeps each sequence's block table there (attention_offload)."""

    request_ids: list[str]
    query_start_loc: np.ndarray  # int32 [B + 1]
    seq_lens: np.ndarray         # int32 [B]
    block_rows: list[np.ndarray]  # each sequence's block ids (int32 views, valid for this step)


@dataclass
class ModelInput:
    input_ids: torch.Tensor      # int64 [T]
    positions: torch.Tensor      # int64 [T]
    meta: AttentionMetadata
    sample_rows: torch.Tensor    # int64 [S]: rows of the hidden states to compute logits for
    num_samples: int
    host: HostBatch | None = None


def build_model_input(scheduled: list[ScheduledRequest], block_size: int, device: torch.device,
                      shared_prefix_min_tokens: int | None = None,
                      plan_cache: PlanCache | None = None) -> ModelInput:
    """Token ids, positions, slot mapping and block tables for one step. A decode-only step
    whose sequences share blocks gets a shared-prefix plan when sharing saves reading at
    least ``shared_prefix_min_tokens`` tokens of K/V per layer (None: never). Pass the same
    ``plan_cache`` every step to reuse the plan while the batch is unchanged (None: plan anew)."""
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    starts = [0]
    seq_lens: list[int] = []
    sample_rows: list[int] = []
    for s in scheduled:
        req, lo, n = s.request, s.request.num_computed_tokens, s.num_new_tokens
        ids.extend(req.token_ids(lo, lo + n))
        positions.extend(range(lo, lo + n))
        blocks = req.block_ids
        slots.extend(blocks[p // block_size] * block_size + p % block_size for p in range(lo, lo + n))
        starts.append(starts[-1] + n)
        seq_lens.append(lo + n)
        if s.samples:
            sample_rows.append(starts[-1] - 1)
    rows = [s.request.block_id_array() for s in scheduled]  # kept up to date incrementally
    num_seqs, width = len(rows), max(len(r) for r in rows)
    ints = _Packed(np.int32, [num_seqs + 1, num_seqs, num_seqs * width])
    ints.part(0)[:] = starts
    ints.part(1)[:] = seq_lens
    tables = ints.part(2).reshape(num_seqs, width)
    for table, row in zip(tables, rows):
        table[:len(row)] = row
        table[len(row):] = 0
    longs = _Packed(np.int64, [len(ids), len(ids), len(ids), len(sample_rows)])
    for i, values in enumerate((ids, positions, slots, sample_rows)):
        longs.part(i)[:] = values
    ints_dev, longs_dev = ints.upload(device), longs.upload(device)
    decode_only = all(s.num_new_tokens == 1 for s in scheduled)
    plan = None
    # sharing saves at most every token but the longest sequence's: skip planning (Python
    # work per step) when even that bound is below the threshold
    if (shared_prefix_min_tokens is not None and decode_only and len(scheduled) > 1
            and sum(seq_lens) - max(seq_lens) >= shared_prefix_min_tokens):
        cache = plan_cache if plan_cache is not None else PlanCache()
        plan = cache.plan([s.request.block_ids for s in scheduled], seq_lens,
                          block_size, shared_prefix_min_tokens)
    meta = AttentionMetadata(
        query_start_loc=ints_dev[0],
        seq_lens=ints_dev[1],
        block_tables=ints_dev[2].view(num_seqs, width),
        slot_mapping=longs_dev[2],
        max_query_len=max(s.num_new_tokens for s in scheduled),
        max_seq_len=max(seq_lens),
        decode_only=decode_only,
        shared=plan,
    )
    host = HostBatch([s.request.request_id for s in scheduled], ints.part(0), ints.part(1), rows)
    return ModelInput(longs_dev[0], longs_dev[1], meta, longs_dev[3], len(sample_rows), host)


class _Packed:
    """Several integer arrays of one dtype in one host buffer, moved to the device in one copy.

    A step's inputs are seven small arrays; seven synchronous host-to-device copies each wait
    for the device's copy queue (and, with two processes time-slicing one GPU, possibly for
    this process's turn), one copy waits once. Parts start 16-byte aligned, as kernels'
    pointer arguments prefer.
    """

    def __init__(self, dtype, sizes: list[int]):
        align = 16 // np.dtype(dtype).itemsize
        self.bounds, start = [], 0
        for n in sizes:
            self.bounds.append((start, start + n))
            start += -(-n // align) * align
        self.host = np.empty(start, dtype=dtype)

    def part(self, i: int) -> np.ndarray:
        lo, hi = self.bounds[i]
        return self.host[lo:hi]

    def upload(self, device: torch.device) -> list[torch.Tensor]:
        whole = upload(torch.from_numpy(self.host), device)
        return [whole[lo:hi] for lo, hi in self.bounds]
