"""The start-up warm-up step (run on CUDA to compile the prefill kernels before the first request)."""

from __future__ import annotations

import torch

from engine.sampling_params import SamplingParams
from tests.engine.conftest import make_engine


def test_warm_up_writes_no_kv_and_changes_no_tokens(tiny_model):
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    prompts = [list(range(3, 30)), list(range(40, 45))]
    engine = make_engine(tiny_model, block_size=4, num_blocks=64)
    before = engine.runner.kv_cache.clone()
    engine.runner.warm_up()
    assert torch.equal(engine.runner.kv_cache, before)
    assert [r.token_ids for r in engine.generate(prompts, params)] == \
        [r.token_ids for r in make_engine(tiny_model, block_size=4, num_blocks=64).generate(prompts, params)]
    engine.runner.kv_cache.fill_(float("nan"))  # whatever block 0 holds, the warm-up runs and writes nothing
    engine.runner.warm_up()
    assert engine.runner.kv_cache.isnan().all()
