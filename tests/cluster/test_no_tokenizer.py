"""1 prefill + 1 decode on a checkpoint without tokenizer.json, behind the router: token-id
prompts give the ids the checkpoint gives with its tokenizer; text, chat and stop strings are
a clear client error, and the cluster keeps serving."""

from __future__ import annotations

import asyncio
import shutil
import threading

import grpc
import openai
import pytest

from cluster.bringup.local_cluster import Cluster
from engine.sampling_params import SamplingParams
from router.config import RouterConfig
from router.proto import tierserve_pb2 as pb
from router.proto import tierserve_pb2_grpc as pb_grpc
from router.server import Router
from tests.cluster.conftest import cluster_config
from tests.engine.conftest import make_engine

pytestmark = [pytest.mark.ray, pytest.mark.redis]

PROMPT = [0, 42, 385, 81, 7]
NO_TOKENIZER = "this model was loaded without a tokenizer"
ONE_BY_ONE = {"prefill": {"replicas": 1, "hardware": {"num_cpus": 0.25}},
              "decode": {"replicas": 1, "hardware": {"num_cpus": 0.25}}}


@pytest.fixture(scope="module")
def router(tiny_model, tmp_path_factory):
    bare = tmp_path_factory.mktemp("bare") / "model"
    shutil.copytree(tiny_model, bare, ignore=shutil.ignore_patterns("tokenizer*"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    with Cluster(cluster_config(bare, **ONE_BY_ONE)) as dispatcher:
        r = Router(dispatcher, RouterConfig(grpc_port=0, http_port=0))
        asyncio.run_coroutine_threadsafe(r.start(), loop).result(60)
        yield r
        asyncio.run_coroutine_threadsafe(r.stop(), loop).result(60)
    # the cluster stopped its dispatcher's pings and readers on the router's (still running) loop before
    # Ray went: one left running would call into Ray after ray.shutdown and, a minute later, end this process
    assert dispatcher.view.tasks == () and not dispatcher.outputs.readers
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
def want(tiny_model):
    """The checkpoint with its tokenizer, on one engine."""
    return make_engine(tiny_model).generate([PROMPT], SamplingParams(max_tokens=9, temperature=0, logprobs=1))[0]


def test_token_ids_through_grpc_and_http(router, want):
    with grpc.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = pb_grpc.GenerationStub(channel)
        request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=PROMPT),
                                     sampling=pb.SamplingParams(max_tokens=9, temperature=0))
        chunks = list(stub.GenerateStream(request, timeout=60))
        assert [t for c in chunks for t in c.token_ids] == want.token_ids and want.text
        assert all(c.text == "" for c in chunks)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="none", max_retries=0)
    got = client.completions.create(model=router.model_name, prompt=PROMPT, max_tokens=9, temperature=0,
                                    logprobs=1)
    assert got.choices[0].text == ""
    assert got.choices[0].logprobs.tokens == [f"token_id:{t}" for t in want.token_ids]


def test_text_chat_and_stop_strings_are_client_errors(router, want):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{router.http_port}/v1", api_key="none", max_retries=0)
    model = router.model_name
    refused = [lambda: client.completions.create(model=model, prompt="Hello", max_tokens=4),
               lambda: client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}]),
               lambda: client.completions.create(model=model, prompt=PROMPT, max_tokens=4, stop=["fox"])]
    for call, what in zip(refused, ["send the prompt as token ids", "chat requests need one",
                                    "stop strings cannot be matched"]):
        with pytest.raises(openai.BadRequestError) as info:
            call()
        assert info.value.body["message"].startswith(f"{NO_TOKENIZER}: {what}")
    with grpc.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GenerationStub(channel).Generate(pb.GenerateRequest(text="Hello"), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(NO_TOKENIZER)
    got = client.completions.create(model=model, prompt=PROMPT, max_tokens=9, temperature=0, logprobs=1)
    assert got.choices[0].logprobs.tokens == [f"token_id:{t}" for t in want.token_ids]
