"""Overlapped scheduling on CUDA: the same tokens as lockstep, and no step waits for the device
except to read back the previous step's tokens."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from engine.sampling_params import SamplingParams
from tests.engine.test_async_scheduling import PROMPTS, first_new_token, run, workload
from tests.gpu.test_engine_cuda import cuda_engine, prompts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("shared", [False, True], ids=["plain", "shared-prefix"])
def test_overlapped_tokens_equal_lockstep_on_cuda(tiny_model, shared):
    stop_token, _ = first_new_token(tiny_model, PROMPTS[2], 3)
    late_stop, _ = first_new_token(tiny_model, PROMPTS[0], 6)
    outputs = {}
    for overlap in (False, True):
        engine = cuda_engine(tiny_model, prefix_caching=True, async_scheduling=overlap,
                             shared_prefix_min_tokens=0 if shared else None)
        outputs[overlap] = run(engine, workload(stop_token, late_stop))
        assert engine.kv.num_used_blocks == 0
        if shared:
            assert engine.runner.shared_prefix_steps > 0
    assert list(outputs[True].values()) == list(outputs[False].values())


def test_overlapped_graphs_and_preemption_equal_lockstep(tiny_model):
    ps = prompts(24, seed=3)
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    lockstep = cuda_engine(tiny_model, num_blocks=40).generate(ps, params)
    engine = cuda_engine(tiny_model, num_blocks=40, async_scheduling=True)
    overlapped = engine.generate(ps, params)
    assert engine.num_preemptions > 0 and engine.runner.graphs is not None
    assert [r.token_ids for r in overlapped] == [r.token_ids for r in lockstep]


def steps_without_stream_syncs(engine, steps: int) -> list:
    """Run ``steps`` steps under torch's sync debug mode; the synchronizing calls seen, with where."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            deltas = [engine.step() for _ in range(steps)]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "called a synchronizing" in str(w.message)]
    assert not syncs, syncs
    return deltas


def test_steps_queue_without_waiting_for_the_device(tiny_model):
    """Under overlap the only host-device synchronization of a step is the read-back of the
    previous step's tokens (an event wait, not a stream sync): in decode steps replayed from
    graphs, and in mixed steps where new prompts prefill beside them (some with logprobs, which
    are computed on the device and come back with the tokens)."""
    engine = cuda_engine(tiny_model, async_scheduling=True, prefix_caching=True)
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    for i, p in enumerate(prompts(8, seed=5)):
        engine.add_request(f"r{i}", p, params)
    for _ in range(6):  # prefill, then decode steps replayed from graphs
        engine.step()
    torch.cuda.synchronize()
    assert all(len(d) == 8 for d in steps_without_stream_syncs(engine, 5))
    assert engine.profile.kinds["graph"].steps >= 5
    for i, p in enumerate(prompts(4, seed=6)):  # mixed steps: prefill beside decode
        engine.add_request(f"new{i}", p, dataclasses.replace(params, temperature=0.7, top_p=0.9, seed=i,
                                                             logprobs=3 if i % 2 else None))
    mixed = _prefill_steps(engine)
    steps_without_stream_syncs(engine, 3)
    assert _prefill_steps(engine) > mixed


def _prefill_steps(engine) -> int:
    """Steps with prefill rows, eager or (few tokens) replayed as graph rows."""
    return sum(k.steps for name, k in engine.profile.kinds.items() if name.startswith("mixed"))


def test_a_step_that_samples_nothing_still_marks_its_end(tiny_model):
    """A step of mid-prompt chunks samples no token, yet reading it back must wait for it: the
    blocks of a request aborted meanwhile are freed then."""
    engine = cuda_engine(tiny_model, async_scheduling=True, max_num_batched_tokens=16)
    engine.add_request("long", list(range(3, 83)), SamplingParams(max_tokens=4, temperature=0))
    engine.step()  # the first 16-token chunk: nothing sampled
    step = engine._in_flight
    assert step is not None and step.tokens is None and step._ready is not None
    engine.abort_request("long")
    while engine.has_unfinished():
        engine.step()
    assert engine.kv.num_free_blocks == engine.runner.num_blocks
