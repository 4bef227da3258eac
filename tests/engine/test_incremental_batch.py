"""Incremental block tables and reused shared-prefix plans build exactly the inputs a fresh rebuild does."""

from __future__ import annotations

import random

import numpy as np
import torch

from engine.attention import AttentionMetadata
from engine.attention.shared_prefix import PlanCache, SharedPrefixPlan, plan_shared_prefixes
from engine.batch import ModelInput, build_model_input
from engine.config import SchedulerConfig
from engine.kv_cache_manager import KVCacheManager
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledRequest, Scheduler

CPU = torch.device("cpu")


def rebuild(scheduled: list[ScheduledRequest], block_size: int, min_tokens: int | None) -> ModelInput:
    """build_model_input done the straightforward way: every table row and the plan from scratch."""
    ids, positions, slots, starts, seq_lens, sample_rows = [], [], [], [0], [], []
    for s in scheduled:
        req, lo, n = s.request, s.request.num_computed_tokens, s.num_new_tokens
        ids += req.all_token_ids[lo:lo + n]
        positions += range(lo, lo + n)
        slots += [req.block_ids[p // block_size] * block_size + p % block_size for p in range(lo, lo + n)]
        starts.append(starts[-1] + n)
        seq_lens.append(lo + n)
        if s.samples:
            sample_rows.append(starts[-1] - 1)
    tables = np.zeros((len(scheduled), max(len(s.request.block_ids) for s in scheduled)), dtype=np.int32)
    for row, s in zip(tables, scheduled):
        row[:len(s.request.block_ids)] = s.request.block_ids
    decode_only = all(s.num_new_tokens == 1 for s in scheduled)
    plan = None
    if min_tokens is not None and decode_only and len(scheduled) > 1:
        plan = plan_shared_prefixes([s.request.block_ids for s in scheduled], seq_lens, block_size)
        if plan is not None and plan.shared_tokens * block_size < min_tokens:
            plan = None
    t = torch.tensor
    meta = AttentionMetadata(t(starts, dtype=torch.int32), t(seq_lens, dtype=torch.int32), torch.from_numpy(tables),
                             t(slots, dtype=torch.int64), max(s.num_new_tokens for s in scheduled), max(seq_lens),
                             decode_only, plan)
    return ModelInput(t(ids, dtype=torch.int64), t(positions, dtype=torch.int64), meta,
                      t(sample_rows, dtype=torch.int64), len(sample_rows))


def assert_same_input(got: ModelInput, want: ModelInput) -> None:
    for a, b in [(got.input_ids, want.input_ids), (got.positions, want.positions),
                 (got.sample_rows, want.sample_rows), (got.meta.query_start_loc, want.meta.query_start_loc),
                 (got.meta.seq_lens, want.meta.seq_lens), (got.meta.block_tables, want.meta.block_tables),
                 (got.meta.slot_mapping, want.meta.slot_mapping)]:
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert got.num_samples == want.num_samples
    g, w = got.meta, want.meta
    assert (g.max_query_len, g.max_seq_len, g.decode_only) == (w.max_query_len, w.max_seq_len, w.decode_only)
    assert (g.shared is None) == (w.shared is None)
    if w.shared is not None:
        assert g.shared.segments == w.shared.segments
        assert g.shared.suffix_start == w.shared.suffix_start
        assert g.shared.tensors == {}


def simulate(seed: int, min_tokens: int | None) -> dict[str, int]:
    """Drive the real scheduler and KV manager (prefix caching, a pool small enough to preempt)
    through a run where requests with nested shared prompts arrive, decode, finish and get
    preempted; compare every step's input against ``rebuild``. Returns what happened."""
    rng = random.Random(seed)
    bs = 4
    kv = KVCacheManager(num_blocks=48, block_size=bs, enable_prefix_caching=True)
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=24), kv)
    system = [rng.randrange(1000) for _ in range(13)]
    fewshot = [[rng.randrange(1000) for _ in range(rng.choice([3, 8]))] for _ in range(2)]
    arrivals: dict[int, list[Request]] = {}
    for i in range(14):
        prompt = system + rng.choice(fewshot) + [rng.randrange(1000) for _ in range(rng.randrange(1, 6))]
        req = Request(f"r{i}", prompt, SamplingParams(max_tokens=rng.randrange(4, 40)))
        arrivals.setdefault(rng.choice([0, 1, 15, 30]) + rng.randrange(3), []).append(req)  # bursts
    cache = PlanCache()
    seen = {"steps": 0, "planned": 0, "reused": 0, "preempted": 0, "replaced": 0}
    last_lists: list[list[int]] | None = None
    lists_of: dict[str, list[int]] = {}
    step = 0
    while step < 40 or scheduler.has_unfinished():
        for req in arrivals.get(step, []):
            scheduler.add(req)
        step += 1
        out = scheduler.schedule()
        seen["preempted"] += len(out.preempted)
        if out.is_empty:
            continue
        for s in out.scheduled:
            r = s.request
            seen["replaced"] += r.request_id in lists_of and lists_of[r.request_id] is not r.block_ids
            lists_of[r.request_id] = r.block_ids
        want = rebuild(out.scheduled, bs, min_tokens)
        got = build_model_input(out.scheduled, bs, CPU, min_tokens, plan_cache=cache)
        assert_same_input(got, want)
        assert_same_input(build_model_input(out.scheduled, bs, CPU, min_tokens), want)
        seen["steps"] += 1
        if got.meta.shared is not None:
            seen["planned"] += 1
            lists = [s.request.block_ids for s in out.scheduled]
            seen["reused"] += last_lists is not None and len(lists) == len(last_lists) and all(
                a is b for a, b in zip(lists, last_lists))
            last_lists = lists
            got.meta.shared.tensors["x"] = torch.zeros(1)  # what a backend does; must not leak into the next step
        sampling = [s.request for s in out.scheduled if s.samples]  # what LLMEngine.step does
        for s in out.scheduled:
            s.request.num_computed_tokens += s.num_new_tokens
            kv.commit_computed(s.request)
        for r in sampling:
            r.output_token_ids.append(rng.randrange(1000))
            if len(r.output_token_ids) >= r.params.max_tokens:
                scheduler.finish(r)
        assert step < 2000
    return seen


def test_incremental_inputs_match_a_rebuild_every_step():
    totals: dict[str, int] = {}
    for seed in range(6):
        for min_tokens in (None, 0, 16, 48):
            for k, v in simulate(seed, min_tokens).items():
                totals[k] = totals.get(k, 0) + v
    # the runs exercised what the caches must survive
    assert totals["preempted"] > 0 and totals["replaced"] > 0
    assert totals["planned"] > totals["reused"] > 0


def test_block_id_array_follows_extends_and_replacements():
    r = Request("r", [1, 2, 3], SamplingParams())
    assert r.block_id_array().tolist() == []
    r.block_ids.extend([4, 5])
    assert r.block_id_array().tolist() == [4, 5]
    r.block_ids.extend(range(6, 40))  # past the array's capacity
    assert r.block_id_array().tolist() == list(range(4, 40))
    r.block_ids = [9] * 36  # a new list of the same length (match_prefix)
    assert r.block_id_array().tolist() == [9] * 36
    r.block_ids = []  # free
    assert r.block_id_array().tolist() == []
    r.block_ids.extend([7, 8])
    assert r.block_id_array().dtype == np.int32 and r.block_id_array().tolist() == [7, 8]


def test_plan_cache_replans_when_rows_change():
    cache, bs = PlanCache(), 4
    a, b, c = [0, 1, 2, 10], [0, 1, 2, 11], [0, 5, 12]
    first = cache.plan([a, b, c], [14, 14, 10], bs, 0)
    assert isinstance(first, SharedPrefixPlan) and first.suffix_start == [12, 12, 4]
    first.tensors["seq_lens"] = torch.zeros(3)
    a.append(13)  # a grows: same plan, new object with empty tensors
    again = cache.plan([a, b, c], [17, 15, 11], bs, 0)
    assert again is not first and again.tensors == {} and again.segments == first.segments
    assert cache.plan([c, a, b], [11, 17, 15], bs, 0).suffix_start == [4, 12, 12]  # reordered
    b = [7, 8, 9, 11]  # b's request was preempted and re-admitted: a new list
    assert cache.plan([c, a, b], [11, 17, 15], bs, 0).suffix_start == [4, 4, 0]
    assert cache.plan([c, a, b], [11, 17, 15], bs, 5) is None  # one shared block: 4 tokens < 5
    assert cache.plan([c, a, b], [11, 17, 15], bs, 4).suffix_start == [4, 4, 0]


def test_plan_cache_shares_one_layout_until_cleared():
    """Consecutive plans of an unchanged batch share one layout (a captured shared-step graph is
    valid while it is the same object); clear() lets it go, and the next plan has a new one."""
    cache, bs = PlanCache(), 4
    a, b = [0, 1, 2, 10], [0, 1, 2, 11]
    first = cache.plan([a, b], [14, 14], bs, 0)
    first.layout["x"] = torch.zeros(1)
    second = cache.plan([a, b], [15, 15], bs, 0)
    assert second.layout is first.layout
    cache.clear()
    third = cache.plan([a, b], [16, 16], bs, 0)
    assert third.layout is not first.layout and third.layout == {} and third.suffix_start == first.suffix_start


def test_an_idle_engine_lets_the_shared_plan_go(tiny_model):
    """Once nothing runs, the engine forgets the last batch's shared-prefix plan and layout."""
    from engine.sampling_params import SamplingParams
    from tests.engine.conftest import make_engine
    engine = make_engine(tiny_model, prefix_caching=True, shared_prefix_min_tokens=0)
    prompt = list(range(3, 40))
    engine.generate([prompt], SamplingParams(max_tokens=1, temperature=0))
    engine.generate([prompt + [50 + i] for i in range(4)], SamplingParams(max_tokens=6, temperature=0,
                                                                       ignore_eos=True))
    assert engine.runner.shared_prefix_steps > 0
    engine.step()  # nothing to run
    assert engine._plan_cache._layout == {} and engine._plan_cache._result is None
