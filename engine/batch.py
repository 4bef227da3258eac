"""Flattening a scheduled step into the model's input tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.attention import AttentionMetadata
from engine.attention.shared_prefix import PlanCache
from engine.scheduler import ScheduledRequest


@dataclass
class ModelInput:
    input_ids: torch.Tensor      # int64 [T]
    positions: torch.Tensor      # int64 [T]
    meta: AttentionMetadata
    sample_rows: torch.Tensor    # int64 [S]: rows of the hidden states to compute logits for
    num_samples: int


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
    tables = np.zeros((len(rows), max(len(r) for r in rows)), dtype=np.int32)
    for table, row in zip(tables, rows):
        table[:len(row)] = row
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
        query_start_loc=_tensor(starts, torch.int32, device),
        seq_lens=_tensor(seq_lens, torch.int32, device),
        block_tables=torch.from_numpy(tables).to(device),
        slot_mapping=_tensor(slots, torch.int64, device),
        max_query_len=max(s.num_new_tokens for s in scheduled),
        max_seq_len=max(seq_lens),
        decode_only=decode_only,
        shared=plan,
    )
    return ModelInput(_tensor(ids, torch.int64, device), _tensor(positions, torch.int64, device),
                      meta, _tensor(sample_rows, torch.int64, device), len(sample_rows))


def _tensor(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Pinning a fresh buffer every step costs more than the small synchronous copy it saves.
    return torch.tensor(values, dtype=dtype, device=device)
