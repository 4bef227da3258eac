"""The decoder's layer loop with attention done elsewhere, over micro-batches that take turns.

Each layer is two halves around its attention (``DecoderLayer.pre_attention``: norm, qkv
projection, rotary; ``post_attention``: o_proj, residual, norm, MLP). An ``AttentionExecutor``
runs the attention between them: ``start`` hands it one micro-batch's q, k, v of one layer,
``finish`` returns that micro-batch's output. With m micro-batches the loop issues

    start(0, 0) .. start(0, m-1), then for each layer l and micro-batch j:
        finish(l, j); post-attention half of l; pre-attention half of l+1; start(l+1, j)

so while micro-batch j's attention runs (on another device: attention_offload), the dense
halves of the others run here (Lamina's ping-pong; MegaScale-Infer's m >= 2(1 + T_comm/T_compute)).
Every executor sees the same order: (layer, micro-batch) ascending. With m = 1 the operators are
the plain forward's, one after the other. Dense operators are per row, so splitting the rows
changes no value beyond the matrix kernels' blocking (greedy tokens stay the engine's).

The CUDA path's whole-batch forward, Triton kernels and CUDA graphs do not go through here.
"""

from __future__ import annotations

from typing import Protocol

import torch

from engine.attention import AttentionBackend, AttentionMetadata
from engine.model.llama import ForwardContext, LlamaForCausalLM


class AttentionExecutor(Protocol):
    def start(self, layer: int, micro_batch: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Hand off layer ``layer``'s rotated q [T_j, H_q, D], k, v [T_j, H_kv, D] of a micro-batch."""

    def finish(self, layer: int, micro_batch: int) -> torch.Tensor:
        """That micro-batch's attention output [T_j, H_q, D] (or [T_j, H_q * D])."""


def micro_batch_bounds(query_lens: list[int], m: int) -> list[int]:
    """Sequence boundaries [0, .., B] of at most ``m`` micro-batches with about equal tokens each
    (each non-empty; a sequence is never split)."""
    total, bounds, acc = sum(query_lens), [0], 0
    m = max(1, min(m, len(query_lens)))
    for i, n in enumerate(query_lens[:-1]):
        acc += n
        left = len(query_lens) - (i + 1)      # sequences after this one
        wanted = m - len(bounds)              # boundaries still to place
        if wanted > 0 and (acc * m >= total * len(bounds) or left == wanted):
            bounds.append(i + 1)
    bounds.append(len(query_lens))
    return bounds


def split_metadata(meta: AttentionMetadata, seq_bounds: list[int]) -> list[AttentionMetadata]:
    """The metadata of each micro-batch (its sequences' rows, query offsets from 0)."""
    starts = meta.query_start_loc.tolist()
    parts = []
    for lo, hi in zip(seq_bounds, seq_bounds[1:]):
        r0, r1 = starts[lo], starts[hi]
        q_lens = [b - a for a, b in zip(starts[lo:hi], starts[lo + 1:hi + 1])]
        parts.append(AttentionMetadata(
            query_start_loc=meta.query_start_loc[lo:hi + 1] - r0, seq_lens=meta.seq_lens[lo:hi],
            block_tables=meta.block_tables[lo:hi], slot_mapping=meta.slot_mapping[r0:r1],
            max_query_len=max(q_lens), max_seq_len=meta.max_seq_len,
            decode_only=all(n == 1 for n in q_lens)))
    return parts


@torch.inference_mode()
def forward_split(model: LlamaForCausalLM, input_ids: torch.Tensor, positions: torch.Tensor,
                  row_bounds: list[int], executor: AttentionExecutor) -> torch.Tensor:
    """Final hidden states [T, hidden] of the flattened batch, whose rows ``row_bounds[j]:
    row_bounds[j+1]`` form micro-batch j, with every attention run by ``executor``."""
    layers, rotary = model.model.layers, model.rotary
    mbs = list(zip(row_bounds, row_bounds[1:]))
    embedded = model.model.embed_tokens(input_ids)
    h = [embedded[lo:hi] for lo, hi in mbs]
    pos = [positions[lo:hi] for lo, hi in mbs]
    res: list[torch.Tensor | None] = [None] * len(mbs)
    for j in range(len(mbs)):
        q, k, v, res[j] = layers[0].pre_attention(h[j], res[j], pos[j], rotary)
        executor.start(0, j, q, k, v)
    for i, layer in enumerate(layers):
        for j in range(len(mbs)):
            out = executor.finish(i, j)
            h[j], res[j] = layer.post_attention(out, res[j])
            if i + 1 < len(layers):
                q, k, v, res[j] = layers[i + 1].pre_attention(h[j], res[j], pos[j], rotary)
                executor.start(i + 1, j, q, k, v)
    if len(mbs) == 1:
        return model.model.norm(h[0], res[0])[0]
    return model.model.norm(torch.cat(h), torch.cat(res))[0]


class LocalAttention:
    """An executor over a cache here: each micro-batch attends at ``start`` with the engine's
    backend (the split loop's oracle, and the local share of a hybrid step)."""

    def __init__(self, model: LlamaForCausalLM, kv_cache: torch.Tensor, backend: AttentionBackend,
                 metas: list[AttentionMetadata]):
        self.layers = model.model.layers
        self.contexts = [ForwardContext(kv_cache, meta, backend) for meta in metas]
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}

    def start(self, layer: int, micro_batch: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.outputs[layer, micro_batch] = self.layers[layer].self_attn.attend(q, k, v, self.contexts[micro_batch])

    def finish(self, layer: int, micro_batch: int) -> torch.Tensor:
        return self.outputs.pop((layer, micro_batch))
