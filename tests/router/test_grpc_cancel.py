"""gRPC deadlines, client cancellation, the router's own timeout and API keys: KV freed, service on.

Requests to be cancelled or timed out run on a held engine (``RunningRouter.engine_held``): they
stay running, however fast or slow the machine, until the test has done with them."""

from __future__ import annotations

import grpc
import pytest

from router.proto import tierserve_pb2 as pb
from router.proto import tierserve_pb2_grpc as pb_grpc

LONG = pb.SamplingParams(max_tokens=2000, temperature=0, ignore_eos=True)
SHORT = pb.GenerateRequest(text="Hello", sampling=pb.SamplingParams(max_tokens=3))


@pytest.fixture(scope="module")
def stub(router):
    with grpc.insecure_channel(router.grpc_target) as channel:
        yield pb_grpc.GenerationStub(channel)


def test_client_cancel_mid_stream_frees_kv(stub, router):
    aborted = router.aborted()
    with router.engine_held():
        call = stub.GenerateStream(pb.GenerateRequest(text="Once upon a time", sampling=LONG), timeout=120)
        first = next(call)
        assert first.token_ids and router.backend.stats().num_blocks_used > 0
        call.cancel()
        router.assert_aborted_and_freed(aborted)
    assert len(stub.Generate(SHORT, timeout=60).token_ids) >= 1


@pytest.mark.parametrize("method", ["Generate", "GenerateStream"])
def test_deadline_exceeded_aborts_and_frees_kv(stub, router, method):
    aborted = router.aborted()
    with router.engine_held(), pytest.raises(grpc.RpcError) as info:
        reply = getattr(stub, method)(pb.GenerateRequest(text="Once upon a time", sampling=LONG), timeout=0.5)
        list(reply) if method == "GenerateStream" else reply
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    router.assert_aborted_and_freed(aborted)
    assert len(stub.Generate(SHORT, timeout=60).token_ids) >= 1


def test_router_request_timeout_is_deadline_exceeded(timeout_router):
    aborted = timeout_router.aborted()
    with grpc.insecure_channel(timeout_router.grpc_target) as channel, timeout_router.engine_held():
        stub = pb_grpc.GenerationStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(pb.GenerateRequest(text="Hello", sampling=LONG), timeout=60)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "request timeout of 0.5 s" in info.value.details()
        timeout_router.assert_aborted_and_freed(aborted)


@pytest.mark.parametrize("metadata, message", [
    ([], "missing API key"),
    ([("authorization", "Bearer wrong")], "invalid API key"),
    ([("authorization", "Basic key-a")], "missing API key"),
])
def test_api_keys_required(strict_router, metadata, message):
    with grpc.insecure_channel(strict_router.grpc_target) as channel:
        stub = pb_grpc.GenerationStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(SHORT, timeout=60, metadata=metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and message in info.value.details()
        ok = stub.Generate(SHORT, timeout=60, metadata=[("authorization", "Bearer key-a")])
        assert len(ok.token_ids) >= 1
