"""KIVI-style lossy compression of KV blocks for moving them between tiers (opt-in).

KIVI (Liu et al., 2024): keys are quantized per channel with the group running along tokens
(here: one block's tokens), values per token with the group running along channels (the
largest power of two dividing head_dim, at most 128). Each group keeps its minimum and its
scale as fp16; codes are 4 bits (2 a byte) or 2 bits (4 a byte), packed along channels.
The minimum is rounded down and the scale up to fp16, so every code fits and decoding
``min + q * scale`` is within scale / 2 of the input (plus the cache dtype's rounding).
Codes are ``floor((x - min) / scale + 0.5)`` in fp32; ``q * scale`` is exact in fp32
(11-bit scale, <= 4-bit code), so a fused multiply-add decodes to the same bits.

A block the codec cannot represent stays exact (its payload is the raw block): a partial
block (fewer tokens than the block holds), values that are not finite or whose statistics
overflow fp16. A layout where compression would not save bytes is not compressed at all.

The payload's format (header, records) is kvstore/codec_format.py's.

``encode``/``decode`` run a Triton kernel on CUDA (kv_codec_triton.py) and torch on the CPU
(kv_codec_ref.py); both produce the same bytes for the same input.
"""

from __future__ import annotations

import torch

from kvstore.codec_format import HEADER_BYTES, CodecFormat


def encode(kv: torch.Tensor, ids: torch.Tensor, fmt: CodecFormat, num_tokens: int | None = None,
           impl: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress blocks ``ids`` of cache ``kv`` ([L, 2, N, block, H, D]).

    Returns (payloads ``[n, payload_bytes]`` uint8 on kv's device, header included; ``raw``
    ``[n]`` bool on the CPU: blocks to store exact instead, whose payload rows are garbage).
    ``num_tokens``: tokens held by the n blocks (default all); a partial last block is raw.
    ``impl``: 'triton' or 'torch' (default: triton on CUDA, torch elsewhere).
    """
    n = ids.numel()
    if num_tokens is not None and not (n - 1) * fmt.layout.block_size < num_tokens <= n * fmt.layout.block_size:
        raise ValueError(f"{num_tokens} tokens do not fill {n} blocks of {fmt.layout.block_size} up to the last")
    if _impl(kv, impl) == "triton":
        from kvstore.kv_codec_triton import encode_blocks as triton_encode_blocks
        payloads, raw = triton_encode_blocks(kv, ids, fmt)
    else:
        from kvstore.kv_codec_ref import encode_blocks as ref_encode_blocks
        payloads, raw = ref_encode_blocks(kv.index_select(2, ids).permute(2, 0, 1, 3, 4, 5), fmt)
    payloads[:, :HEADER_BYTES] = torch.frombuffer(bytearray(fmt.header()), dtype=torch.uint8).to(kv.device)
    raw = raw.cpu()
    if num_tokens is not None and num_tokens < n * fmt.layout.block_size:
        raw[-1] = True
    return payloads, raw


def decode(kv: torch.Tensor, ids: torch.Tensor, payloads: torch.Tensor, fmt: CodecFormat,
           impl: str | None = None) -> None:
    """Write compressed ``payloads`` ([n, payload_bytes] uint8, any device) into blocks ``ids`` of ``kv``.

    Returns once ``payloads`` may be reused.
    """
    if payloads.shape != (ids.numel(), fmt.payload_bytes) or payloads.dtype != torch.uint8:
        raise ValueError(f"payloads must be uint8 [{ids.numel()}, {fmt.payload_bytes}], "
                         f"got {payloads.dtype} {tuple(payloads.shape)}")
    if _impl(kv, impl) == "triton":
        from kvstore.kv_codec_triton import decode_blocks as triton_decode_blocks
        triton_decode_blocks(kv, ids, payloads.to(kv.device, non_blocking=True), fmt)
        if kv.device.type == "cuda":
            torch.cuda.current_stream(kv.device).synchronize()
    else:
        from kvstore.kv_codec_ref import decode_blocks as ref_decode_blocks
        blocks = ref_decode_blocks(payloads.to(kv.device), fmt)  # [n, L, 2, block, H, D]
        kv.index_copy_(2, ids, blocks.permute(1, 2, 0, 3, 4, 5))


def _impl(kv: torch.Tensor, impl: str | None) -> str:
    if impl not in (None, "torch", "triton"):
        raise ValueError(f"impl must be 'torch', 'triton' or None, got {impl!r}")
    return impl or ("triton" if kv.device.type == "cuda" else "torch")
