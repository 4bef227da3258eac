"""Host-side work layout of the shared-prefix (Hydragen) segment kernel; plain Python, no Triton.

Every sequence owns a row of partial-result slots: slots ``[0, suffix_slots)`` hold the
split-K partials of its own suffix, then each shared segment it belongs to gets one slot
per key chunk of that segment. A work item is one (segment, key chunk, member tile): it
attends the tile's members' queries (all heads of one KV group) to the chunk's keys and
writes one partial per member. Chunks are the same length across the whole batch, sized so
that items x KV heads fill whole waves of the target number of programs (``chunk_length``);
member tiles of one chunk are adjacent in the item list, so programs launched together read
the same K/V tile.
Slots a sequence does not use (its row is shorter than the longest) must be filled with the
neutral partial (out 0, lse -inf) before merging; ``unused_slots`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.attention.shared_prefix import SharedPrefixPlan

ITEM_FIELDS = 6  # block offset, first key, end key, member offset, member count, chunk index
MAX_WAVES = 4  # chunk_length considers up to this many waves of programs


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
    """Keys per chunk (a multiple of ``multiple``, the key tile, and at least ``min_tokens``).

    For 1..MAX_WAVES waves of ``target_programs`` (item x KV head) programs: the shortest
    chunk whose programs fit in that many waves; the choice with the least ``waves x
    chunk`` (the time of the longest slot) wins, fewer waves on ties. One wave usually
    wins: every program starts at once, so the suffix decode on the second stream can take
    the room the segment kernel leaves at once rather than after the last segment program
    started, and a segment's chunks come out nearly equal (the old rule, work / target
    rounded up, left a 384-key third chunk at B256 x 16K: 1.5 programs per slot and an
    extra partial per row). Beyond MAX_WAVES, the work is spread evenly over the target.
    """
    tiles = [(-(-len(s.members) // members_per_tile), len(s.blocks) * page) for s in plan.segments]
    lo = max(1, -(-min_tokens // multiple))  # chunk lengths in units of the key tile from here on
    if not tiles:
        return lo * multiple

    def programs(units: int) -> int:
        return num_kv_heads * sum(count * -(-keys // (units * multiple)) for count, keys in tiles)

    hi = max(lo, -(-max(keys for _, keys in tiles) // multiple))
    best: tuple[int, int] | None = None
    for waves in range(1, MAX_WAVES + 1):
        budget = waves * max(1, target_programs)
        if programs(hi) > budget:
            continue
        low, high = lo, hi
        while low < high:  # programs() only falls as chunks grow
            mid = (low + high) // 2
            low, high = (low, mid) if programs(mid) <= budget else (mid + 1, high)
        if best is None or waves * low < best[0]:
            best = (waves * low, low)
    if best is None:
        work = num_kv_heads * sum(count * keys for count, keys in tiles)
        return min(hi, max(lo, -(-work // (max(1, target_programs) * multiple)))) * multiple
    return best[1] * multiple


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
