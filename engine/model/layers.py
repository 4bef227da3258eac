"""Building blocks shared by the Llama-family decoder: RMSNorm and the gated MLP."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32, scaled in the input dtype (as Llama does)."""

    def __init__(self, size: int, eps: float, **factory):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size, **factory))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """norm(x); with ``residual``: s = x + residual (in x's dtype), returns (norm(s), s)."""
        if x.is_cuda:
            from engine.model.triton_fused import rms_norm
            out, summed = rms_norm(x, self.weight, self.eps, residual)
            return out if residual is None else (out, cast(torch.Tensor, summed))
        if residual is not None:
            x = x + residual
            return self._norm(x), x
        return self._norm(x)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one matrix."""

    def __init__(self, hidden: int, intermediate: int, bias: bool, **factory):
        super().__init__()
        self.intermediate = intermediate
        self.gate_up_proj = nn.Linear(hidden, 2 * intermediate, bias=bias, **factory)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if gate_up.is_cuda:
            from engine.model.triton_fused import silu_and_mul
            return self.down_proj(silu_and_mul(gate_up))
        gate, up = gate_up.split(self.intermediate, dim=-1)
        return self.down_proj(F.silu(gate) * up)
