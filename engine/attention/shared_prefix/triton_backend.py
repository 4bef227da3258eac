"""Shared-prefix (Hydragen) decode attention on the Triton backend: suffixes, segments, one merge.

For a decode-only step with a plan (``engine.attention.shared_prefix``), three launches per
layer fill one buffer of partials ``[B, H_q, S, D]`` and merge it:

1. the split-K decode kernel (``triton_decode``) over each sequence's own suffix, keys
   ``[suffix_start, seq_len)``: a block table shifted by ``suffix_start / block_size`` and
   lengths ``seq_len - suffix_start`` (segments hold whole blocks), into slots ``[0, S_suffix)``;
2. the segment kernel (``shared_prefix.triton_kernel``) over every segment's keys for all its
   members at once, into each member's segment slots (``shared_prefix.triton_layout``);
3. ``triton_merge.merge_partials`` by log-sum-exp into the output.

What depends on the plan's segments alone (device copies of the work layout, the partial
buffers with the unused slots already neutral) is built once and kept in ``plan.layout``,
which the engine's PlanCache shares between the steps of an unchanged batch; what depends on
the step's block tables and lengths (the shifted tables, the suffix lengths) is built on the
step's first layer and kept in ``plan.tensors`` for its other layers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import cast

import torch

from engine.attention.metadata import AttentionMetadata
from engine.attention.shared_prefix import SharedPrefixPlan
from engine.attention.shared_prefix.triton_kernel import SharedPrefixConfig, segment_partials
from engine.attention.shared_prefix.triton_layout import SegmentWork, build_segment_work, chunk_length
from engine.attention.triton_decode import DecodeConfig, decode_partials
from engine.attention.triton_merge import merge_partials
from engine.uploads import upload

PREFIX = "triton_shared."
STEP_NAMES = ("key", "suffix_tables", "suffix_lens")  # in plan.tensors: this step's
LAYOUT_NAMES = ("key", "start_blocks", "suffix_start", "blocks", "items", "member_rows", "member_slots",
                "part_out", "part_lse")  # in plan.layout: the plan's, across steps


@dataclass(frozen=True)
class SharedStep:
    """One step's tensors for the shared-prefix path."""

    key: torch.Tensor            # CPU int64: the shapes and choices these tensors were built for
    suffix_tables: torch.Tensor  # int32 [B, W]: block tables from each sequence's suffix_start
    suffix_lens: torch.Tensor    # int32 [B]: seq_len - suffix_start
    start_blocks: torch.Tensor   # int32 [B]: suffix_start / block size
    suffix_start: torch.Tensor   # int32 [B]
    blocks: torch.Tensor         # int32: SegmentWork.blocks
    items: torch.Tensor          # int32 [num_items, ITEM_FIELDS]
    member_rows: torch.Tensor    # int32
    member_slots: torch.Tensor   # int32
    part_out: torch.Tensor       # fp32 [B, H_q, S, D]
    part_lse: torch.Tensor       # fp32 [B, H_q, S]

    @classmethod
    def cached(cls, plan: SharedPrefixPlan, key: torch.Tensor) -> SharedStep | None:
        step = _lookup(plan.tensors, STEP_NAMES, key)
        layout = _lookup(plan.layout, LAYOUT_NAMES, key) if step is not None else None
        return None if layout is None else cls(**{**cast(dict, step), **layout})  # step is set where layout is

    def store(self, plan: SharedPrefixPlan) -> None:
        plan.tensors.update({PREFIX + n: getattr(self, n) for n in STEP_NAMES})
        plan.layout.update({PREFIX + n: getattr(self, n) for n in LAYOUT_NAMES})


def _lookup(tensors: dict[str, torch.Tensor], names: tuple[str, ...], key: torch.Tensor) -> dict | None:
    if not all(PREFIX + n in tensors for n in names) or not torch.equal(tensors[PREFIX + "key"], key):
        return None
    return {n: tensors[PREFIX + n] for n in names}


def suffix_splits(meta: AttentionMetadata, plan: SharedPrefixPlan, num_kv_heads: int, num_sms: int,
                  config: DecodeConfig) -> int:
    """Split count of the suffix decode, from host values only (the longest suffix is bounded)."""
    return config.num_splits(meta.num_seqs, num_kv_heads, meta.max_seq_len - min(plan.suffix_start), num_sms)


def segment_layout(q: torch.Tensor, k_cache: torch.Tensor, plan: SharedPrefixPlan, suffix_slots: int,
                   tiles: tuple[int, int], num_sms: int, config: SharedPrefixConfig) -> SegmentWork:
    """The segment kernel's work layout for this plan, tiles and machine (host only)."""
    page, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    members_per_tile = tiles[0] // (q.shape[1] // num_kv_heads)
    chunk = chunk_length(plan, page, members_per_tile, num_kv_heads, config.programs_per_sm * num_sms,
                         config.min_chunk_tokens, tiles[1])
    return build_segment_work(plan, q.shape[0], page, suffix_slots, members_per_tile, chunk)


def build_layout(q: torch.Tensor, k_cache: torch.Tensor, plan: SharedPrefixPlan, key: torch.Tensor,
                 suffix_slots: int, tiles: tuple[int, int], num_sms: int, config: SharedPrefixConfig) -> dict:
    """Lay out the plan's work, copy it to the device, and allocate the partials (unused slots
    neutral): the tensors of ``LAYOUT_NAMES``, valid for every step the plan is reused."""
    num_seqs, num_heads, dim = q.shape
    page = k_cache.shape[1]
    work = segment_layout(q, k_cache, plan, suffix_slots, tiles, num_sms, config)

    def device(values: list) -> torch.Tensor:
        return upload(torch.tensor(values, dtype=torch.int32), q.device)
    part_out = torch.empty(num_seqs, num_heads, work.num_slots, dim, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(num_seqs, num_heads, work.num_slots, dtype=torch.float32, device=q.device)
    rows, slots = (upload(torch.tensor(x, dtype=torch.long), q.device) for x in work.unused_slots())
    part_out[rows, :, slots] = 0.0
    part_lse[rows, :, slots] = float("-inf")
    return dict(key=key, start_blocks=device([s // page for s in plan.suffix_start]),
                suffix_start=device(plan.suffix_start), blocks=device(work.blocks), items=device(work.items),
                member_rows=device(work.member_rows), member_slots=device(work.member_slots),
                part_out=part_out, part_lse=part_lse)


def build_step(q: torch.Tensor, k_cache: torch.Tensor, meta: AttentionMetadata, plan: SharedPrefixPlan,
               key: torch.Tensor, suffix_slots: int, tiles: tuple[int, int], num_sms: int,
               config: SharedPrefixConfig) -> SharedStep:
    """This step's tensors: the plan's layout (built unless ``plan.layout`` holds it for ``key``)
    and the suffix tables and lengths (device-side arithmetic on this step's metadata)."""
    layout = _lookup(plan.layout, LAYOUT_NAMES, key)
    if layout is None:
        layout = build_layout(q, k_cache, plan, key, suffix_slots, tiles, num_sms, config)
    width = meta.block_tables.shape[1]
    shifted = (torch.arange(width, device=q.device)[None, :] + layout["start_blocks"][:, None]).clamp_(max=width - 1)
    return SharedStep(suffix_tables=meta.block_tables.gather(1, shifted.long()),
                      suffix_lens=meta.seq_lens - layout["suffix_start"], **layout)


@dataclass(frozen=True)
class SharedLaunch:
    """One layer's three launches over a prepared step (separable for timing)."""

    step: SharedStep
    suffix_splits: int
    tiles: tuple[int, int]

    def suffix(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float,
               decode: DecodeConfig) -> None:
        step, s = self.step, self.suffix_splits
        decode_partials(q, k_cache, v_cache, step.suffix_tables, step.suffix_lens, scale,
                        step.part_out[:, :, :s], step.part_lse[:, :, :s], decode)

    def segments(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, scale: float,
                 config: SharedPrefixConfig) -> None:
        step = self.step
        segment_partials(q, k_cache, v_cache, step.blocks, step.items, step.member_rows, step.member_slots, scale,
                         step.part_out, step.part_lse, self.tiles, config)

    def merge(self, out: torch.Tensor) -> None:
        merge_partials(self.step.part_out, self.step.part_lse, out)


def prepare(q: torch.Tensor, k_cache: torch.Tensor, meta: AttentionMetadata, num_sms: int,
            config: SharedPrefixConfig, decode: DecodeConfig) -> SharedLaunch:
    """The step's tensors from ``plan.tensors`` and ``plan.layout``, built there first if this
    is the step's first layer (and the plan's first step)."""
    plan = meta.shared
    if plan is None or len(plan.suffix_start) != meta.num_seqs:
        raise ValueError(f"shared_prefix_attention needs meta.shared planned for the batch's {meta.num_seqs} "
                         f"sequences, got {None if plan is None else len(plan.suffix_start)}")
    num_heads, dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    splits = suffix_splits(meta, plan, num_kv_heads, num_sms, decode)
    tiles = config.tiles(num_heads // num_kv_heads, dim, q.element_size(),
                         max(len(s.members) for s in plan.segments))
    key = torch.tensor([num_heads, num_kv_heads, dim, k_cache.shape[1], splits, *tiles, num_sms,
                        *config.as_ints, q.device.index or 0, q.device.type == "cuda"])
    step = SharedStep.cached(plan, key)
    if step is None:
        step = build_step(q, k_cache, meta, plan, key, splits, tiles, num_sms, config)
        step.store(plan)
    return SharedLaunch(step, splits, tiles)


@functools.cache
def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The second stream that runs suffix decodes beside segment kernels (one per device)."""
    return torch.cuda.Stream(device)


def shared_prefix_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            meta: AttentionMetadata, scale: float, out: torch.Tensor, num_sms: int,
                            config: SharedPrefixConfig, decode: DecodeConfig) -> None:
    """Decode attention of q [B, H_q, D] through ``meta.shared`` into ``out`` [B, H_q, D].

    Equal (up to rounding) to plain paged decode. Inputs are assumed checked as for plain
    decode (see triton_backend); the plan must cover the batch's sequences. With
    ``config.overlap_suffix`` on CUDA, the suffix decode runs on a second stream while the
    segment kernel runs (both write disjoint slots; the merge waits for both). The segment
    kernel is launched first: its programs (one wave, see ``chunk_length``) take their room
    on every SM at once and the many small suffix programs fill what they leave
    (``SharedPrefixConfig.maxnreg``); launched first, the suffix would hold every SM and the
    large segment programs would wait for room.
    """
    launch = prepare(q, k_cache, meta, num_sms, config, decode)
    if config.overlap_suffix and q.is_cuda:
        main, side = torch.cuda.current_stream(q.device), side_stream(q.device)
        side.wait_stream(main)
        launch.segments(q, k_cache, v_cache, scale, config)
        with torch.cuda.stream(side):
            launch.suffix(q, k_cache, v_cache, scale, decode)
        main.wait_stream(side)
    else:
        launch.suffix(q, k_cache, v_cache, scale, decode)
        launch.segments(q, k_cache, v_cache, scale, config)
    launch.merge(out)
