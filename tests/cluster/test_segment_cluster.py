"""Segment reuse on the disaggregated path, through HTTP, a real local cluster (Ray, redis-server,
2 prefill + 2 decode): agents after the first are routed to the prefill replica that holds the
shared messages (learned from its segment events), reuse them there, and the decode replica
receives plain KV; recompute_ratio 1.0 stays exact; /metrics counts the reuse."""

from __future__ import annotations

import httpx
import pytest

from engine.sampling_params import SamplingParams
from tests.cluster.test_host_tier_prefix import wait_for
from tests.cluster.test_serving import router  # noqa: F401  (the fixture: the real router over the cluster)
from tests.engine.conftest import make_engine
from tests.segments.conftest import tokens
from tests.segments.test_http_segments import REVIEW, TOOL

pytestmark = [pytest.mark.ray, pytest.mark.redis]


@pytest.fixture(scope="module")
def base_url(router) -> str:  # noqa: F811  (the imported fixture)
    return f"http://127.0.0.1:{router.http_port}"


def post(base_url: str, path: str, body: dict) -> dict:
    model = httpx.get(base_url + "/v1/models", timeout=30).json()["data"][0]["id"]
    r = httpx.post(base_url + path, timeout=120, json={"model": model, "temperature": 0, "max_tokens": 4, **body})
    assert r.status_code == 200, r.text
    return r.json()


def agent(base_url: str, name: str, reuse: dict | None = None) -> dict:
    messages = [{"role": "system", "content": f"You are agent {name}, the reviewer. Answer with one word."},
                {"role": "tool", "content": TOOL, "cache_segment": True},
                {"role": "user", "content": REVIEW, "cache_segment": True},
                {"role": "user", "content": "What is lantern?"}]
    return post(base_url, "/v1/chat/completions", {"messages": messages, **({"segment_reuse": reuse} if reuse else {})})


def test_agents_reuse_the_shared_messages_on_the_replica_that_holds_them(cluster, base_url):
    dispatcher, view = cluster.dispatcher, cluster.dispatcher.view
    first = agent(base_url, "ALPHA")
    assert first["usage"]["prompt_tokens_details"]["reused_segment_tokens"] == 0
    holder = dispatcher.timings.get(next(reversed(dispatcher.timings.entries))).workers["prefill"]
    assert wait_for(lambda: len(view.segments.held) >= 2)  # the holder's segment events arrived
    assert all(set(h) == {holder} for h in view.segments.held.values())
    view.segments.predicted.clear()  # route on what the events say, not on the router's guess
    busier = next(r for r in cluster.pools.prefill if r.worker_id == holder)
    busier.pending_tokens += 100  # a little busier (balanced still): without its segments it would lose the tie
    try:
        for name in ("BETA", "GAMMA", "DELTA"):
            usage = agent(base_url, name, {"recompute_ratio": 0.1})["usage"]
            rid = next(reversed(dispatcher.timings.entries))
            assert dispatcher.timings.get(rid).workers["prefill"] == holder
            assert usage["prompt_tokens_details"]["reused_segment_tokens"] > 0.5 * usage["prompt_tokens"], usage
    finally:
        busier.pending_tokens -= 100
    assert wait_for(lambda: dispatcher.stats().segments.requests == 4)  # loads are polled
    stats = dispatcher.stats()
    assert stats.segments.hits == 6 and stats.segment_index_entries >= 2
    metrics = httpx.get(base_url + "/metrics", timeout=30).text
    hits = next(line for line in metrics.splitlines() if line.startswith("tierserve_segment_hits_total"))
    assert float(hits.split()[-1]) == 6
    assert "tierserve_segment_reuse_rate" in metrics


def test_recompute_ratio_one_through_the_cluster_equals_the_engine(cluster, base_url, tiny_model):
    seg, params = tokens(80, 11), SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    outputs = []
    for head in (tokens(21, 12), tokens(35, 13)):
        prompt = head + seg + [7, 8, 9]
        body = {"prompt": prompt, "max_tokens": 8, "ignore_eos": True, "return_token_ids": True,
                "segments": [[len(head), len(head) + 80]], "segment_reuse": {"recompute_ratio": 1.0}}
        choice = post(base_url, "/v1/completions", body)["choices"][0]
        outputs.append((prompt, choice["token_ids"]))
    engine = make_engine(tiny_model)
    for prompt, ids in outputs:
        assert ids == engine.generate([prompt], params)[0].token_ids
