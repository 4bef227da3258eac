"""What users of vLLM's OpenAI server expect, on the single-process server over the tiny model:
/tokenize and /detokenize (vLLM's shapes), /version, /live beside /health, X-Request-Id
passthrough, return_token_ids, and vllm:-named metrics beside ours."""

from __future__ import annotations

import importlib.metadata
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer
from tests.router.conftest import serve

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
PROMPT = "The quick brown fox"
GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def http(router):
    with httpx.Client(base_url=router.base_url, timeout=60) as h:
        yield h


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return Tokenizer(tiny_model)


@pytest.fixture(scope="module")
def bare_router(tiny_model, tmp_path_factory):
    bare = tmp_path_factory.mktemp("bare") / "model"
    shutil.copytree(tiny_model, bare, ignore=shutil.ignore_patterns("tokenizer*"))
    yield from serve(bare, request_timeout_s=None)


def test_tokenize_a_prompt(http, model, router, tokenizer):
    got = http.post("/tokenize", json={"model": model, "prompt": PROMPT}).json()
    ids = tokenizer.encode(PROMPT)
    assert got == {"count": len(ids), "max_model_len": router.backend.max_model_len, "tokens": ids, "token_strs": None}
    assert ids[0] == tokenizer.bos_token_id
    bare = http.post("/tokenize", json={"prompt": PROMPT, "add_special_tokens": False, "return_token_strs": True})
    assert bare.json()["tokens"] == ids[1:]
    assert bare.json()["token_strs"] == [tokenizer.token_string(t) for t in ids[1:]]
    assert "".join(bare.json()["token_strs"]) == PROMPT


def test_tokenize_messages_counts_what_chat_completions_uses(http, client, model, tokenizer):
    got = http.post("/tokenize", json={"model": model, "messages": MESSAGES}).json()
    chat = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=1)
    assert got["count"] == len(got["tokens"]) == chat.usage.prompt_tokens
    # options set: vLLM's semantics, the rendered template encoded with add_special_tokens as given
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=False)
    plain = http.post("/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False,
                                         "add_special_tokens": False}).json()
    assert plain["tokens"] == tokenizer.encode(text, add_special_tokens=False) != got["tokens"]


def test_detokenize_inverts_tokenize(http, model, tokenizer):
    ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    got = http.post("/detokenize", json={"model": model, "tokens": ids}).json()
    assert got == {"prompt": tokenizer.decode(ids, skip_special_tokens=False)} and got["prompt"].endswith(PROMPT)
    assert http.post("/detokenize", json={"tokens": []}).json() == {"prompt": ""}


@pytest.mark.parametrize("path, body, status, message", [
    ("/tokenize", {"model": "nope", "prompt": "x"}, 404, "model 'nope' does not exist"),
    ("/tokenize", {"prompt": "x", "messages": MESSAGES}, 400, "give exactly one of prompt or messages"),
    ("/tokenize", {}, 400, "give exactly one of prompt or messages"),
    ("/tokenize", {"messages": MESSAGES, "continue_final_message": True}, 400, "continue_final_message is not"),
    ("/tokenize", {"prompt": 5}, 400, "prompt: Input should be a valid string"),
    ("/detokenize", {"tokens": [5, 512]}, 400, "token id 512 is outside the tokenizer's vocabulary [0, 512)"),
    ("/detokenize", {"tokens": [-1]}, 400, "token id -1 is outside"),
    ("/detokenize", {"tokens": "5"}, 400, "tokens: Input should be a valid list"),
])
def test_tokenizer_endpoint_errors(http, path, body, status, message):
    got = http.post(path, json=body, headers={"x-request-id": "tok-1"})
    assert got.status_code == status and got.json()["error"]["message"].startswith(message)
    assert got.json()["error"]["request_id"] == "tok-1"


def test_without_a_tokenizer_both_endpoints_are_a_clear_400(bare_router):
    with httpx.Client(base_url=bare_router.base_url, timeout=60) as h:
        for path, body in (("/tokenize", {"prompt": "Hello"}), ("/tokenize", {"messages": MESSAGES}),
                           ("/detokenize", {"tokens": [5, 6]})):
            got = h.post(path, json=body)
            assert got.status_code == 400, path
            assert got.json()["error"]["message"] == ("this model was loaded without a tokenizer: /tokenize and "
                                                      "/detokenize need one")


def test_token_ids_without_a_tokenizer(bare_router, reference):
    """return_token_ids is how an HTTP client of a tokenizer-less checkpoint reads its output."""
    want = reference([[0, 42, 385, 81, 7]], GREEDY)[0]
    with openai.OpenAI(base_url=f"{bare_router.base_url}/v1", api_key="x", max_retries=0, timeout=60) as c:
        got = c.completions.create(model=bare_router.router.model_name, prompt=[0, 42, 385, 81, 7], max_tokens=6,
                                   temperature=0, extra_body={"ignore_eos": True, "return_token_ids": True})
    assert got.choices[0].text == "" and got.choices[0].model_extra["token_ids"] == want.token_ids


def test_version_live_and_health(http):
    assert http.get("/version").json() == {"version": importlib.metadata.version("tierserve")}
    live = http.get("/live")
    assert live.status_code == 200 and live.json() == {"status": "live"}
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["pools"]["engine"]["status"] == "ready"


def test_tokenizer_endpoints_need_the_api_key_version_and_live_do_not(strict_router):
    with httpx.Client(base_url=strict_router.base_url, timeout=60) as h:
        for path in ("/tokenize", "/detokenize"):
            assert h.post(path, json={"tokens": [5]}).status_code == 401
        assert h.post("/tokenize", json={"prompt": "Hi"}, headers={"Authorization": "Bearer key-a"}).status_code == 200
        assert h.get("/version").status_code == h.get("/live").status_code == 200


def test_request_id_passthrough(client, model):
    """vLLM's: the client's X-Request-Id names the response (cmpl-<id>, chatcmpl-<id>, every chunk) and
    comes back in the header; the backend still runs it under an id of the router's."""
    raw = client.completions.with_raw_response.create(model=model, prompt="Hi", max_tokens=2,
                                                      extra_headers={"X-Request-Id": "trace-7"})
    assert raw.headers["x-request-id"] == "trace-7" and raw.parse().id == "cmpl-trace-7"
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3, stream=True,
                                                 extra_headers={"X-Request-Id": "trace-8"}))
    assert {c.id for c in chunks} == {"chatcmpl-trace-8"}
    own = client.completions.with_raw_response.create(model=model, prompt="Hi", max_tokens=2,
                                                      extra_body={"request_id": "body-9"})
    assert own.headers["x-request-id"] == "body-9" and own.parse().id == "cmpl-body-9"
    anonymous = client.completions.with_raw_response.create(model=model, prompt="Hi", max_tokens=2)
    assert anonymous.parse().id == anonymous.headers["x-request-id"] and anonymous.parse().id.startswith("cmpl-")
    with pytest.raises(openai.BadRequestError, match="request_id must be 1-128 printable ASCII"):
        client.completions.create(model=model, prompt="Hi", max_tokens=2, extra_body={"request_id": "a b"})


def test_a_reused_client_id_runs_apart(router, model):
    """Two requests under one X-Request-Id at once both run to their end (the backend never sees the id)."""
    body = {"model": model, "prompt": "Hello", "max_tokens": 8, "temperature": 0, "ignore_eos": True}

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=router.base_url, timeout=60) as h:
            return h.post("/v1/completions", json=body, headers={"x-request-id": "dup"})
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(one, range(2)))
    assert all(r.headers["x-request-id"] == "dup" and r.json()["id"] == "cmpl-dup" for r in replies)
    assert [r.json()["usage"]["completion_tokens"] for r in replies] == [8, 8]
    assert router.wait_until_idle().num_blocks_used == 0


def test_return_token_ids(client, http, model, reference, tokenizer):
    want = reference([PROMPT], GREEDY)[0]
    prompt_ids = tokenizer.encode(PROMPT)
    extra = {"ignore_eos": True, "return_token_ids": True}
    got = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0, extra_body=extra)
    assert got.choices[0].model_extra == {"token_ids": want.token_ids, "prompt_token_ids": prompt_ids}
    plain = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0)
    assert "token_ids" not in plain.choices[0].model_extra  # only when asked: OpenAI's shape otherwise
    chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0, stream=True,
                                            extra_body=extra))
    assert [t for c in chunks for t in c.choices[0].model_extra["token_ids"]] == want.token_ids
    assert chunks[0].choices[0].model_extra["prompt_token_ids"] == prompt_ids
    assert all("prompt_token_ids" not in c.choices[0].model_extra for c in chunks[1:])
    chat_ids = http.post("/tokenize", json={"model": model, "messages": MESSAGES}).json()["tokens"]
    chat = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, temperature=0,
                                          extra_body=extra)
    assert chat.model_extra["prompt_token_ids"] == chat_ids
    assert chat.choices[0].model_extra["token_ids"] == reference([chat_ids], GREEDY)[0].token_ids[:4]
    streamed = list(client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, temperature=0,
                                                   stream=True, extra_body=extra))
    assert streamed[0].model_extra["prompt_token_ids"] == chat_ids
    assert [t for c in streamed[1:] for t in c.choices[0].model_extra["token_ids"]] == \
        chat.choices[0].model_extra["token_ids"]


def scrape(http: httpx.Client) -> dict[tuple[str, tuple], float]:
    families = list(text_string_to_metric_families(http.get("/metrics").text))
    kinds = {f.name: f.type for f in families}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
    return samples | {(name, ("type",)): kind for name, kind in kinds.items()}


def test_vllm_metric_names_beside_ours(http, client, model):
    client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    got = scrape(http)
    labels = (("engine", "0"), ("model_name", model))
    for name, kind in [("vllm:num_requests_running", "gauge"), ("vllm:num_requests_waiting", "gauge"),
                       ("vllm:kv_cache_usage_perc", "gauge"), ("vllm:gpu_cache_usage_perc", "gauge"),
                       ("vllm:time_to_first_token_seconds", "histogram"),
                       ("vllm:inter_token_latency_seconds", "histogram"),
                       ("vllm:time_per_output_token_seconds", "histogram"),
                       ("vllm:e2e_request_latency_seconds", "histogram"), ("vllm:prompt_tokens", "counter"),
                       ("vllm:generation_tokens", "counter"), ("vllm:request_success", "counter"),
                       ("vllm:prefix_cache_queries", "counter"), ("vllm:prefix_cache_hits", "counter"),
                       ("vllm:num_preemptions", "counter")]:
        assert got[(name, ("type",))] == kind, name
    same = [("vllm:prompt_tokens_total", "tierserve_prompt_tokens_total"),
            ("vllm:generation_tokens_total", "tierserve_generation_tokens_total"),
            ("vllm:time_to_first_token_seconds_count", "tierserve_time_to_first_token_seconds_count"),
            ("vllm:inter_token_latency_seconds_count", "tierserve_inter_token_latency_seconds_count"),
            ("vllm:time_per_output_token_seconds_count", "tierserve_inter_token_latency_seconds_count"),
            ("vllm:e2e_request_latency_seconds_count", "tierserve_request_latency_seconds_count"),
            ("vllm:prefix_cache_queries_total", "tierserve_prefix_cache_query_tokens_total"),
            ("vllm:num_preemptions_total", "tierserve_preemptions_total")]
    for vllm, ours in same:
        assert got[(vllm, labels)] == got[(ours, ())], vllm
    assert got[("vllm:generation_tokens_total", labels)] >= 5
    assert got[("vllm:request_success_total", tuple(sorted((*labels, ("finished_reason", "length")))))] == \
        got[("tierserve_requests_total", (("finish_reason", "length"),))] >= 1
    assert got[("vllm:num_requests_running", labels)] == got[("tierserve_running_requests", ())]
    used, total = got[("tierserve_kv_blocks_in_use", ())], got[("tierserve_kv_blocks_total", ())]
    assert got[("vllm:kv_cache_usage_perc", labels)] == got[("vllm:gpu_cache_usage_perc", labels)] == used / total
