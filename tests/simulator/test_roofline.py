"""Operator table and roofline times: fast paths equal the operator-by-operator sums."""

from __future__ import annotations

import random

import pytest

from simulator.costs import CostModels, kv_capacity_tokens, min_tp
from simulator.errors import SimInputError
from simulator.operators import Work, decode_work, prefill_work
from simulator.roofline import RooflineCost


def op_sum(cost: RooflineCost, work: Work) -> float:
    return sum(cost.op_seconds(op) for op in cost.ops(work))


@pytest.mark.parametrize("hardware, tp", [("H100", 1), ("L40S", 1), ("A100-80G", 4), ("CPU-DDR5", 1)])
def test_seconds_equals_the_sum_of_operator_times(costs: CostModels, hardware: str, tp: int) -> None:
    cost = RooflineCost(costs.model, costs.catalog[hardware], tp)
    rng = random.Random(1)
    for _ in range(50):
        work = Work(rng.randint(1, 9000), rng.randint(0, 64), rng.randint(0, 10**8), rng.randint(0, 10**6))
        assert cost.seconds(work) == pytest.approx(op_sum(cost, work), rel=1e-12)


def test_decode_piece_is_exact_and_affine_in_context(costs: CostModels) -> None:
    cost = costs.replica("H100", 1)
    for batch in (1, 7, 64, 256):
        ((start, a, b),) = cost.decode_pieces(batch)
        assert start == 0.0
        for context in (batch, batch * 1000, batch * 8000):
            assert a + b * context == pytest.approx(op_sum(cost, decode_work(batch, context)), rel=1e-12)


def test_prefill_is_compute_bound_and_decode_memory_bound(costs: CostModels) -> None:
    cost = costs.replica("H100", 1)
    hw, model = cost.hw, costs.model
    dense_flops = 2 * model.num_layers * model.params_per_layer * 4096  # the layers; lm_head runs once
    assert cost.seconds(prefill_work(4096, 0, 1)) >= dense_flops / hw.flops
    embedding = model.vocab_size * model.hidden_size * model.dtype_bytes  # a lookup, not a full read
    weights_read = (model.weight_bytes - embedding) / hw.memory_bandwidth
    single = cost.seconds(decode_work(1, 100))
    assert weights_read < single < weights_read * 1.15
    # batching is nearly free for decode while memory-bound
    assert cost.seconds(decode_work(32, 3200)) < 1.2 * single


def test_tensor_parallel_adds_allreduce_and_splits_weights(costs: CostModels) -> None:
    one, four = RooflineCost(costs.model, costs.catalog["H100"], 1), RooflineCost(costs.model, costs.catalog["H100"], 4)
    assert "tp_allreduce" not in [op.name for op in one.ops(decode_work(1, 10))]
    assert "tp_allreduce" in [op.name for op in four.ops(decode_work(1, 10))]
    assert four.seconds(decode_work(1, 10)) < one.seconds(decode_work(1, 10)) / 2
    with pytest.raises(SimInputError, match="tp=16 on H100"):
        RooflineCost(costs.model, costs.catalog["H100"], 16)


def test_memory_budget_and_minimum_tp(costs_70b: CostModels) -> None:
    h100 = costs_70b.catalog["H100"]
    assert kv_capacity_tokens(costs_70b.model, h100, 1, 8192) < 0  # 141 GB of weights do not fit in 80 GB
    # 2 x 0.9 x 79.65 GiB = 153.9e9 bytes: the weights and ~35K tokens of KV (320 KiB each)
    assert min_tp(costs_70b.model, h100, 8192, 10_000) == 2
    assert min_tp(costs_70b.model, h100, 8192, 100_000) == 4
    assert min_tp(costs_70b.model, costs_70b.catalog["L4"], 8192, 50_000) == 8
    assert min_tp(costs_70b.model, costs_70b.catalog["L4"], 8192, 200_000) is None  # 8 x 24 GB is too small
