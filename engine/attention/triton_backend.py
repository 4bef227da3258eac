"""The Triton attention backend: paged KV writes, split-K decode, causal mixed-batch prefill.

Decode-only steps run ``triton_decode`` (split-K over the keys; the splits are merged in the
same launch, or by ``triton_merge`` when ``DecodeConfig.fused_merge`` is off); other steps
run ``triton_prefill``. Every host-side choice depends only on shapes and
``meta.max_seq_len``, never on device values, so decode steps can be captured in CUDA
graphs with ``max_seq_len`` set to the captured bound. Decode steps with a shared-prefix
plan (``meta.shared``) go to ``shared_prefix.triton_backend`` (eagerly, or in a graph captured for
their batch: ``engine/shared_step_graph.py``).
"""

from __future__ import annotations

import torch

from engine.attention.metadata import AttentionMetadata
from engine.attention.shared_prefix.triton_backend import shared_prefix_attention
from engine.attention.shared_prefix.triton_kernel import SharedPrefixConfig
from engine.attention.triton_decode import DecodeConfig, decode_merged, decode_partials
from engine.attention.triton_merge import merge_partials
from engine.attention.triton_prefill import PrefillConfig, prefill_attention
from engine.attention.triton_write_kv import write_kv as triton_write_kv

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (16, 32, 64, 128, 256)


def check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """Caches must be [num_blocks, block_size, H_kv, D] of one layout and a supported dtype."""
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} must both be "
                         "[num_blocks, block_size, num_kv_heads, head_dim] with the same strides")
    if k_cache.dtype not in DTYPES or v_cache.dtype != k_cache.dtype:
        raise ValueError(f"KV cache dtype must be one of {DTYPES}, got {k_cache.dtype}/{v_cache.dtype}")
    if k_cache.shape[3] not in HEAD_DIMS or k_cache.stride(3) != 1:
        raise ValueError(f"head_dim must be one of {HEAD_DIMS} and contiguous, got shape "
                         f"{tuple(k_cache.shape)} strides {k_cache.stride()}")


def check_rows(name: str, x: torch.Tensor, cache: torch.Tensor, heads: int | None = None) -> None:
    """x must be [T, heads, D] with a contiguous last dim, on the cache's device."""
    heads = cache.shape[2] if heads is None else heads
    if x.dim() != 3 or x.shape[1] != heads or x.shape[2] != cache.shape[3]:
        raise ValueError(f"{name} must be [T, {heads}, {cache.shape[3]}], got {tuple(x.shape)}")
    if x.device != cache.device:
        raise ValueError(f"{name} is on {x.device} but the KV cache is on {cache.device}")


def check_meta(q: torch.Tensor, meta: AttentionMetadata) -> None:
    """Shape and dtype checks of the metadata that need no device synchronisation."""
    b = meta.num_seqs
    if meta.query_start_loc.shape != (b + 1,) or meta.block_tables.dim() != 2 or meta.block_tables.shape[0] != b:
        raise ValueError(f"metadata of {b} sequences needs query_start_loc [{b + 1}] and block_tables "
                         f"[{b}, max_blocks], got {tuple(meta.query_start_loc.shape)} and "
                         f"{tuple(meta.block_tables.shape)}")
    for name in ("query_start_loc", "seq_lens", "block_tables"):
        if getattr(meta, name).dtype != torch.int32:
            raise ValueError(f"meta.{name} must be int32, got {getattr(meta, name).dtype}")
    if meta.block_tables.stride(1) != 1:
        raise ValueError("meta.block_tables rows must be contiguous")
    if meta.decode_only and q.shape[0] != b:
        raise ValueError(f"a decode-only batch of {b} sequences needs {b} query rows, got {q.shape[0]}")


class SplitCounters:
    """Zeroed int32 arrival counters for the fused decode merge, one buffer per device.

    Every fused launch leaves the counters it used at zero, so one buffer serves every layer
    and step, eager or replayed in a CUDA graph. A buffer is made (zeroed) outside graph
    capture and grown by doubling; growing while a capture is running raises, since a
    graph must not own the counters. Older buffers are kept alive, never freed: a graph
    captured with one still uses it after a larger batch has replaced it.
    """

    def __init__(self, min_size: int = 1024):
        self.min_size = min_size
        self.buffers: dict[torch.device, list[torch.Tensor]] = {}

    def get(self, device: torch.device, size: int) -> torch.Tensor:
        """A zeroed int32 buffer on ``device`` with at least ``size`` elements."""
        held = self.buffers.setdefault(device, [])
        if held and held[-1].numel() >= size:
            return held[-1]
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"the fused decode merge needs {size} split counters but only "
                               f"{held[-1].numel() if held else 0} exist on {device}; run one eager decode "
                               "step of this batch size before capturing a CUDA graph")
        grown = max(size, self.min_size, 2 * held[-1].numel() if held else 0)
        held.append(torch.zeros(grown, dtype=torch.int32, device=device))
        return held[-1]


class TritonAttention:
    """Attention backend running Triton kernels over the paged KV cache (CUDA)."""

    name = "triton"

    def __init__(self, decode: DecodeConfig = DecodeConfig(), prefill: PrefillConfig = PrefillConfig(),
                 shared: SharedPrefixConfig = SharedPrefixConfig()):
        self.decode_config = decode
        self.prefill_config = prefill
        self.shared_config = shared
        self.counters = SplitCounters()

    def write_kv(self, k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Store new keys/values [T, H_kv, D] at ``slot_mapping`` (slots < 0 are skipped)."""
        check_cache(k_cache, v_cache)
        check_rows("k", k, k_cache)
        check_rows("v", v, v_cache)
        if slot_mapping.shape != (k.shape[0],) or v.shape[0] != k.shape[0]:
            raise ValueError(f"slot_mapping {tuple(slot_mapping.shape)} must have one slot per row of "
                             f"k {tuple(k.shape)} and v {tuple(v.shape)}")
        triton_write_kv(k_cache, v_cache, k, v, slot_mapping)

    def forward(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: AttentionMetadata, scale: float) -> torch.Tensor:
        """Causal attention of q [T, H_q, D] over the paged cache; returns [T, H_q, D] in q's dtype."""
        check_cache(k_cache, v_cache)
        if q.dim() != 3 or q.shape[1] % k_cache.shape[2]:
            raise ValueError(f"q must be [T, H_q, D] with H_q a multiple of num_kv_heads={k_cache.shape[2]}, "
                             f"got {tuple(q.shape)}")
        check_rows("q", q, k_cache, heads=q.shape[1])
        if q.dtype != k_cache.dtype:
            raise ValueError(f"q dtype {q.dtype} differs from the KV cache dtype {k_cache.dtype}")
        check_meta(q, meta)
        q = q if q.stride(2) == 1 else q.contiguous()
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        if q.shape[0] == 0:
            return out
        if meta.decode_only and meta.shared is not None:  # Hydragen: shared_prefix.triton_backend
            shared_prefix_attention(q, k_cache, v_cache, meta, scale, out, multiprocessors(q.device),
                                    self.shared_config, self.decode_config)
        elif meta.decode_only:
            self._decode(q, k_cache, v_cache, meta, scale, out)
        else:
            prefill_attention(q, k_cache, v_cache, meta, scale, out, self.prefill_config)
        return out

    def _decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: AttentionMetadata, scale: float, out: torch.Tensor) -> None:
        num_seqs, num_heads, dim = q.shape
        splits = self.decode_config.num_splits(num_seqs, k_cache.shape[2], meta.max_seq_len,
                                               multiprocessors(q.device))
        part_lse = torch.empty(num_seqs, num_heads, splits, dtype=torch.float32, device=q.device)
        if splits == 1:  # one split is the whole answer: write it straight to out, no merge
            decode_partials(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale, out.unsqueeze(2),
                            part_lse, self.decode_config)
            return
        part_out = torch.empty(num_seqs, num_heads, splits, dim, dtype=torch.float32, device=q.device)
        args = (q, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale, part_out, part_lse)
        if self.decode_config.fused_merge:
            counters = self.counters.get(q.device, num_seqs * k_cache.shape[2])
            decode_merged(*args, out, counters, self.decode_config)
        else:
            decode_partials(*args, self.decode_config)
            merge_partials(part_out, part_lse, out)


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (Triton's CPU interpreter)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count
