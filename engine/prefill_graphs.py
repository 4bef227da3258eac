"""CUDA graphs for prefill steps: each layer's dense half replayed per padded token count, attention eager.

An eager step of a few hundred tokens on Llama-3-8B queues ~700 kernels, 12-27 ms of host time
on an H200's host (2026-12-02: 12.4 ms on one machine, 26.9 ms on another), while the GPU needs
~10 ms for 512 tokens: such steps are host-bound, and in a serving engine they also hold back
the decode steps around them. Steps of up to ``TOKEN_ROW_TOKENS`` tokens replay the decode
graphs as one-token rows (cuda_graphs.py); larger ones come here.

A step of T tokens runs in the smallest bucket B >= T. The forward is cut at attention: piece 0
is the embedding and layer 0's norm, qkv projection and rotary; piece i (1..L-1) is layer i-1's
o_proj, residual add, norm and MLP, then layer i's half before attention; the last piece is
layer L-1's half after attention and the final norm. Each piece is a CUDA graph over static
buffers of B rows. Between pieces the layer's attention runs eagerly on the step's own T rows
and metadata (KV write and attention kernels, a few launches), and its output is copied into
the static input of the next piece. Rows T..B are padding: they hold stale tokens and
positions, compute values nobody reads, and never reach attention, so they write no KV and no
real row attends to them. Matrix products treat rows independently; the kernel cuBLAS picks for
B rows may round differently from the one it picks for T, as any change of batch shape may.

Past the largest bucket a step runs eagerly: on a fast host its kernels then take longer than
their launches, and the padding would cost more than the launches saved (a slower host, where an
eager step's launches take 27 ms, would gain from larger buckets too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch

from engine.attention import AttentionBackend, AttentionMetadata
from engine.model.llama import DecoderLayer, ForwardContext, LlamaForCausalLM

if TYPE_CHECKING:
    from torch.cuda import _POOL_HANDLE

# padded token counts captured. On an H200 with Llama-3-8B (2026-12-02, BENCHMARKS.md) a 300-token
# step took 9.8 ms from these graphs against 14.0 ms eager; at 448 tokens and above it was no faster
# (16.3 vs 15.7 ms at 448, 20.1 vs 17.5 at 700 in the 768 bucket): by then the GPU time exceeds the
# eager launches on that host, and the graphed step pays the padding. 128 and 256 serve small steps
# whose one-token rows would read too many keys (cuda_graphs.TOKEN_ROW_READS).
PREFILL_GRAPH_BUCKETS = (128, 256, 320, 384)


class PrefillGraphs:
    def __init__(self, model: LlamaForCausalLM, kv_cache: torch.Tensor, backend: AttentionBackend,
                 max_tokens: int, pool: _POOL_HANDLE | None):
        cfg, device = model.config, kv_cache.device
        self.model, self.kv_cache, self.backend, self.pool = model, kv_cache, backend, pool
        self.layers = cast(list[DecoderLayer], list(model.model.layers))
        if model.rotary is None:
            raise ValueError("build the model's rotary tables before capturing graphs")
        self.rotary = model.rotary
        self.buckets = [b for b in PREFILL_GRAPH_BUCKETS if b <= max_tokens]
        rows = max(self.buckets, default=0)
        dtype = model.model.embed_tokens.weight.dtype
        self.input_ids = torch.zeros(rows, dtype=torch.int64, device=device)
        self.positions = torch.zeros(rows, dtype=torch.int64, device=device)
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        self.shapes = ((cfg.num_heads, cfg.head_dim), (cfg.num_kv_heads, cfg.head_dim))
        self.qkv = torch.zeros(rows, cfg.q_size + 2 * cfg.kv_size, dtype=dtype, device=device)
        self.residual = torch.zeros(rows, cfg.hidden_size, dtype=dtype, device=device)
        self.attn = torch.zeros(rows, cfg.num_heads, cfg.head_dim, dtype=dtype, device=device)
        self.graphs: dict[int, list[torch.cuda.CUDAGraph]] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.steps = 0  # steps run here

    def _views(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [n, H_q, D], k and v [n, H_kv, D]: views of the static qkv rows."""
        q, k, v = self.qkv[:n].split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        (hq, d), (hk, _) = self.shapes
        return q.view(n, hq, d), k.view(n, hk, d), v.view(n, hk, d)

    def _keep(self, b: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor) -> None:
        """A piece's outputs into the static buffers (inside the graph)."""
        sq, sk, sv = self._views(b)
        sq.copy_(q)
        sk.copy_(k)
        sv.copy_(v)
        self.residual[:b].copy_(residual)

    def _piece(self, b: int, i: int) -> torch.Tensor | None:
        """Piece ``i`` of bucket ``b`` (0 .. L): reads the static inputs, writes the static outputs;
        the last piece returns the final hidden states."""
        model, layers, positions = self.model, self.layers, self.positions[:b]
        if i == 0:
            h, residual = model.model.embed_tokens(self.input_ids[:b]), None
        else:
            h, residual = layers[i - 1].post_attention(self.attn[:b], self.residual[:b])
        if i == len(layers):
            return model.model.norm(h, residual)[0]
        q, k, v, residual = layers[i].pre_attention(h, residual, positions, self.rotary)
        self._keep(b, q, k, v, residual)
        return None

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket's pieces, largest first, into the shared pool."""
        pieces = len(self.layers) + 1
        for b in sorted(self.buckets, reverse=True):
            graphs = []
            for i in range(pieces):
                self._piece(b, i)  # warm up its kernels
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    out = self._piece(b, i)
                self.pool = graph.pool()
                graphs.append(graph)
                if out is not None:
                    self.outputs[b] = out
            self.graphs[b] = graphs
        torch.cuda.synchronize()

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        """Hidden states [T, hidden] of a step of T tokens (None: no bucket holds it, run it eagerly)."""
        n = input_ids.shape[0]
        b = next((b for b in self.buckets if b >= n and b in self.graphs), None)
        if b is None:
            return None
        self.steps += 1
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        ctx = ForwardContext(self.kv_cache, meta, self.backend)
        q, k, v = self._views(n)
        for layer, graph in zip(self.layers, self.graphs[b]):
            graph.replay()
            self.attn[:n].copy_(layer.self_attn.attend(q, k, v, ctx))
        self.graphs[b][-1].replay()
        return self.outputs[b][:n]
