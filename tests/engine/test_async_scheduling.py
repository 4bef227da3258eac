"""Overlapped scheduling (EngineConfig.async_scheduling): the same outputs as stepping in lockstep.

Most engine test modules also run with it on (``BOTH_SCHEDULINGS``); these tests check what
is particular to it: deltas one call later, stops decided on the host after the next step
was queued, requests joining while a step is in flight, and blocks freed only after the
queued step that writes them.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from engine.sampling_params import SamplingParams
from engine.step_profile import PHASES
from tests.engine.conftest import make_engine

PROMPTS = [[0, 42, 385, 81, 14, 349, 400, 3] * 3, [0, 7, 8, 9], list(range(3, 40)), [5] * 20,
           [0, 42, 385, 81, 14, 349, 400, 3] * 3 + [11, 12]]


def run(engine, batches: list[list[tuple[list[int], SamplingParams]]], steps_between: int = 2) -> dict:
    """Queue each batch after ``steps_between`` steps of the previous; results by request id."""
    results: dict[str, dict] = {}
    for i, batch in enumerate(batches):
        for prompt, params in batch:
            rid = engine.add_request(None, prompt, params)
            results[rid] = {"tokens": [], "text": "", "logprobs": [], "finish": None}
        for _ in range(steps_between if i < len(batches) - 1 else 0):
            collect(engine.step(), results)
    while engine.has_unfinished():
        collect(engine.step(), results)
    return results


def collect(deltas, results: dict) -> None:
    for d in deltas:
        r = results[d.request_id]
        assert r["finish"] is None, f"a delta for {d.request_id} after it finished"
        r["tokens"] += d.new_token_ids
        r["text"] += d.new_text
        r["logprobs"] += [(lp.token_id, round(lp.logprob, 4)) for lp in d.new_logprobs]
        if d.finished:
            r["finish"] = d.finish_reason


def first_new_token(model, prompt: list[int], at: int) -> tuple[int, int]:
    """A token of the greedy output of ``prompt`` that first appears at index >= ``at``, and that index."""
    out = make_engine(model).generate([prompt], SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))[0]
    return next((t, i) for i, t in enumerate(out.token_ids) if i >= at and t not in out.token_ids[:i])


def workload(stop_token: int, late_stop: int) -> list[list[tuple[list[int], SamplingParams]]]:
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    return [
        [(PROMPTS[0], greedy), (PROMPTS[1], dataclasses.replace(greedy, max_tokens=1)),
         (PROMPTS[2], dataclasses.replace(greedy, stop_token_ids=(stop_token,))),
         (PROMPTS[3], SamplingParams(max_tokens=9, temperature=0.9, top_k=20, seed=5, ignore_eos=True))],
        [(PROMPTS[4], dataclasses.replace(greedy, logprobs=2)),
         (PROMPTS[0], dataclasses.replace(greedy, max_tokens=24, stop_token_ids=(late_stop,), min_tokens=6)),
         (PROMPTS[2], dataclasses.replace(greedy, max_tokens=3))],
        [(PROMPTS[1], dataclasses.replace(greedy, max_tokens=20)), (PROMPTS[3], greedy)],
    ]


def test_overlapped_outputs_equal_lockstep_and_every_block_is_freed(tiny_model):
    stop_token, at = first_new_token(tiny_model, PROMPTS[2], 3)  # a stop the host sees a step late
    late_stop, late_at = first_new_token(tiny_model, PROMPTS[0], 6)
    outputs = {}
    for overlap in (False, True):
        engine = make_engine(tiny_model, prefix_caching=True, async_scheduling=overlap)
        outputs[overlap] = run(engine, workload(stop_token, late_stop))
        assert engine.kv.num_used_blocks == 0, "blocks still referenced after every request finished"
    assert list(outputs[True].values()) == list(outputs[False].values())
    by_stop = [r for r in outputs[True].values() if r["finish"].value == "stop"]
    assert [(r["tokens"][-1], len(r["tokens"])) for r in by_stop] == [(stop_token, at + 1), (late_stop, late_at + 1)]


def test_deltas_come_one_call_later_and_length_stops_cost_no_spare_row(tiny_model):
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    calls, tokens = {}, {}
    for overlap in (False, True):
        engine = make_engine(tiny_model, async_scheduling=overlap)
        engine.add_request("a", PROMPTS[0], params)
        first = engine.step()
        assert (first == []) == overlap
        calls[overlap] = 1
        while engine.has_unfinished():
            engine.step()
            calls[overlap] += 1
        totals = engine.stats().step_totals.values()
        tokens[overlap] = sum(t["tokens"] for t in totals)
        assert sum(t["steps"] for t in totals) == calls[False]  # the read-back-only call is no step
        assert all(set(PHASES) <= set(t) for t in totals)
    assert calls[True] == calls[False] + 1  # the last step is read back by one more call
    assert tokens[True] == tokens[False], "a request known to end by length is not run a spare step"


def test_a_token_stop_costs_at_most_one_spare_row(tiny_model):
    stop, at = first_new_token(tiny_model, PROMPTS[0], 3)
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, stop_token_ids=(stop,))
    tokens = {}
    for overlap in (False, True):
        engine = make_engine(tiny_model, async_scheduling=overlap)
        result = engine.generate([PROMPTS[0]], params)[0]
        assert result.finish_reason.value == "stop" and len(result.token_ids) == at + 1
        while engine.has_unfinished():  # the spare row's step: its blocks go once it is read back
            assert engine.step() == []
        tokens[overlap] = sum(t["tokens"] for t in engine.stats().step_totals.values())
        assert engine.kv.num_free_blocks == engine.runner.num_blocks
    assert tokens[True] - tokens[False] == 1


FUZZ_CONFIGS = [  # tight block budgets (preemption), chunked prefill, prefix caching on and off
    dict(num_blocks=18, block_size=4, max_num_batched_tokens=32, prefix_caching=True),
    dict(num_blocks=30, block_size=4, max_num_batched_tokens=16, max_num_seqs=4),
    dict(num_blocks=64, block_size=16, prefix_caching=True),
    dict(num_blocks=20, block_size=8, max_num_batched_tokens=24, max_num_seqs=3, prefix_caching=True),
]


def random_params(rng: random.Random) -> SamplingParams:
    greedy = rng.random() < 0.6
    kw = dict(max_tokens=rng.randint(1, 30), temperature=0 if greedy else rng.choice([0.7, 1.0, 1.3]),
              seed=rng.randint(0, 99), ignore_eos=rng.random() < 0.5)
    if rng.random() < 0.4:
        kw["stop_token_ids"] = tuple(rng.sample(range(512), 40))  # stops the host sees a step late
    if rng.random() < 0.3:
        kw["min_tokens"] = rng.randint(0, kw["max_tokens"])
    if rng.random() < 0.3:
        kw["logprobs"] = rng.randint(0, 3)
    if rng.random() < 0.2:
        kw["stop"] = (rng.choice(["e", "th", " a", "o"]),)
    if not greedy and rng.random() < 0.3:
        kw["top_k"] = rng.randint(1, 20)
    return SamplingParams(**kw)


def random_workload(seed: int) -> list[list[tuple[list[int], SamplingParams]]]:
    rng = random.Random(seed)
    base = [rng.randint(1, 500) for _ in range(40)]  # half the prompts share a head of it
    return [[(base[:rng.randint(1, 40)] + [rng.randint(1, 500) for _ in range(rng.randint(0, 20))]
              if rng.random() < 0.5 else [rng.randint(1, 500) for _ in range(rng.randint(1, 60))],
              random_params(rng)) for _ in range(rng.randint(1, 6))] for _ in range(rng.randint(1, 4))]


def without_logprobs(results: dict) -> list:
    return [{k: v for k, v in r.items() if k != "logprobs"} for r in results.values()]


@pytest.mark.parametrize("seed", range(6))
def test_random_workloads_equal_lockstep(tiny_model, seed):
    """Random arrivals, stops, lengths, seeds, logprobs and stop strings under tight block
    budgets: tokens, text and finish reasons as in lockstep, every block back. (Logprobs may
    differ in the last digits: a spare row changes a step's batch shape, hence its GEMMs.)"""
    for cfg in FUZZ_CONFIGS:
        outputs = {}
        for overlap in (False, True):
            engine = make_engine(tiny_model, async_scheduling=overlap, **cfg)
            outputs[overlap] = run(engine, random_workload(seed * 131 + len(cfg)), steps_between=seed % 4)
            assert engine.kv.num_used_blocks == 0
            assert all(r["finish"] is not None for r in outputs[overlap].values())
        assert without_logprobs(outputs[True]) == without_logprobs(outputs[False]), cfg
        for a, b in zip(outputs[True].values(), outputs[False].values()):
            assert [t for t, _ in a["logprobs"]] == [t for t, _ in b["logprobs"]]
            assert all(abs(x - y) < 1e-3 for (_, x), (_, y) in zip(a["logprobs"], b["logprobs"]))
