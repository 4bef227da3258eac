"""The KV codec in torch: the CPU path and the reference the Triton kernels must match bit for bit.

Every step is one IEEE operation in fp32 in the order kv_codec_triton.py takes (see
codec_format.py for the format), so the two produce the same bytes.
"""

from __future__ import annotations

import torch

from kvstore.codec_format import HEADER_BYTES, CodecFormat


def fp16_down(x: torch.Tensor) -> torch.Tensor:
    """fp32 ``x`` rounded toward -inf to fp16."""
    h = x.to(torch.float16)
    bits = h.view(torch.int16)
    lower = torch.where(bits > 0, bits - 1, torch.where(bits == 0, torch.full_like(bits, -32767), bits + 1))
    return torch.where(h.float() > x, lower, bits).view(torch.float16)


def fp16_up(x: torch.Tensor) -> torch.Tensor:
    """fp32 ``x`` >= 0 rounded toward +inf to fp16."""
    h = x.to(torch.float16)
    bits = h.view(torch.int16)
    return torch.where(h.float() < x, bits + 1, bits).view(torch.float16)


def group_stats(low: torch.Tensor, high: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(minimum, scale) as fp16 from a group's fp32 min and max: every code then fits. The divisor is
    a tensor on the data's device: torch on CUDA multiplies by a rounded reciprocal when it is a
    Python number, which is not the IEEE division the Triton kernel (div_rn) and the CPU do."""
    minimum = fp16_down(low)
    return minimum, fp16_up((high - minimum.float()) / torch.full_like(high, levels))


def quantize(x: torch.Tensor, minimum: torch.Tensor, scale: torch.Tensor, levels: int) -> torch.Tensor:
    """Codes of fp32 ``x`` against broadcastable fp16 ``minimum``/``scale``, as uint8:
    ``round((x - minimum) * (1 / scale))``, to nearest even, the reciprocal once per group (IEEE
    division) and the difference and product each rounded to fp32 (the kernel runs without fused
    multiply-adds)."""
    scale = scale.float()
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = (x - minimum.float()).mul_(torch.ones_like(safe) / safe).round_()
    return codes.clamp_(0, levels).to(torch.uint8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes [..., D] -> uint8 [..., D * bits / 8], the first channel in the low bits."""
    per = 8 // bits
    grouped = codes.reshape(*codes.shape[:-1], -1, per)
    packed = grouped[..., 0].clone()
    for s in range(1, per):
        packed |= grouped[..., s] << (bits * s)
    return packed


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of pack, as fp32 codes."""
    shifts = torch.arange(8 // bits, dtype=torch.uint8, device=packed.device) * bits
    return ((packed[..., None] >> shifts) & ((1 << bits) - 1)).flatten(-2).float()


def encode_blocks(blocks: torch.Tensor, fmt: CodecFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """blocks [n, L, 2, block, H, D] -> (payloads [n, payload_bytes] uint8, header left zero; raw [n] bool)."""
    lay, levels = fmt.layout, fmt.levels
    n, groups, group = blocks.shape[0], fmt.groups, fmt.group
    x = blocks.float().permute(0, 1, 2, 4, 3, 5)  # [n, L, 2, H, block, D]
    k, v = x[:, :, 0], x[:, :, 1]
    k_min, k_scale = group_stats(k.amin(3), k.amax(3), levels)  # [n, L, H, D]
    k_codes = quantize(k, k_min[:, :, :, None], k_scale[:, :, :, None], levels)
    vg = v.reshape(*v.shape[:-1], groups, group)
    v_min, v_scale = group_stats(vg.amin(-1), vg.amax(-1), levels)  # [n, L, H, block, groups]
    v_codes = quantize(vg, v_min[..., None], v_scale[..., None], levels).flatten(-2)
    lead = (n, lay.num_layers, lay.num_kv_heads, -1)
    parts = [pack(k_codes, fmt.bits).reshape(lead), pack(v_codes, fmt.bits).reshape(lead)]
    parts += [t.contiguous().view(torch.uint8).reshape(lead) for t in (k_min, k_scale, v_min, v_scale)]
    payloads = torch.zeros(n, fmt.payload_bytes, dtype=torch.uint8, device=blocks.device)
    payloads[:, HEADER_BYTES:] = torch.cat(parts, -1).reshape(n, -1)
    # inf or NaN anywhere in a block makes its stats inf or NaN (amin/amax propagate NaN)
    stats = torch.cat([t.reshape(n, -1) for t in (k_min, k_scale, v_min, v_scale)], 1)
    return payloads, ~torch.isfinite(stats).all(1)


def split_records(payloads: torch.Tensor, fmt: CodecFormat) -> tuple[torch.Tensor, ...]:
    """A payload's parts as tensors [n, L, H, ...]: K codes, V codes [block, D] (fp32), K min and
    scale [D], V min and scale [block, groups] (fp32 from fp16)."""
    lay = fmt.layout
    n, bs, dim, groups = payloads.shape[0], lay.block_size, lay.head_dim, fmt.groups
    rec = payloads[:, HEADER_BYTES:].reshape(n, lay.num_layers, lay.num_kv_heads, fmt.record_bytes)
    sizes = [fmt.code_bytes, fmt.code_bytes, 2 * dim, 2 * dim, 2 * bs * groups, 2 * bs * groups]
    k_packed, v_packed, *stats = torch.split(rec, sizes, -1)
    k_min, k_scale, v_min, v_scale = (s.contiguous().view(torch.float16).float() for s in stats)
    lead = rec.shape[:3]
    k_codes, v_codes = (unpack(p.reshape(*lead, bs, -1), fmt.bits) for p in (k_packed, v_packed))
    return k_codes, v_codes, k_min, k_scale, v_min.reshape(*lead, bs, groups), v_scale.reshape(*lead, bs, groups)


def decode_blocks(payloads: torch.Tensor, fmt: CodecFormat) -> torch.Tensor:
    """payloads [n, payload_bytes] uint8 -> blocks [n, L, 2, block, H, D] in the layout's dtype."""
    k_codes, v_codes, k_min, k_scale, v_min, v_scale = split_records(payloads, fmt)
    k = k_min[:, :, :, None] + k_codes * k_scale[:, :, :, None]
    v_codes = v_codes.reshape(*v_codes.shape[:-1], fmt.groups, fmt.group)
    v = (v_min[..., None] + v_codes * v_scale[..., None]).flatten(-2)
    out = torch.stack([k, v], 2).permute(0, 1, 2, 4, 3, 5)  # [n, L, 2, block, H, D]
    return out.to(fmt.layout.torch_dtype).contiguous()
