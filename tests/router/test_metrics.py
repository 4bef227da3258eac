"""/metrics: Prometheus text with the router's metrics, counting what was served."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.router.conftest import serve

NAMES = {"tierserve_queue_depth", "tierserve_running_requests", "tierserve_kv_blocks_in_use",
         "tierserve_kv_blocks_total", "tierserve_time_to_first_token_seconds",
         "tierserve_inter_token_latency_seconds", "tierserve_request_latency_seconds",
         "tierserve_generation_tokens", "tierserve_prompt_tokens", "tierserve_requests",
         "tierserve_request_errors", "tierserve_prefix_cache_query_tokens", "tierserve_prefix_cache_hit_tokens",
         "tierserve_kv_handoff_bytes", "tierserve_preemptions"}


@pytest.fixture(scope="module")
def cached_router(tiny_model):
    yield from serve(tiny_model, engine_options={"prefix_caching": True})


def scrape(http: httpx.Client) -> dict[tuple[str, tuple], float]:
    """Every sample by (name, labels), plus each family's name keyed with labels None."""
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(response.text))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    return samples | {(f.name, None): 0.0 for f in families}


def test_metrics_named_and_counting(cached_router):
    model = cached_router.router.model_name
    with httpx.Client(base_url=cached_router.base_url, timeout=60) as http:
        before = scrape(http)
        assert NAMES <= {name for name, labels in before if labels is None}
        body = {"model": model, "prompt": "The quick brown fox jumps over the lazy dog. " * 3,
                "max_tokens": 7, "temperature": 0, "ignore_eos": True}
        first = http.post("/v1/completions", json=body).json()
        http.post("/v1/completions", json=body)
        http.post("/v1/completions", json={**body, "max_tokens": 0})
        after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)
    assert delta("tierserve_generation_tokens_total") == 14
    assert delta("tierserve_prompt_tokens_total") == 2 * first["usage"]["prompt_tokens"]
    assert delta("tierserve_time_to_first_token_seconds_count") == 2
    assert delta("tierserve_inter_token_latency_seconds_count") == 12
    assert delta("tierserve_requests_total", finish_reason="length") == 2
    assert delta("tierserve_request_errors_total", kind="invalid_request") == 1
    # the second request finds the first's full blocks, all but the one holding its last prompt token
    # (recomputed for its logits; blocks of 16)
    prompt = first["usage"]["prompt_tokens"]
    hit = (prompt - 1) // 16 * 16
    assert hit > 0 and delta("tierserve_prefix_cache_hit_tokens_total") == hit
    assert delta("tierserve_prefix_cache_query_tokens_total") == 2 * prompt
    assert after[("tierserve_kv_blocks_total", ())] == cached_router.backend.stats().num_blocks_total
    kinds = {dict(labels)["kind"] for name, labels in after if name == "tierserve_engine_steps_total" and labels}
    steps = sum(delta("tierserve_engine_steps_total", kind=k) for k in kinds)
    assert steps == 2 * 7  # each request: its prefill step (which samples its first token), then 6 decode steps
    assert sum(delta("tierserve_engine_step_tokens_total", kind=k) for k in kinds) == 2 * prompt - hit + 2 * 6
    assert sum(delta("tierserve_engine_step_seconds_total", kind=k, phase="forward") for k in kinds) > 0


def test_load_gauges_while_a_request_runs(router):
    body = {"model": router.router.model_name, "prompt": "Once upon a time", "max_tokens": 2000,
            "temperature": 0, "ignore_eos": True, "stream": True}
    with router.engine_held(), httpx.Client(base_url=router.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()  # held: dropping it would close the connection
            next(line for line in lines if line.startswith("data: {"))
            during = scrape(http)  # the engine is held: the request is still running
    assert during[("tierserve_running_requests", ())] == 1
    assert during[("tierserve_kv_blocks_in_use", ())] > 0
    assert during[("tierserve_queue_depth", ())] == 0
    assert router.wait_until_idle().num_blocks_used == 0
