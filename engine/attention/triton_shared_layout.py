"""Host-side work layout of the shared-prefix (Hydragen) segment kernel; plain Python, no Triton.

Every sequence owns a row of partial-result slots: slots ``[0, suffix_slots)`` hold the
split-K partials of its own suffix, then each shared segment it belongs to gets one slot
per key chunk of that segment. A work item is one (segment, key chunk, member tile): it
attends the tile's members' queries (all heads of one KV group) to the chunk's keys and
writes one partial per member. Chunks are the same length across the whole batch, sized so
that items x KV heads give about the target number of programs; member tiles of one chunk
are adjacent in the item list, so programs launched together read the same K/V tile.
Slots a sequence does not use (its row is shorter than the longest) must be filled with the
neutral partial (out 0, lse -inf) before merging; ``unused_slots`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.attention.shared_prefix import SharedPrefixPlan

ITEM_FIELDS = 6  # block offset, first key, end key, member offset, member count, chunk index


@dataclass(frozen=True)
class SegmentWork:
    """The flat arrays the segment kernel reads, built from one plan."""

    blocks: list[int]            # every segment's physical block ids, concatenated
    items: list[tuple[int, ...]]  # ITEM_FIELDS ints per work item
    member_rows: list[int]       # per (segment, member): the member's batch row
    member_slots: list[int]      # per (segment, member): the slot of the segment's chunk 0
    slots_used: list[int]        # per batch row: slots written (suffix slots included)
    chunk_tokens: int

    @property
    def num_slots(self) -> int:
        return max(self.slots_used)

    def unused_slots(self) -> tuple[list[int], list[int]]:
        """(rows, slots) of the partial slots no kernel writes."""
        pairs = [(row, s) for row, used in enumerate(self.slots_used) for s in range(used, self.num_slots)]
        return [r for r, _ in pairs], [s for _, s in pairs]


def chunk_length(plan: SharedPrefixPlan, page: int, members_per_tile: int, num_kv_heads: int,
                 target_programs: int, min_tokens: int, multiple: int) -> int:
    """Keys per chunk: total (member tile x key) work spread over ``target_programs``, at least
    ``min_tokens``, rounded up to ``multiple`` (the key tile)."""
    work = sum(-(-len(s.members) // members_per_tile) * len(s.blocks) * page for s in plan.segments)
    tokens = max(min_tokens, -(-work * num_kv_heads // max(1, target_programs)))
    return -(-tokens // multiple) * multiple


def build_segment_work(plan: SharedPrefixPlan, num_seqs: int, page: int, suffix_slots: int,
                       members_per_tile: int, chunk_tokens: int) -> SegmentWork:
    """Lay out every segment's chunks and member tiles; see the module docstring."""
    if len(plan.suffix_start) != num_seqs:
        raise ValueError(f"the shared-prefix plan covers {len(plan.suffix_start)} sequences, the batch {num_seqs}")
    if members_per_tile < 1 or chunk_tokens < 1:
        raise ValueError(f"members_per_tile ({members_per_tile}) and chunk_tokens ({chunk_tokens}) must be >= 1")
    blocks: list[int] = []
    items: list[tuple[int, ...]] = []
    rows: list[int] = []
    slots: list[int] = []
    used = [suffix_slots] * num_seqs
    for seg in plan.segments:
        length = len(seg.blocks) * page
        chunks = -(-length // chunk_tokens)
        block_offset, member_offset = len(blocks), len(rows)
        blocks.extend(seg.blocks)
        for row in seg.members:
            rows.append(row)
            slots.append(used[row])
            used[row] += chunks
        for chunk in range(chunks):
            first, end = chunk * chunk_tokens, min(length, (chunk + 1) * chunk_tokens)
            for tile_start in range(0, len(seg.members), members_per_tile):
                count = min(members_per_tile, len(seg.members) - tile_start)
                items.append((block_offset, first, end, member_offset + tile_start, count, chunk))
    return SegmentWork(blocks, items, rows, slots, used, chunk_tokens)
