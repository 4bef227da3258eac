"""The fused decoder kernels (engine/model/triton_fused.py) on the CPU through Triton's
interpreter, against the torch code they replace. As in tests/test_triton_interpret.py,
the ``case_*`` functions run in a child pytest with TRITON_INTERPRET=1."""

from __future__ import annotations

import torch

from engine.model.layers import RMSNorm
from engine.model.rotary import _rotate_half
from tests.interpreter import run_interpreter_cases


def test_fused_kernels_under_the_triton_interpreter() -> None:
    run_interpreter_cases(__file__)


def case_rms_norm_with_and_without_residual() -> None:
    from engine.model.triton_fused import rms_norm
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(96, 1e-5)
    norm.weight.data = torch.randn(96, generator=g)
    x, r = torch.randn(5, 96, generator=g), torch.randn(5, 96, generator=g)
    out, _ = rms_norm(x, norm.weight, 1e-5)
    torch.testing.assert_close(out, norm._norm(x))
    out, summed = rms_norm(x, norm.weight, 1e-5, r)
    torch.testing.assert_close(summed, x + r)
    torch.testing.assert_close(out, norm._norm(x + r))


def case_rotary_in_place_on_strided_views() -> None:
    from engine.model.triton_fused import rotary_
    g = torch.Generator().manual_seed(1)
    hq, hk, d = 4, 2, 16
    qkv = torch.randn(6, (hq + 2 * hk) * d, generator=g)
    q, k = qkv[:, :hq * d].view(6, hq, d), qkv[:, hq * d:(hq + hk) * d].view(6, hk, d)
    positions = torch.tensor([0, 3, 7, 1, 100, 2])
    angles = torch.randn(128, d // 2, generator=g)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    c, s = cos[positions].unsqueeze(1), sin[positions].unsqueeze(1)
    want_q, want_k = q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s
    rotary_(q, k, positions, cos[:, :d // 2], sin[:, :d // 2])
    torch.testing.assert_close(q, want_q)
    torch.testing.assert_close(k, want_k)


def case_silu_and_mul() -> None:
    from engine.model.triton_fused import silu_and_mul
    x = torch.randn(3, 2 * 1500, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(silu_and_mul(x), torch.nn.functional.silu(x[:, :1500]) * x[:, 1500:])
