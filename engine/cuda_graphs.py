"""CUDA graphs for decode steps: one captured forward per padded batch size.

(Shared-prefix steps are captured per batch instead: ``shared_step_graph``, on these buffers.)

Decode steps are many small kernels; replaying a captured graph removes the launch gaps.
Inputs are copied into static buffers, rows past the live batch are padding (slot -1, so
they write no KV), and the captured attention grid is sized for ``max_model_len``.

Small prefill steps replay the same graphs (``run_token_rows``): a step of T <= 256 new tokens
becomes T one-token rows, row i attending to its sequence's keys up to its own position, as
causal attention asks. Each layer writes every row's key and value before attention reads
them, so a row sees the rows before it in its sequence. On an H200 with Llama-3-8B an eager
step of a few tokens is ~14 ms of host launches (BENCHMARKS.md, prefill floor); the rows cost
reads instead (each reads its context), so the step must also read at most
``TOKEN_ROW_READS`` key positions in all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from engine.attention import AttentionBackend, AttentionMetadata
from engine.attention.shared_prefix import SharedPrefixPlan
from engine.model.llama import ForwardContext, LlamaForCausalLM

if TYPE_CHECKING:
    from torch.cuda import _POOL_HANDLE

# a small prefill step replays a decode graph when it has at most this many new tokens ...
TOKEN_ROW_TOKENS = 256
# ... and its rows read at most this many key positions together (T x the longest context). The
# rows of one sequence read the same blocks, mostly from L2: on an H200 with Llama-3-8B (2026-12-02,
# BENCHMARKS.md) 102-token probes at ~4.6K context took the same time under 2^20 as under 2^21; at no
# context, rows against eager: 128 tokens 6.3 vs 14.0 ms, 256 8.3 vs 14.3, 384 11.6, 512 15.8 vs 14.3
TOKEN_ROW_READS = 1 << 20


def token_rows(meta: AttentionMetadata, positions: torch.Tensor) -> AttentionMetadata:
    """The same step as one-token rows: row i is the step's token i, with its sequence's block
    table and ``positions[i] + 1`` keys (itself and every earlier position). No host sync."""
    n = positions.shape[0]
    counts = meta.query_start_loc[1:] - meta.query_start_loc[:-1]
    tables = meta.block_tables.repeat_interleave(counts, dim=0, output_size=n)
    starts = torch.arange(n + 1, dtype=torch.int32, device=positions.device)
    return AttentionMetadata(starts, (positions + 1).to(torch.int32), tables, meta.slot_mapping,
                             max_query_len=1, max_seq_len=meta.max_seq_len, decode_only=True)


def capture_sizes(max_num_seqs: int) -> list[int]:
    small = [b for b in (1, 2, 4, 8) if b <= max_num_seqs]
    return small + list(range(16, max_num_seqs + 1, 16)) + (
        [max_num_seqs] if max_num_seqs > 8 and max_num_seqs % 16 else [])


class DecodeGraphs:
    def __init__(self, model: LlamaForCausalLM, kv_cache: torch.Tensor, backend: AttentionBackend,
                 max_num_seqs: int, max_model_len: int, block_size: int):
        device = kv_cache.device
        self.model = model
        self.max_bs = max_num_seqs
        max_num_seqs = max(max_num_seqs, TOKEN_ROW_TOKENS)  # rows of small prefill steps too
        self.max_model_len = max_model_len
        width = -(-max_model_len // block_size)
        self.input_ids = torch.zeros(max_num_seqs, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_num_seqs, dtype=torch.int64, device=device)
        self.slots = torch.full((max_num_seqs,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(max_num_seqs, dtype=torch.int32, device=device)
        self.tables = torch.zeros(max_num_seqs, width, dtype=torch.int32, device=device)
        self.starts = torch.arange(max_num_seqs + 1, dtype=torch.int32, device=device)
        self.kv_cache, self.backend = kv_cache, backend
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.pool: _POOL_HANDLE | None = None  # the memory pool all captures share (graphs never run at the same time)

    def context(self, bs: int, shared: SharedPrefixPlan | None = None) -> ForwardContext:
        """The forward context over the first ``bs`` rows of the static buffers."""
        meta = AttentionMetadata(self.starts[:bs + 1], self.seq_lens[:bs], self.tables[:bs],
                                 self.slots[:bs], max_query_len=1, max_seq_len=self.max_model_len,
                                 decode_only=True, shared=shared)
        return ForwardContext(self.kv_cache, meta, self.backend)

    @torch.inference_mode()
    def capture(self) -> None:
        for bs in sorted(capture_sizes(self.tables.shape[0]), reverse=True):
            ctx = self.context(bs)
            self.model(self.input_ids[:bs], self.positions[:bs], ctx)  # warm up kernels
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.outputs[bs] = self.model(self.input_ids[:bs], self.positions[:bs], ctx)
            self.pool = graph.pool()
            self.graphs[bs] = graph
        torch.cuda.synchronize()

    def can_run(self, num_seqs: int, max_seq_len: int) -> bool:
        return bool(self.graphs) and num_seqs <= self.max_bs and max_seq_len <= self.max_model_len

    def run_token_rows(self, input_ids: torch.Tensor, positions: torch.Tensor,
                       meta: AttentionMetadata) -> torch.Tensor | None:
        """Hidden states [T, hidden] of a small step with prefill rows, as one-token rows (None:
        too many tokens or reads for that, run it eagerly)."""
        n = input_ids.shape[0]
        if (not self.graphs or n > TOKEN_ROW_TOKENS or n * meta.max_seq_len > TOKEN_ROW_READS
                or meta.max_seq_len > self.max_model_len):
            return None
        return self.run(input_ids, positions, token_rows(meta, positions))

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [n, hidden] of a decode-only step of n sequences."""
        n = input_ids.shape[0]
        bs = min(b for b in self.graphs if b >= n)
        self.load(input_ids, positions, meta, bs)
        self.graphs[bs].replay()
        return self.outputs[bs][:n]

    def load(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, bs: int) -> None:
        """Copy a decode step of n <= bs sequences into the static buffers; rows n..bs pad
        (slot -1 writes no KV, length 1 reads one key)."""
        n = input_ids.shape[0]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slots[:n].copy_(meta.slot_mapping)
        self.slots[n:bs].fill_(-1)
        self.seq_lens[:n].copy_(meta.seq_lens)
        self.seq_lens[n:bs].fill_(1)
        self.tables[:n, :meta.block_tables.shape[1]].copy_(meta.block_tables)
