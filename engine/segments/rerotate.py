"""Moving post-RoPE keys to other positions: rotations compose, R(new) = R(new - old) R(old).

The angle of each frequency is taken as the difference of the two fp32 angles the model's own
table holds (``RotaryEmbedding``: fp32 positions times fp32 inverse frequencies), computed in
float64: the rotated key then equals the key computed at the new position up to fp32 rounding
(~1e-7 relative), also at positions in the thousands where one fp32 angle is off by 1e-4 rad.
Layer 0's keys depend on nothing but the token and its position, so there it is exact.
"""

from __future__ import annotations

import torch

from engine.model.rotary import inverse_frequencies
from engine.model_config import ModelConfig


class Rerotator:
    def __init__(self, cfg: ModelConfig, device: torch.device | str = "cpu"):
        self.inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling).to(device)

    def cos_sin(self, old_start: int, new_start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 cos, sin [length, head_dim] of the rotation from old_start + i to new_start + i."""
        device = self.inv_freq.device
        steps = torch.arange(length, device=device, dtype=torch.float32)
        old = torch.outer(steps + old_start, self.inv_freq).double()  # as the model's table rounds them
        new = torch.outer(steps + new_start, self.inv_freq).double()
        angle = torch.cat((new - old, new - old), dim=-1)
        return angle.cos().float(), angle.sin().float()

    def __call__(self, keys: torch.Tensor, old_start: int, new_start: int) -> torch.Tensor:
        """keys [..., T, H, D] (post-RoPE at old_start + i) rotated to new_start + i, in fp32."""
        if old_start == new_start:
            return keys.float()
        cos, sin = self.cos_sin(old_start, new_start, keys.shape[-3])
        cos, sin = cos[:, None, :], sin[:, None, :]
        k = keys.float()
        half = k.shape[-1] // 2
        rotated = torch.cat((-k[..., half:], k[..., :half]), dim=-1)
        return k * cos + rotated * sin
