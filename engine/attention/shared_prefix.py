"""Shared-prefix (Hydragen) decomposition of decode attention.

When sequences in a decode batch share leading KV blocks (prefix caching makes them the
same physical blocks), attention over each shared segment is computed once for all its
sequences' queries, as one matrix product; each sequence's own suffix is attended
separately; the partial results are merged exactly by log-sum-exp. Sharing may be nested
(a system prompt shared by all, few-shot examples by some): the block tables form a trie,
and every run of trie nodes visited by the same two or more sequences becomes a segment.
"""

from __future__ import annotations

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


@dataclass(eq=False)
class _Node:
    members: list[int] = field(default_factory=list)
    children: dict[int, _Node] = field(default_factory=dict)


def plan_shared_prefixes(block_tables: list[list[int]], seq_lens: list[int], block_size: int,
                         min_members: int = 2) -> SharedPrefixPlan | None:
    """Segments of full blocks shared by >= ``min_members`` sequences (None when there are none).

    Only blocks wholly before each sequence's last token are considered: the block being
    written this step is always private.
    """
    root = _Node()
    for row, (table, seq_len) in enumerate(zip(block_tables, seq_lens)):
        node = root
        for block in table[:(seq_len - 1) // block_size]:
            node = node.children.setdefault(block, _Node())
            node.members.append(row)
    segments: list[SharedSegment] = []
    suffix_start = [0] * len(seq_lens)
    stack = [(child, [block], 0) for block, child in root.children.items()]
    while stack:
        node, blocks, start = stack.pop()
        if len(node.members) < min_members:
            continue
        while len(node.children) == 1 and len(next(iter(node.children.values())).members) == len(node.members):
            block, node = next(iter(node.children.items()))
            blocks = blocks + [block]
        segments.append(SharedSegment(tuple(blocks), start * block_size, tuple(node.members)))
        end = start + len(blocks)
        for row in node.members:
            suffix_start[row] = end * block_size
        stack.extend((child, [block], end) for block, child in node.children.items())
    return SharedPrefixPlan(segments, suffix_start) if segments else None
