"""A multi-agent conversation through the HTTP API: agents after the first reuse the tool
result and the other agent's message, and say so in their usage."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.router.conftest import RunningRouter, serve

TOOL = ("- lantern: misty otter\n- anchor: brave fox\n- violin: calm heron\n- pebble: rosy lynx\n"
        "- walnut: swift crow\n- harbor: pale moth\n")
REVIEW = "I checked the build and the cache; two failures remain in the parser and the router tests.\n"


@pytest.fixture(scope="module")
def router(tiny_model) -> Iterator[RunningRouter]:
    yield from serve(tiny_model, request_timeout_s=None)


def chat(router: RunningRouter, agent: str, body: dict) -> dict:
    messages = [{"role": "system", "content": f"You are agent {agent}, the reviewer. Answer with one word."},
                {"role": "tool", "content": TOOL, "cache_segment": True},
                {"role": "user", "content": REVIEW, "cache_segment": True},
                {"role": "user", "content": "What is lantern?"}]
    r = httpx.post(f"{router.base_url}/v1/chat/completions", timeout=120,
                   json={"model": router.backend.model_name, "messages": messages, "max_tokens": 4,
                         "temperature": 0, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_agents_after_the_first_reuse_marked_messages(router):
    first = chat(router, "ALPHA", {})
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "reused_segment_tokens": 0}
    usages = [chat(router, name, {"segment_reuse": {"recompute_ratio": 0.1}})["usage"]
              for name in ("BETA", "GAMMA")]
    for usage in usages:
        details = usage["prompt_tokens_details"]
        assert details["reused_segment_tokens"] > 0.5 * usage["prompt_tokens"]
        assert details["cached_tokens"] >= details["reused_segment_tokens"]
    stats = router.backend.engine.stats().segments
    assert stats.hits == 4 and stats.reused_tokens == sum(
        u["prompt_tokens_details"]["reused_segment_tokens"] for u in usages)


def test_auto_reuses_messages_seen_before_and_plain_requests_keep_openai_usage(router):
    body = {"segment_reuse": {"auto": True}}
    chat(router, "DELTA", body)
    again = chat(router, "EPSILON", body)
    assert again["usage"]["prompt_tokens_details"]["reused_segment_tokens"] > 0
    plain = httpx.post(f"{router.base_url}/v1/completions", timeout=120, json={
        "model": router.backend.model_name, "prompt": "Hello", "max_tokens": 2}).json()
    assert plain["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


def test_completion_segments_are_token_ranges_and_bad_ones_are_refused(router):
    prompt = list(range(3, 120))
    url, model = f"{router.base_url}/v1/completions", router.backend.model_name
    for head in ([5, 6, 7], [9, 9]):
        r = httpx.post(url, timeout=120, json={"model": model, "prompt": head + prompt, "max_tokens": 2,
                                               "segments": [[len(head), len(head) + 100]]})
        assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens_details"]["reused_segment_tokens"] == 100


@pytest.mark.parametrize("segments, message", [
    ([[50, 20]], "segment [50, 20) is not a token range"),
    ([[0, 60], [40, 100]], "must not overlap"),
    ([[100, 200]], "not a token range of the 117-token prompt"),
    ([[i, i + 1] for i in range(257)], "256"),
    ([[1, 2, 3]], "segments"),
])
def test_bad_segments_are_a_400_with_a_plain_message(router, segments, message):
    r = httpx.post(f"{router.base_url}/v1/completions", timeout=120, json={
        "model": router.backend.model_name, "prompt": list(range(3, 120)), "max_tokens": 2, "segments": segments})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"], r.json()
