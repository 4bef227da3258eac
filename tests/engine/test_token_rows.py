"""Small prefill steps as one-token rows (engine/cuda_graphs.py ``token_rows``): the same step,
run eagerly on the CPU both ways, gives the same hidden states. On CUDA those rows replay the
decode graphs (tests/gpu check the tokens); here the layout alone is checked."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.attention import AttentionMetadata
from engine.cuda_graphs import token_rows
from engine.model.llama import ForwardContext
from tests.engine.conftest import make_engine

BLOCK = 16


@pytest.fixture(scope="module")
def runner(tiny_model):
    return make_engine(tiny_model, dtype="float32", num_blocks=32, block_size=BLOCK).runner


def _step(tables: list[list[int]], spans: list[tuple[int, int]]) -> tuple[torch.Tensor, AttentionMetadata]:
    """Positions and prefill metadata of a step computing tokens [lo, hi) of each sequence."""
    positions = torch.cat([torch.arange(lo, hi) for lo, hi in spans])
    slots = torch.cat([torch.tensor([t[p // BLOCK] * BLOCK + p % BLOCK for p in range(lo, hi)])
                       for t, (lo, hi) in zip(tables, spans)])
    starts = torch.tensor([0] + [hi - lo for lo, hi in spans]).cumsum(0).to(torch.int32)
    width = max(len(t) for t in tables)
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    meta = AttentionMetadata(starts, torch.tensor([hi for _, hi in spans], dtype=torch.int32), block_tables,
                             slots, max_query_len=max(hi - lo for lo, hi in spans),
                             max_seq_len=max(hi for _, hi in spans), decode_only=False)
    return positions, meta


def _forward(runner, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
    with torch.inference_mode():
        return runner.model(ids, positions, ForwardContext(runner.kv_cache, meta, runner.backend))


def _both_ways(runner, ids, positions, meta, rows: AttentionMetadata, context: tuple | None = None):
    """Hidden states of the step as prefill rows and as one-token rows, each from the same cache."""
    out = []
    for m in (meta, rows):
        runner.kv_cache.zero_()
        if context is not None:
            _forward(runner, *context)
        out.append(_forward(runner, ids, positions, m))
    return out


def test_one_prompt_as_rows_equals_its_prefill(runner) -> None:
    tables = [[3, 7, 1]]
    positions, meta = _step(tables, [(0, 40)])
    ids = torch.randint(1, 200, (40,), generator=torch.Generator().manual_seed(0))
    rows = token_rows(meta, positions)
    assert rows.decode_only and rows.seq_lens.tolist() == list(range(1, 41))
    prefill, as_rows = _both_ways(runner, ids, positions, meta, rows)
    torch.testing.assert_close(as_rows, prefill, rtol=1e-5, atol=1e-5)


def test_chunks_after_context_in_a_mixed_step(runner) -> None:
    """Two sequences with cached context: 9 new tokens of one, a decode row of the other, 5 of a third."""
    tables = [[2, 5, 9], [4, 6], [8, 10]]
    gen = torch.Generator().manual_seed(1)
    ctx_pos, ctx_meta = _step(tables, [(0, 30), (0, 20), (0, 17)])
    context = (torch.randint(1, 200, (ctx_pos.shape[0],), generator=gen), ctx_pos, ctx_meta)
    positions, meta = _step(tables, [(30, 39), (20, 21), (17, 22)])
    ids = torch.randint(1, 200, (positions.shape[0],), generator=gen)
    prefill, as_rows = _both_ways(runner, ids, positions, meta, token_rows(meta, positions), context)
    torch.testing.assert_close(as_rows, prefill, rtol=1e-5, atol=1e-5)


def test_a_row_that_misses_its_own_key_differs(runner) -> None:
    """The check can fail: rows one key short (not seeing themselves) change the hidden states."""
    tables = [[3, 7, 1]]
    positions, meta = _step(tables, [(0, 24)])
    ids = torch.randint(1, 200, (24,), generator=torch.Generator().manual_seed(2))
    rows = token_rows(meta, positions)
    short = dataclasses.replace(rows, seq_lens=(rows.seq_lens - 1).clamp(min=1))
    prefill, wrong = _both_ways(runner, ids, positions, meta, short)
    assert not torch.allclose(wrong, prefill, rtol=1e-3, atol=1e-3)
