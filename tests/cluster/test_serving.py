"""The router in front of a real cluster: the openai client and gRPC against 2 prefill + 2 decode."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import grpc
import openai
import pytest

from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer
from router.config import RouterConfig
from router.proto import tierserve_pb2, tierserve_pb2_grpc
from router.server import Router
from tests.engine.conftest import make_engine

pytestmark = [pytest.mark.ray, pytest.mark.redis]


@pytest.fixture(scope="module")
def router(cluster):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    r = Router(cluster.dispatcher, RouterConfig(grpc_port=0, http_port=0))
    asyncio.run_coroutine_threadsafe(r.start(), loop).result(60)
    yield r
    asyncio.run_coroutine_threadsafe(r.stop(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def expected_text(model, prompt: str, max_tokens: int) -> str:
    engine = make_engine(model)
    return engine.generate([prompt], SamplingParams(max_tokens=max_tokens, temperature=0))[0].text


def test_openai_completions_and_chat_through_the_cluster(router, tiny_model):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="none")
    model = client.models.list().data[0].id
    done = client.completions.create(model=model, prompt="Hello, world!", max_tokens=10, temperature=0)
    assert done.choices[0].text == expected_text(tiny_model, "Hello, world!", 10)
    messages = [{"role": "user", "content": "How are you today?"}]
    chat_prompt = Tokenizer(tiny_model).apply_chat_template(messages)
    chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                            stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(tiny_model, chat_prompt, 8)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=model, prompt="x", max_tokens=0)
    again = client.completions.create(model=model, prompt="Hello, world!", max_tokens=10, temperature=0)
    assert again.choices[0].text == done.choices[0].text


def test_grpc_stream_through_the_cluster(router, tiny_model):
    ids = Tokenizer(tiny_model).encode("Once upon a time")
    expected = make_engine(tiny_model).generate([ids], SamplingParams(max_tokens=9, temperature=0))[0]
    with grpc.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = tierserve_pb2_grpc.GenerationStub(channel)
        request = tierserve_pb2.GenerateRequest(
            token_ids=tierserve_pb2.TokenIds(ids=ids),
            sampling=tierserve_pb2.SamplingParams(max_tokens=9, temperature=0))
        tokens = [t for chunk in stub.GenerateStream(request, timeout=60) for t in chunk.token_ids]
        assert tokens == expected.token_ids
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(tierserve_pb2.GenerateRequest(text=""), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_serve_with_unreachable_redis_is_a_clear_error(tiny_model, tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text(f"model: {tiny_model}\npools:\n  prefill: {{replicas: 1}}\n  decode: {{replicas: 1}}\n"
                      "kvstore: {redis_url: 'redis://127.0.0.1:1/0'}\n")
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "serve", "--config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in out.stderr


def test_serve_with_a_bad_config_names_the_field(tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text("model: m\npools:\n  prefill: {replicas: 0}\n  decode: {}\n")
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "serve", "--config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "pools.prefill.replicas must be >= 1" in out.stderr
