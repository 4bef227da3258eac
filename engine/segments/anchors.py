"""KVCOMM-style correction of a reused segment: interpolate its observed deviations.

Each anchor of a segment is its KV as computed after some prefix. Written against the KV the
segment has alone (base b), anchor i is b + d_i: d_i is the deviation that prefix caused. For a
new prefix KVCOMM estimates the deviation as a weighted sum of the anchors' deviations, the
weights a softmax over how far each anchor is from the new context; with weights summing to 1
that is sum_i w_i (b + d_i) = sum_i w_i anchor_i, so the base itself never has to be computed.

How far: the segment's first tokens, recomputed afresh under the new prefix (the probe), against
the same tokens in each anchor (re-rotated to the same positions), per layer, keys and values
apart and per KV head (mean absolute difference, divided by its mean over the anchors; softmax
at ``temperature``). Layer 0 does not depend on the prefix at all: there every anchor is the
same and the weights do not matter. Without a probe (nothing recomputed) anchors weigh equally.
"""

from __future__ import annotations

from typing import cast

import torch

from engine.segments.rerotate import Rerotator
from engine.segments.store import Anchor


def probe_weights(fresh: torch.Tensor, probes: torch.Tensor, temperature: float) -> torch.Tensor:
    """fresh [2, k, H, D] (one layer), probes [A, 2, k, H, D] -> weights [A, 2, H] summing to 1
    over the anchors."""
    dist = (probes - fresh[None]).abs().mean(dim=(2, 4))
    scale = dist.mean(dim=0, keepdim=True).clamp_min(1e-12)
    return torch.softmax(-dist / (scale * temperature), dim=0)


def estimate(anchors: list[Anchor], start: int, lo: int, hi: int, rerotate: Rerotator,
             fresh: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """The segment's KV [L, 2, hi - lo, H, D] (fp32) for its tokens [lo, hi), placed at
    ``start``: one anchor re-rotated, or the anchors blended. ``fresh`` [L, 2, k, H, D]: the KV
    of its tokens [lo - k, lo) as computed under the new prefix (the probe), or None."""
    layers = anchors[0].kv.shape[0]
    probe = 0 if fresh is None else fresh.shape[2]
    if len(anchors) == 1:  # plain re-rotation: every layer at once
        return _placed(anchors[0], slice(None), start, lo, hi, rerotate)
    out = []
    for layer in range(layers):
        kv = torch.stack([_placed(a, layer, start, lo - probe, hi, rerotate) for a in anchors])
        if probe:
            w = probe_weights(cast(torch.Tensor, fresh)[layer].float(), kv[:, :, :probe], temperature)
        else:
            w = torch.full(kv.shape[:2] + kv.shape[3:4], 1.0 / len(anchors), device=kv.device)
        out.append((kv[:, :, probe:] * w[:, :, None, :, None]).sum(0))
    return torch.stack(out)


def _placed(anchor: Anchor, layer: int | slice, start: int, lo: int, hi: int, rerotate: Rerotator) -> torch.Tensor:
    """One anchor's [(L,) 2, hi - lo, H, D] for segment tokens [lo, hi) (one layer, or a slice of
    layers), keys moved to start + i."""
    i, j = lo - start, hi - start
    kv = anchor.kv[layer]
    k = rerotate(kv[..., 0, i:j, :, :], anchor.start + i, lo)
    return torch.stack((k, kv[..., 1, i:j, :, :].float()), dim=-4)
