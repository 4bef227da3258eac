"""The engine's seam: the layer loop split around attention, over micro-batches."""

from __future__ import annotations

import pytest
import torch

from engine.attention import get_backend
from engine.batch import build_model_input
from engine.llm_engine import LLMEngine
from engine.model.split_forward import LocalAttention, forward_split, micro_batch_bounds, split_metadata
from engine.sampling_params import SamplingParams
from tests.attention_offload.local_offload import engine_config


@pytest.mark.parametrize("lens, m, bounds", [
    ([1, 1, 1, 1], 2, [0, 2, 4]),
    ([1, 1, 1, 1], 3, [0, 2, 3, 4]),
    ([1, 1, 1], 5, [0, 1, 2, 3]),
    ([30, 1, 1, 1], 2, [0, 1, 4]),
    ([1, 1, 1, 30], 2, [0, 3, 4]),
    ([5], 3, [0, 1]),
    ([2, 2, 2, 2, 2, 2], 3, [0, 2, 4, 6]),
])
def test_micro_batch_bounds(lens, m, bounds):
    assert micro_batch_bounds(lens, m) == bounds


def mixed_step(model_dir):
    """An engine with one mixed step scheduled (prompts of several lengths, one decoding), and
    its model input; the engine's cache holds the decoding request's prompt."""
    engine = LLMEngine(engine_config(model_dir, block_size=8))
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    engine.add_request("a", list(range(3, 24)), params)
    engine.step()
    for rid, n in (("b", 9), ("c", 1), ("d", 17)):
        engine.add_request(rid, list(range(5, 5 + n)), params)
    sched = engine.scheduler.schedule()
    inp = build_model_input(sched.scheduled, 8, engine.device)
    return engine, sched.scheduled, inp


@pytest.mark.parametrize("m", [1, 2, 3])
def test_split_loop_equals_the_forward(tiny_model, m):
    engine, scheduled, inp = mixed_step(tiny_model)
    model, cache = engine.runner.model, engine.runner.kv_cache
    before = cache.clone()
    with torch.inference_mode():
        whole = engine.runner.model(inp.input_ids, inp.positions, _ctx(engine, cache, inp.meta))
    written = cache.clone()
    cache.copy_(before)
    seq_bounds = micro_batch_bounds([s.num_new_tokens for s in scheduled], m)
    assert len(seq_bounds) - 1 == m
    rows = [int(inp.meta.query_start_loc[b]) for b in seq_bounds]
    executor = LocalAttention(model, cache, get_backend("torch"), split_metadata(inp.meta, seq_bounds))
    split = forward_split(model, inp.input_ids, inp.positions, rows, executor)
    if m == 1:  # the same operators, one after the other
        assert torch.equal(split, whole) and torch.equal(cache, written)
    # fewer rows per matrix product may round differently: close, and every K/V where the forward put it
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache, written, rtol=1e-5, atol=1e-5)
    assert torch.equal(cache != 0, written != 0)


def _ctx(engine, cache, meta):
    from engine.model.llama import ForwardContext
    return ForwardContext(cache, meta, engine.runner.backend)


class Recording:
    """An executor that records the order of its calls (and attends nothing)."""

    def __init__(self, q_size: int):
        self.calls, self.q_size = [], q_size
        self.rows: dict[int, int] = {}

    def start(self, layer, micro_batch, q, k, v):
        self.calls.append(("start", layer, micro_batch))
        self.rows[micro_batch] = q.shape[0]

    def finish(self, layer, micro_batch):
        self.calls.append(("finish", layer, micro_batch))
        return torch.zeros(self.rows[micro_batch], self.q_size)


def test_ping_pong_order(tiny_model):
    """Every micro-batch's attention of a layer is started before the first one is waited for,
    and the next layer's start of micro-batch j comes right after its finish."""
    engine, scheduled, inp = mixed_step(tiny_model)
    rec = Recording(engine.model_config.q_size)
    forward_split(engine.runner.model, inp.input_ids, inp.positions, [0, 9, 10, int(inp.input_ids.shape[0])], rec)
    assert rec.calls[:4] == [("start", 0, 0), ("start", 0, 1), ("start", 0, 2), ("finish", 0, 0)]
    assert rec.calls[4:7] == [("start", 1, 0), ("finish", 0, 1), ("start", 1, 1)]
    assert rec.calls[-3:] == [("finish", 1, 0), ("finish", 1, 1), ("finish", 1, 2)]
    assert scheduled  # (the step had sequences)
