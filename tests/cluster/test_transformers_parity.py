"""1 prefill + 1 decode Ray actors give transformers' greedy tokens on a checkpoint it saved
(llama3 rope, theta 500000): EOS endings, min_tokens, a long prompt, and EOS as the very first
token after a disaggregated prefill. One cluster: bringing Ray up is most of this module's time.
"""

from __future__ import annotations

import pytest

from cluster.bringup.local_cluster import Cluster
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer
from tests.cluster.conftest import cluster_config, collect, event_loop, gather
from tests.cluster.test_disaggregated import assert_clean
from tests.hf_checkpoints import EOS_STEP, LONG_PROMPT, PROBE

pytestmark = [pytest.mark.ray, pytest.mark.redis]

ONE_BY_ONE = {"prefill": {"replicas": 1, "hardware": {"num_cpus": 0.25}},
              "decode": {"replicas": 1, "hardware": {"num_cpus": 0.25}}}


@pytest.fixture(scope="module")
def checkpoint(hf_checkpoint):
    return hf_checkpoint("llama3-rope")


@pytest.fixture(scope="module")
def cluster(checkpoint):
    c = Cluster(cluster_config(checkpoint.path, **ONE_BY_ONE))
    c.start()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def loop(cluster):
    with event_loop() as loop:
        yield loop


def token_ids(deltas) -> list[int]:
    return [t for d in deltas for t in d.new_token_ids]


def greedy(max_tokens: int, **kwargs) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, **kwargs)


def test_greedy_tokens_match_transformers(loop, cluster, checkpoint):
    held = EOS_STEP + 4
    text = Tokenizer(checkpoint.path).encode("The quick brown fox jumps over the lazy dog.")
    cases = [(PROBE, greedy(24), checkpoint.greedy(PROBE, 24), "stop"),
             (PROBE, greedy(24, min_tokens=held), checkpoint.greedy(PROBE, 24, min_new_tokens=held), None),
             (LONG_PROMPT, greedy(6, ignore_eos=True), checkpoint.greedy(LONG_PROMPT, 6, stop_on_eos=False), "length"),
             (text, greedy(16, ignore_eos=True), checkpoint.greedy(text, 16, stop_on_eos=False), "length")]
    got = loop.run_until_complete(gather(*(collect(cluster.dispatcher, p, q) for p, q, _, _ in cases)))
    for (_, _, expected, reason), deltas in zip(cases, got):
        assert token_ids(deltas) == expected
        assert deltas[-1].finished and reason in (None, deltas[-1].finish_reason.value)
    assert token_ids(got[0])[-1] == checkpoint.eos_token_id
    assert_clean(cluster)


def test_eos_as_the_first_token_after_a_disaggregated_prefill(loop, cluster, checkpoint):
    prompt = checkpoint.eos_first_prompt
    assert checkpoint.greedy(prompt, 8) == [checkpoint.eos_token_id]
    deltas = loop.run_until_complete(collect(cluster.dispatcher, prompt, greedy(8)))
    assert token_ids(deltas) == [checkpoint.eos_token_id]
    assert deltas[-1].finished and deltas[-1].finish_reason.value == "stop"
    assert_clean(cluster)
