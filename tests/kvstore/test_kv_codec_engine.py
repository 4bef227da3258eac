"""A prefix written to the host tier by one engine and pulled by another, through each codec:
exact gives the tokens and logprobs of the writer's own cached prefix, 4-bit close logprobs.

The tiny model's weights are random, so its next-token distributions are flat (top logprobs
within ~0.7 nats) and sensitive: 1% noise on the prefix KV moves them by ~0.02, a zeroed
prefix by ~0.5; 4-bit codes (~6% error per element on its Gaussian-like KV) move them by ~0.1.
"""

from __future__ import annotations

import pytest

from engine.block_hash import hash_blocks
from engine.llm_engine import GenerationResult, LLMEngine
from engine.sampling_params import SamplingParams
from kvstore.block_key import block_keys
from kvstore.layout import KVLayout
from tests.engine.conftest import make_engine
from tests.kvstore.conftest import make_store

pytestmark = pytest.mark.redis
PARAMS = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=20)
PREFIX = [0] + [(13 * i) % 450 + 30 for i in range(63)]  # 4 full blocks of 16
PROMPT = PREFIX + [7, 8, 9]


def max_logprob_gap(a: GenerationResult, b: GenerationResult) -> float:
    """The largest logprob difference of a token in both top-20s, over the 8 steps."""
    gaps = [abs(x[t] - y[t]) for x, y in zip(top_logprobs(a), top_logprobs(b)) for t in x.keys() & y.keys()]
    assert gaps, "no token in both top-20s"
    return max(gaps)


def top_logprobs(result: GenerationResult) -> list[dict[int, float]]:
    return [dict(lp.top) for lp in result.logprobs]


def pull_then_generate(redis_url: str, model, codec: str) -> GenerationResult:
    """Engine A computes PROMPT and puts its 4 prefix blocks in the host tier; engine B pulls
    them into fresh blocks, publishes them to its prefix cache and generates PROMPT."""
    store = make_store(redis_url, host_tier_bytes=1 << 24, host_tier_codec=codec,
                       host_tier_codec_residual_tokens=0)
    try:
        writer = make_engine(model, prefix_caching=True)
        writer.generate([PROMPT], PARAMS)
        hashes = hash_blocks(PREFIX, 16)
        kv = writer.runner.kv_cache
        keys = block_keys(hashes, "tiny", KVLayout.of_cache(kv))
        assert store.host.put(keys, kv, [writer.kv.pool.lookup(h) for h in hashes]) == 4
        reader = make_engine(model, prefix_caching=True)
        ids = reader.kv.reserve_import(4)
        store.host.get(keys, reader.runner.kv_cache, ids)
        reader.kv.commit_import(ids, hashes)
        return reader.generate([PROMPT], PARAMS)[0]
    finally:
        store.wipe()
        store.close()


@pytest.fixture(scope="module")
def computed(tiny_model) -> GenerationResult:
    """PROMPT on an engine holding the prefix it computed itself (the same attention path as a
    pulled prefix: cached blocks plus the 3-token tail)."""
    engine: LLMEngine = make_engine(tiny_model, prefix_caching=True)
    engine.generate([PROMPT], PARAMS)
    result = engine.generate([PROMPT], PARAMS)[0]
    assert result.num_cached_tokens == 64
    return result


def test_exact_codec_gives_the_computed_tokens_and_logprobs(redis_url, tiny_model, computed) -> None:
    pulled = pull_then_generate(redis_url, tiny_model, "exact")
    assert pulled.num_cached_tokens == 64, "the prefix came from the host tier"
    assert pulled.token_ids == computed.token_ids
    assert top_logprobs(pulled) == top_logprobs(computed)


def test_4bit_codec_gives_close_logprobs_and_2bit_further(redis_url, tiny_model, computed) -> None:
    four = pull_then_generate(redis_url, tiny_model, "kivi4")
    two = pull_then_generate(redis_url, tiny_model, "kivi2")
    assert four.num_cached_tokens == two.num_cached_tokens == 64
    gap4, gap2 = max_logprob_gap(four, computed), max_logprob_gap(two, computed)
    assert 0 < gap4 < 0.2, "4-bit: close, and not the exact path"
    assert gap2 > 2 * gap4
    assert all(len(x.keys() & y.keys()) >= 18 for x, y in zip(top_logprobs(four), top_logprobs(computed)))
