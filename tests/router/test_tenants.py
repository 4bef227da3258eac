"""API keys as tenants: one tenant's cached prefix is never another's, measured by
``cached_tokens`` and the engine's prefix-cache hit counter; a same-tenant repeat is the control."""

from __future__ import annotations

import grpc
import httpx
import pytest

from router.auth import ANONYMOUS, ApiKeyCheck, Tenant, tenant_salt
from router.config import RouterConfig, RouterConfigError, parse_api_keys
from router.proto import tierserve_pb2 as pb
from router.proto import tierserve_pb2_grpc as pb_grpc
from tests.router.conftest import serve

SECRET = "The launch code is 7-4-1-9; the vault opens on Tuesdays. " * 6  # ~200 tokens, 12+ full blocks
KEYS = ("alice=key-alice-0001", "bob=key-bob-0002", "alice=key-alice-0003", "key-plain-0004")


@pytest.fixture(scope="module")
def tenants(tiny_model):
    yield from serve(tiny_model, {"prefix_caching": True}, api_keys=KEYS, request_timeout_s=None)


def hits(router) -> int:
    return router.backend.stats().prefix_cache_hit_tokens


def cached(router, key: str, prompt: str, **extra) -> int:
    body = {"model": router.router.model_name, "prompt": prompt, "max_tokens": 1, **extra}
    reply = httpx.post(f"{router.base_url}/v1/completions", json=body, timeout=60,
                       headers={"authorization": f"Bearer {key}"})
    assert reply.status_code == 200, reply.text
    return reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_another_tenant_never_hits_a_cached_prefix(tenants):
    prompt = "Alice's secret: " + SECRET
    assert cached(tenants, "key-alice-0001", prompt) == 0
    before = hits(tenants)
    assert cached(tenants, "key-alice-0001", prompt) >= 192  # the control: the same tenant hits
    assert hits(tenants) - before >= 192
    before = hits(tenants)
    assert cached(tenants, "key-bob-0002", prompt) == 0  # same prompt, another tenant: nothing shared
    assert cached(tenants, "key-plain-0004", prompt) == 0
    assert hits(tenants) == before
    assert cached(tenants, "key-alice-0003", prompt) >= 192  # alice's second key: the same tenant


def test_a_client_salt_only_narrows_sharing(tenants):
    prompt = "Bob's salted secret: " + SECRET
    assert cached(tenants, "key-bob-0002", prompt) == 0
    assert cached(tenants, "key-bob-0002", prompt, cache_salt="s1") == 0  # a salt of its own: a new cache
    assert cached(tenants, "key-bob-0002", prompt, cache_salt="s1") >= 192
    before = hits(tenants)
    assert cached(tenants, "key-alice-0001", prompt, cache_salt="s1") == 0  # the same client salt elsewhere
    assert hits(tenants) == before


def test_grpc_tenants_are_isolated_too(tenants):
    prompt = "gRPC secret: " + SECRET
    with grpc.insecure_channel(tenants.grpc_target) as channel:
        stub = pb_grpc.GenerationStub(channel)

        def grpc_cached(key: str) -> int:
            reply = stub.Generate(pb.GenerateRequest(text=prompt, sampling=pb.SamplingParams(max_tokens=1)),
                                  timeout=60, metadata=[("authorization", f"Bearer {key}")])
            return reply.usage.cached_tokens
        assert grpc_cached("key-bob-0002") == 0
        assert grpc_cached("key-bob-0002") >= 192
        assert grpc_cached("key-alice-0001") == 0
    assert cached(tenants, "key-bob-0002", prompt) >= 192  # HTTP and gRPC: one tenant, one cache


def test_salts_are_keyed_hashes_of_the_tenant_not_the_key():
    check = ApiKeyCheck(KEYS, b"s" * 32)
    alice, bob = check.check("Bearer key-alice-0001"), check.check("Bearer key-bob-0002")
    assert alice == check.check("Bearer key-alice-0003") == Tenant("alice", tenant_salt(b"s" * 32, "alice"))
    assert bob.name == "bob" and check.check("Bearer key-plain-0004").name == "key-4"
    assert len({alice.salt, bob.salt}) == 2 and all(len(t.salt) == 64 for t in (alice, bob))
    assert "key-alice" not in alice.salt and alice.salt != tenant_salt(b"other-secret", "alice")
    assert ApiKeyCheck(KEYS).check("Bearer key-alice-0001").salt != alice.salt  # a random secret by default
    assert alice.cache_salt("mine") == alice.salt + "mine" and alice.cache_salt(None) == alice.salt
    assert ApiKeyCheck(()).check(None) is ANONYMOUS and ANONYMOUS.cache_salt(None) is None


@pytest.mark.parametrize("entries, pairs", [
    (("k1", "k2"), (("key-1", "k1"), ("key-2", "k2"))),
    (("team-a=s3cr3t", "dGVzdA=="), (("team-a", "s3cr3t"), ("key-2", "dGVzdA=="))),  # base64 padding: a plain key
    (("a.b_c=x=y",), (("a.b_c", "x=y"),)),
])
def test_api_keys_plain_or_named(entries, pairs):
    assert parse_api_keys(entries) == pairs


@pytest.mark.parametrize("kwargs, message", [
    ({"api_keys": ("same", "same")}, "listed twice"),
    ({"api_keys": ("key-1=abc",)}, "reserved"),
    ({"api_keys": ("a=b c",)}, "whitespace"),
    ({"cache_salt_secret": "short"}, "cache_salt_secret"),
])
def test_bad_tenant_config_names_the_field(kwargs, message):
    with pytest.raises(RouterConfigError, match=message):
        RouterConfig(**kwargs)
