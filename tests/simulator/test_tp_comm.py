"""Tensor-parallel all-reduce from nccl-tests: sub-linear tp scaling, calibrated per tier."""

from __future__ import annotations

import argparse

import pytest

from simulator.costs import CostModels
from simulator.inputs import build_costs
from simulator.nccl_tests import allreduce_from_nccl_tests
from simulator.operators import decode_work
from simulator.roofline import RooflineCost
from tests.simulator.conftest import DATA

ALLREDUCE = DATA / "all_reduce_perf_h100x8.txt"


def speedup_4_to_8(costs: CostModels, hw: str, batch: int = 64) -> float:
    step = {tp: RooflineCost(costs.model, costs.catalog[hw], tp).seconds(decode_work(batch, batch * 2048))
            for tp in (4, 8)}
    return step[4] / step[8]


def test_4_to_8_devices_is_far_from_twice_as_fast(costs_70b: CostModels) -> None:
    # weights per device halve, but 160 all-reduces a step cost 28 us each at tp 8 (nccl-tests, 8xH100)
    assert 1.2 < speedup_4_to_8(costs_70b, "H100") < 1.6
    assert speedup_4_to_8(costs_70b, "H200") < 1.5


def test_all_reduce_perf_calibrates_the_tier(tmp_path) -> None:
    ar = allreduce_from_nccl_tests(ALLREDUCE)
    assert ar.ranks == 8 and ar.latency_s == pytest.approx(28.0e-6) and ar.busbw_bytes_s == pytest.approx(359.04e9)
    args = argparse.Namespace(model="llama-3-70b", catalog=[], profile=[], nccl_tests=[f"H100:H100={ALLREDUCE}"])
    hw = build_costs(args).catalog["H100"]
    assert hw.allreduce_latency_s(8) == pytest.approx(28.0e-6) and hw.allreduce_latency_s(2) == pytest.approx(7e-6)
    assert hw.interconnect_gbs == pytest.approx(359.04)
    slow = tmp_path / "all_reduce_perf.txt"  # a slower fabric: 4 ranks, 60 us
    slow.write_text(ALLREDUCE.read_text().replace("   28.00 ", "   60.00 ").replace("#  Rank  4", "#  Xank  4")
                    .replace("#  Rank  5", "#  X").replace("#  Rank  6", "#  X").replace("#  Rank  7", "#  X"))
    args.nccl_tests = [f"H100:H100={slow}"]
    assert build_costs(args).catalog["H100"].allreduce_latency_s(4) == pytest.approx(60e-6)


def test_a_point_to_point_run_stays_a_link() -> None:
    assert allreduce_from_nccl_tests(DATA / "sendrecv_perf_h100_l40s.txt") is None
