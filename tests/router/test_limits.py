"""One client cannot freeze or flood the router: request work runs off the event loop, bodies
are bounded (413 before they are read), keys are checked before bodies are parsed, tenants
are rate-limited (429), and slow or idle connections are cut off."""

from __future__ import annotations

import argparse
import select
import socket
import threading
import time

import grpc
import httpx
import pytest

from router.cli import add_commands, router_config
from router.config import RouterConfig, RouterConfigError
from router.proto import tierserve_pb2 as pb
from router.proto import tierserve_pb2_grpc as pb_grpc
from tests.router.conftest import serve

MiB = 1024 * 1024
KEY = {"authorization": "Bearer key-a"}


@pytest.fixture(scope="module")
def edge(tiny_model):
    yield from serve(tiny_model, api_keys=("alice=key-a",), max_request_bytes=4 * MiB, read_timeout_s=1.0,
                     idle_timeout_s=1.0, request_timeout_s=None)


@pytest.fixture(scope="module")
def limited(tiny_model):
    yield from serve(tiny_model, api_keys=("alice=key-a", "bob=key-b"), rate_limit_rps=1.0, rate_limit_burst=2)


def raw_request(port: int, head: str, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send a request's ``head`` alone on a fresh connection; the response, and how long it took."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        start = time.monotonic()
        s.sendall(head.encode())
        return read_response(s), time.monotonic() - start


def read_response(s: socket.socket) -> bytes:
    """One response: its head and a body of its content-length (the connection may stay open)."""
    reply = b""
    while b"\r\n\r\n" not in reply and (chunk := s.recv(65536)):
        reply += chunk
    head = reply.split(b"\r\n\r\n")[0].lower()
    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0]) if b"content-length: " in head else 0
    while len(reply) < len(head) + 4 + length and (chunk := s.recv(65536)):
        reply += chunk
    return reply


def test_streams_and_health_keep_flowing_while_a_large_prompt_is_tokenized(edge):
    """Before: a 2 MiB prompt froze every stream and /health for ~6 s (tokenized on the loop)."""
    model, gaps, latencies, done, streaming = edge.router.model_name, [], [], threading.Event(), threading.Event()

    def stream() -> None:
        body = {"model": model, "prompt": "Hello", "max_tokens": 2000, "stream": True, "ignore_eos": True}
        with httpx.Client(timeout=60) as http, http.stream("POST", f"{edge.base_url}/v1/completions", json=body,
                                                           headers=KEY) as response:
            last = time.monotonic()
            for _ in response.iter_lines():
                now = time.monotonic()
                gaps.append((now, now - last))
                last = now
                streaming.set()
                if done.is_set():
                    return

    def poll() -> None:
        with httpx.Client(timeout=60) as http:
            while not done.is_set():
                start = time.monotonic()
                assert http.get(f"{edge.base_url}/health").status_code == 200
                latencies.append((start, time.monotonic() - start))
                time.sleep(0.02)
    threads = [threading.Thread(target=stream), threading.Thread(target=poll)]
    for t in threads:
        t.start()
    try:
        assert streaming.wait(30)
        prompt = ("The quick brown fox jumps over the lazy dog. " * 50_000)[:2 * MiB]
        t0 = time.monotonic()
        reply = httpx.post(f"{edge.base_url}/v1/completions", headers=KEY, timeout=120,
                           json={"model": model, "prompt": prompt, "max_tokens": 2})
        t1 = time.monotonic()
    finally:
        done.set()
        for t in threads:
            t.join(60)
    assert reply.status_code == 400 and "max_model_len" in reply.json()["error"]["message"]  # tokenized, refused
    assert t1 - t0 > 1.0, "the prompt was not slow to tokenize: the test measured nothing"
    during = [gap for at, gap in gaps if t0 <= at <= t1 + 0.2]
    answered = [latency for at, latency in latencies if t0 <= at <= t1]
    assert len(during) > 10 and max(during) < 0.5, f"a stream stalled {max(during):.2f} s"
    assert len(answered) > 3 and max(answered) < 0.2, f"/health took {max(answered):.2f} s"


def test_a_declared_body_over_the_limit_is_413_before_it_is_read(edge):
    head = (f"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer key-a\r\n"
            f"content-type: application/json\r\ncontent-length: {64 * MiB}\r\n\r\n")
    reply, took = raw_request(edge.router.http_port, head)  # no body sent at all
    assert reply.startswith(b"HTTP/1.1 413 ") and took < 5
    assert b"larger than the limit of 4194304 bytes" in reply and b"x-request-id: " in reply


def test_a_chunked_body_over_the_limit_is_413_once_the_limit_is_passed(edge):
    with socket.create_connection(("127.0.0.1", edge.router.http_port), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer key-a\r\n"
                  b"transfer-encoding: chunked\r\n\r\n")
        chunk, sent = b"x" * (256 * 1024), 0
        while not select.select([s], [], [], 0)[0] and sent < 64 * MiB:
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        reply = read_response(s)  # the rest of the body is discarded as it comes: no reset
        s.sendall(b"0\r\n\r\nGET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer key-a\r\n\r\n")
        after = read_response(s)
    assert reply.startswith(b"HTTP/1.1 413 ") and 4 * MiB <= sent < 16 * MiB
    assert after.startswith(b"HTTP/1.1 200 ")  # and the connection serves on


def test_a_grpc_message_over_the_limit_is_resource_exhausted(edge):
    with grpc.insecure_channel(edge.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GenerationStub(channel).Generate(pb.GenerateRequest(text="x" * (5 * MiB)), timeout=30,
                                                     metadata=[("authorization", "Bearer key-a")])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("length", [MiB, 64 * MiB])
def test_a_bad_key_is_401_before_the_body_is_read(edge, length):
    head = (f"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer wrong\r\n"
            f"content-length: {length}\r\n\r\n")
    reply, took = raw_request(edge.router.http_port, head)  # the body never comes: the key decides alone
    assert reply.startswith(b"HTTP/1.1 401 ") and b"invalid API key" in reply and took < 5


def test_a_bad_key_with_a_malformed_body_is_401_not_400(edge):
    reply = httpx.post(f"{edge.base_url}/v1/completions", content=b"{not json" * 1000, timeout=30,
                       headers={"authorization": "Bearer wrong", "content-type": "application/json"})
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "unauthenticated"


def test_slow_headers_get_408_and_the_connection_closed(edge):
    with socket.create_connection(("127.0.0.1", edge.router.http_port), timeout=30) as s:
        start = time.monotonic()
        s.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
        reply = b""
        for byte in b"authorization: Bearer key-a\r\n" * 10:  # one byte every 0.1 s: 30 s for the headers
            if select.select([s], [], [], 0.1)[0]:
                reply = s.recv(65536)
                break
            s.sendall(bytes([byte]))
        took = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408 ") and 0.9 < took < 3.0


def test_a_slow_body_is_cut_off(edge):
    with socket.create_connection(("127.0.0.1", edge.router.http_port), timeout=30) as s:
        start = time.monotonic()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer key-a\r\n"
                  b"content-length: 1000\r\n\r\n{\"model\": ")
        closed = False
        for _ in range(100):  # one byte every 0.1 s: 10 s for the body
            if select.select([s], [], [], 0.1)[0]:
                closed = s.recv(65536) == b""
                break
            s.sendall(b" ")
        took = time.monotonic() - start
    assert closed and 0.9 < took < 3.0


def test_an_idle_connection_is_closed_and_keep_alive_still_works(edge):
    with socket.create_connection(("127.0.0.1", edge.router.http_port), timeout=30) as s:
        start = time.monotonic()
        assert s.recv(1) == b""  # never sent anything
        assert 0.9 < time.monotonic() - start < 3.0
    with httpx.Client(base_url=edge.base_url, timeout=30) as http:
        for _ in range(3):
            assert http.get("/v1/models", headers=KEY).status_code == 200
            time.sleep(0.3)


def test_rate_limits_are_per_tenant_with_retry_after(limited):
    with httpx.Client(base_url=limited.base_url, timeout=30) as http:
        alice, bob = {"authorization": "Bearer key-a"}, {"authorization": "Bearer key-b"}
        assert [http.get("/v1/models", headers=alice).status_code for _ in range(2)] == [200, 200]
        refused = http.get("/v1/models", headers=alice)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error" and "retry after" in refused.json()["error"][
            "message"]
        assert http.get("/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/v1/models", headers=bob).status_code == 200  # bob's own bucket
        with grpc.insecure_channel(limited.grpc_target) as channel:
            stub, metadata = pb_grpc.GenerationStub(channel), [("authorization", "Bearer key-b")]
            request = pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(max_tokens=1))
            assert stub.Generate(request, timeout=30, metadata=metadata).usage.completion_tokens == 1
            with pytest.raises(grpc.RpcError) as info:
                stub.Generate(request, timeout=30, metadata=metadata)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in info.value.details()
        assert ("retry-after", "1") in tuple(info.value.trailing_metadata())
        time.sleep(1.05)
        assert http.get("/v1/models", headers=alice).status_code == 200  # refilled


def test_an_idle_grpc_connection_is_closed_by_the_server(edge):
    states: list[tuple[float, grpc.ChannelConnectivity]] = []
    with grpc.insecure_channel(edge.grpc_target) as channel:
        channel.subscribe(lambda state: states.append((time.monotonic(), state)))
        request = pb.GenerateRequest(text="hi", sampling=pb.SamplingParams(max_tokens=1))
        pb_grpc.GenerationStub(channel).Generate(request, timeout=30, metadata=[("authorization", "Bearer key-a")])
        served = time.monotonic()
        deadline = served + 10
        while states[-1][1] is grpc.ChannelConnectivity.READY and time.monotonic() < deadline:
            time.sleep(0.05)
    assert states[-1][1] is grpc.ChannelConnectivity.IDLE  # the server's max_connection_idle sent it away
    assert 0.5 < states[-1][0] - served < 5  # idle_timeout_s is 1


def test_every_knob_is_a_serve_flag(tmp_path, monkeypatch):
    pem = tmp_path / "x.pem"
    pem.write_text("-")
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    monkeypatch.setenv("TIERSERVE_API_KEYS", "bob=key-b")
    monkeypatch.setenv("TIERSERVE_CACHE_SALT_SECRET", "s" * 16)
    args = parser.parse_args(["serve", "--api-key", "alice=key-a", "--max-request-bytes", "65536",
                              "--rate-limit-rps", "2.5", "--rate-limit-burst", "4", "--idle-timeout", "7",
                              "--read-timeout", "9", "--shutdown-grace", "3", "--tls-cert", str(pem),
                              "--tls-key", str(pem), "--tls-client-ca", str(pem)])
    c = router_config(args)
    assert (c.api_keys, c.cache_salt_secret, c.max_request_bytes) == (("alice=key-a", "bob=key-b"), "s" * 16, 65536)
    assert (c.rate_limit_rps, c.burst, c.idle_timeout_s, c.read_timeout_s, c.shutdown_grace_s) == (2.5, 4, 7, 9, 3)
    assert c.tls and c.tls_client_ca == str(pem) and c.host == "127.0.0.1"


@pytest.mark.parametrize("kwargs, message", [
    ({"max_request_bytes": 10}, "max_request_bytes"), ({"rate_limit_rps": 0}, "rate_limit_rps"),
    ({"rate_limit_burst": 5}, "rate_limit_burst needs rate_limit_rps"),
    ({"rate_limit_rps": 1, "rate_limit_burst": 0}, "rate_limit_burst"),
    ({"idle_timeout_s": 0}, "idle_timeout_s"), ({"read_timeout_s": float("inf")}, "read_timeout_s"),
])
def test_bad_limits_name_the_field(kwargs, message):
    with pytest.raises(RouterConfigError, match=message):
        RouterConfig(**kwargs)
