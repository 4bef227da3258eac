"""Random decode batches whose sequences share prefix blocks, for the shared-prefix kernel's benchmark
and tests (their float64 references, trees and merge inputs are in tests/attention_checks.py).

A batch is a prefix tree: each node is a run of whole blocks with a parent (nested sharing:
a system prompt, few-shot examples below it), and each sequence follows the path to one
node (or none) and then owns ``suffix`` private tokens. Shared blocks are the same physical
blocks in every member's table, as prefix caching makes them. As in ``paged_batches``,
block ids are shuffled and every slot a kernel must not read holds NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.paged_batches import BatchSpec, PagedBatch, _meta_to, _metadata, _new_rows, _slots
from engine.attention.shared_prefix import plan_shared_prefixes


@dataclass(frozen=True)
class PrefixTree:
    """nodes[i] = (parent node or -1, tokens, a multiple of the block size); seqs[j] = (node or -1, suffix tokens)."""

    nodes: tuple[tuple[int, int], ...]
    seqs: tuple[tuple[int, int], ...]

    def path(self, node: int) -> list[int]:
        """Nodes from the root down to ``node`` (empty for -1)."""
        out = []
        while node >= 0:
            out.append(node)
            node = self.nodes[node][0]
        return out[::-1]

    def seq_len(self, j: int) -> int:
        node, suffix = self.seqs[j]
        return sum(self.nodes[n][1] for n in self.path(node)) + suffix


def random_shared_batch(tree: PrefixTree, spec: BatchSpec, device: torch.device | str, seed: int) -> PagedBatch:
    """A decode batch over ``tree`` with ``meta.shared`` planned; ``spec`` gives heads, dim, block size,
    dtype and spare blocks (its q_lens/seq_lens are replaced by the tree's)."""
    bs = spec.block_size
    if any(n % bs for _, n in tree.nodes):
        raise ValueError(f"node lengths {[n for _, n in tree.nodes]} must be multiples of the block size {bs}")
    spec = BatchSpec((1,) * len(tree.seqs), tuple(tree.seq_len(j) for j in range(len(tree.seqs))),
                     spec.num_heads, spec.num_kv_heads, spec.head_dim, bs, spec.dtype, spec.spare_blocks)
    gen = torch.Generator().manual_seed(seed)
    own = [-(-suffix // bs) for _, suffix in tree.seqs]
    num_blocks = sum(n // bs for _, n in tree.nodes) + sum(own) + spec.spare_blocks
    order = torch.randperm(num_blocks, generator=gen)
    node_blocks, used = [], 0
    for _, n in tree.nodes:
        node_blocks.append(order[used:used + n // bs])
        used += n // bs
    tables = torch.full((len(tree.seqs), max(spec.blocks_of(s) for s in spec.seq_lens) + 1), 1 << 24,
                        dtype=torch.int32)
    written = [_slots(ids, len(ids) * bs, bs) for ids in node_blocks]
    for j, ((node, suffix), count) in enumerate(zip(tree.seqs, own)):
        mine = order[used:used + count]
        used += count
        row = torch.cat([node_blocks[n] for n in tree.path(node)] + [mine])
        tables[j, :len(row)] = row.int()
        written.append(_slots(mine, suffix, bs))
    return _fill(spec, tables, torch.cat(written), num_blocks, device, seed)


def _fill(spec: BatchSpec, tables: torch.Tensor, slots: torch.Tensor, num_blocks: int,
          device: torch.device | str, seed: int) -> PagedBatch:
    """NaN caches with random rows at ``slots``, fresh q, metadata with the shared-prefix plan."""
    data_gen = torch.Generator(device=device).manual_seed(seed)
    shape = (num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
    caches = []
    for _ in "kv":
        cache = torch.full(shape, float("nan"), dtype=spec.dtype, device=device)
        rows = torch.randn(len(slots), *shape[2:], generator=data_gen, device=device)
        cache.view(-1, *shape[2:])[slots.to(device)] = rows.to(spec.dtype)
        caches.append(cache)
    q, new_k, new_v = _new_rows(spec, data_gen, False, device)
    meta = _meta_to(_metadata(spec, tables, None), device)
    lists = [tables[j, :spec.blocks_of(s)].tolist() for j, s in enumerate(spec.seq_lens)]
    meta.shared = plan_shared_prefixes(lists, list(spec.seq_lens), spec.block_size)
    return PagedBatch(q, caches[0], caches[1], meta, new_k, new_v)
