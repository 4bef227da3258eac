"""CUDA graphs for decode steps: one captured forward per padded batch size.

(Shared-prefix steps are captured per batch instead: ``shared_step_graph``, on these buffers.)

Decode steps are many small kernels; replaying a captured graph removes the launch gaps.
Inputs are copied into static buffers, rows past the live batch are padding (slot -1, so
they write no KV), and the captured attention grid is sized for ``max_model_len``.
"""

from __future__ import annotations

import torch

from engine.attention import AttentionBackend, AttentionMetadata
from engine.attention.shared_prefix import SharedPrefixPlan
from engine.model.llama import ForwardContext, LlamaForCausalLM


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
        self.pool = None  # the memory pool all captures share (graphs never run at the same time)

    def context(self, bs: int, shared: SharedPrefixPlan | None = None) -> ForwardContext:
        """The forward context over the first ``bs`` rows of the static buffers."""
        meta = AttentionMetadata(self.starts[:bs + 1], self.seq_lens[:bs], self.tables[:bs],
                                 self.slots[:bs], max_query_len=1, max_seq_len=self.max_model_len,
                                 decode_only=True, shared=shared)
        return ForwardContext(self.kv_cache, meta, self.backend)

    @torch.inference_mode()
    def capture(self) -> None:
        for bs in sorted(capture_sizes(self.max_bs), reverse=True):
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
