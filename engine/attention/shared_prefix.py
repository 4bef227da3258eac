"""Shared-prefix (Hydragen) decomposition of decode attention.

When sequences in a decode batch share leading KV blocks (prefix caching makes them the
same physical blocks), attention over each shared segment is computed once for all its
sequences' queries, as one matrix product; each sequence's own suffix is attended
separately; the partial results are merged exactly by log-sum-exp. Sharing may be nested
(a system prompt shared by all, few-shot examples by some): the block tables form a trie,
and every run of trie nodes visited by the same two or more sequences becomes a segment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SharedSegment:
    blocks: tuple[int, ...]     # physical block ids, in order
    start_token: int            # position of the segment's first token in every member
    members: tuple[int, ...]    # batch rows (sequences) that share it


@dataclass
class SharedPrefixPlan:
    segments: list[SharedSegment]
    suffix_start: list[int]     # per sequence: tokens covered by its shared segments
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # device copies, built by backends

    @property
    def shared_tokens(self) -> int:
        """Tokens whose K/V are read once instead of once per member."""
        return sum(len(s.blocks) * (len(s.members) - 1) for s in self.segments)


def plan_shared_prefixes(block_tables: list[list[int]], seq_lens: list[int], block_size: int,
                         min_members: int = 2) -> SharedPrefixPlan | None:
    """Segments of full blocks shared by >= ``min_members`` sequences (None when there are none).

    Only blocks wholly before each sequence's last token are considered: the block being
    written this step is always private. Rows are split by the block they hold at each
    depth; a group's shared run is found with one C-level common-prefix comparison, so the
    cost is per segment, not per block.
    """
    full = [table[:(n - 1) // block_size] for table, n in zip(block_tables, seq_lens)]
    segments: list[SharedSegment] = []
    suffix_start = [0] * len(full)
    stack = [(list(range(len(full))), 0)]  # rows known to share blocks [0, depth)
    while stack:
        rows, depth = stack.pop()
        for group in _groups_at(full, rows, depth, min_members):
            end = depth + len(os.path.commonprefix([full[r][depth:] for r in group]))
            segments.append(SharedSegment(tuple(full[group[0]][depth:end]), depth * block_size, tuple(group)))
            for r in group:
                suffix_start[r] = end * block_size
            stack.append((group, end))
    return SharedPrefixPlan(segments, suffix_start) if segments else None


def _groups_at(full: list[list[int]], rows: list[int], depth: int, min_members: int) -> list[list[int]]:
    """Rows grouped by the block they hold at ``depth`` (groups of at least ``min_members``)."""
    by_block: dict[int, list[int]] = {}
    for r in rows:
        if len(full[r]) > depth:
            by_block.setdefault(full[r][depth], []).append(r)
    return [g for g in by_block.values() if len(g) >= min_members]
