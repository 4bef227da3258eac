"""Random paged batches for timing the attention kernels (benchmarks/) and checking them (tests/,
with the float64 references and comparisons in tests/attention_checks.py).

Blocks are handed out in a shuffled order from a pool with spare blocks, so block tables
are non-contiguous. Everything a correct kernel must never read is poisoned with NaN:
spare blocks, the slots past each sequence's length in its last block, and block-table
entries past a sequence's last block point far outside the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.attention.metadata import AttentionMetadata


@dataclass(frozen=True)
class BatchSpec:
    """One batch: per-sequence query lengths (new tokens) and total lengths (cached + new)."""

    q_lens: tuple[int, ...]
    seq_lens: tuple[int, ...]
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    block_size: int = 16
    dtype: torch.dtype = torch.float32
    spare_blocks: int = 3

    def __post_init__(self) -> None:
        if not self.seq_lens or len(self.q_lens) != len(self.seq_lens):
            raise ValueError(f"q_lens {self.q_lens} and seq_lens {self.seq_lens} must be non-empty and "
                             "of equal length")
        if any(not 1 <= q <= s for q, s in zip(self.q_lens, self.seq_lens)):
            raise ValueError(f"each query length must be in [1, seq_len]: {self.q_lens} vs {self.seq_lens}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")

    def blocks_of(self, seq_len: int) -> int:
        return -(-seq_len // self.block_size)


@dataclass
class PagedBatch:
    """Query rows, the layer's two caches, their metadata, and the new rows' keys/values."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    meta: AttentionMetadata
    new_k: torch.Tensor
    new_v: torch.Tensor

    @property
    def scale(self) -> float:
        return self.q.shape[-1] ** -0.5


def random_batch(spec: BatchSpec, device: torch.device | str, seed: int, max_seq_len: int | None = None,
                 strided_q: bool = False) -> PagedBatch:
    """A fresh random batch on ``device``; ``strided_q`` makes q a view into a wider fused-qkv-like buffer."""
    gen = torch.Generator().manual_seed(seed)
    data_gen = torch.Generator(device=device).manual_seed(seed)
    counts = [spec.blocks_of(s) for s in spec.seq_lens]
    num_blocks = sum(counts) + spec.spare_blocks
    order = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.full((len(counts), max(counts) + 1), 1 << 24, dtype=torch.int32)
    shape = (num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
    k_cache, v_cache = (torch.full(shape, float("nan"), dtype=spec.dtype, device=device) for _ in "kv")
    for i, (n, seq_len) in enumerate(zip(counts, spec.seq_lens)):
        tables[i, :n] = torch.tensor(order[:n], dtype=torch.int32)
        order = order[n:]
        slots = _slots(tables[i], seq_len, spec.block_size).to(device)
        for cache in (k_cache, v_cache):
            rows = torch.randn(seq_len, *shape[2:], generator=data_gen, device=device)
            cache.view(-1, *shape[2:])[slots] = rows.to(spec.dtype)
    q, new_k, new_v = _new_rows(spec, data_gen, strided_q, device)
    meta = _metadata(spec, tables, max_seq_len)
    return PagedBatch(q, k_cache, v_cache, _meta_to(meta, device), new_k, new_v)


def _slots(ids: torch.Tensor, seq_len: int, block_size: int) -> torch.Tensor:
    pos = torch.arange(seq_len)
    return ids.long()[pos // block_size] * block_size + pos % block_size


def _new_rows(spec: BatchSpec, gen: torch.Generator, strided_q: bool, device: torch.device | str):
    """q [T, H, D] (a column slice of a fused buffer if ``strided_q``), new k and v [T, H_kv, D]."""
    rows, dim = sum(spec.q_lens), spec.head_dim
    q_width = spec.num_heads * dim
    width = q_width + (2 * spec.num_kv_heads * dim if strided_q else 0)
    fused = torch.randn(rows, width, generator=gen, device=device).to(spec.dtype)
    q = fused[:, :q_width].view(rows, spec.num_heads, dim)
    kv = torch.randn(2, rows, spec.num_kv_heads, dim, generator=gen, device=device).to(spec.dtype)
    return q, kv[0], kv[1]


def _metadata(spec: BatchSpec, tables: torch.Tensor, max_seq_len: int | None) -> AttentionMetadata:
    starts = torch.tensor([0, *spec.q_lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    slots = torch.cat([_slots(tables[i], s, spec.block_size)[s - q:]
                       for i, (q, s) in enumerate(zip(spec.q_lens, spec.seq_lens))])
    return AttentionMetadata(
        query_start_loc=starts, seq_lens=torch.tensor(spec.seq_lens, dtype=torch.int32),
        block_tables=tables, slot_mapping=slots, max_query_len=max(spec.q_lens),
        max_seq_len=max_seq_len or max(spec.seq_lens), decode_only=all(q == 1 for q in spec.q_lens))


def _meta_to(meta: AttentionMetadata, device: torch.device | str) -> AttentionMetadata:
    return AttentionMetadata(meta.query_start_loc.to(device), meta.seq_lens.to(device),
                             meta.block_tables.to(device), meta.slot_mapping.to(device),
                             meta.max_query_len, meta.max_seq_len, meta.decode_only)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| over the whole batch, NaN if out holds any NaN: the benchmarks' sanity
    check (tests compare each (sequence, head): tests/attention_checks.py)."""
    diff = (out.double() - ref.double()).norm()
    return float(diff / ref.double().norm())
