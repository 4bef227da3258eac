"""The shared-prefix decomposition in torch: the CPU path and the Triton kernels' oracle."""

from __future__ import annotations

import torch

from engine.attention.metadata import AttentionMetadata
from engine.attention.reference import gather_kv
from engine.attention.shared_prefix import SharedPrefixPlan


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked attention of q [N, Hq, D] over k, v [L, Hkv, D]: out [N, Hq, D], lse [N, Hq] (fp32)."""
    group = q.shape[1] // k.shape[1]
    kh = k.float().repeat_interleave(group, dim=1).transpose(0, 1)   # [Hq, L, D]
    vh = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = torch.einsum("nhd,hld->hnl", q.float(), kh) * scale        # [Hq, N, L]
    lse = torch.logsumexp(scores, dim=-1)                                # [Hq, N]
    out = torch.einsum("hnl,hld->nhd", torch.exp(scores - lse[..., None]), vh)
    return out, lse.transpose(0, 1)


def merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial attentions over disjoint key sets (exact, by log-sum-exp)."""
    lse = torch.logaddexp(lse_a, lse_b)
    out = out_a * torch.exp(lse_a - lse)[..., None] + out_b * torch.exp(lse_b - lse)[..., None]
    return out, lse


def shared_prefix_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         meta: AttentionMetadata, plan: SharedPrefixPlan, scale: float) -> torch.Tensor:
    """Decode attention (one query row per sequence) through the plan's segments and suffixes."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    for row, (seq_len, start) in enumerate(zip(meta.seq_lens.tolist(), plan.suffix_start)):
        table = meta.block_tables[row]
        k = gather_kv(k_cache, table, seq_len)[start:]
        v = gather_kv(v_cache, table, seq_len)[start:]
        out[row], lse[row] = (t[0] for t in attention_with_lse(q[row:row + 1], k, v, scale))
    for seg in plan.segments:
        blocks = torch.tensor(seg.blocks, device=q.device)
        k = k_cache.index_select(0, blocks).reshape(-1, *k_cache.shape[2:])
        v = v_cache.index_select(0, blocks).reshape(-1, *v_cache.shape[2:])
        rows = torch.tensor(seg.members, device=q.device)
        seg_out, seg_lse = attention_with_lse(q[rows], k, v, scale)
        out[rows], lse[rows] = merge(out[rows], lse[rows], seg_out, seg_lse)
    return out.to(q.dtype)
