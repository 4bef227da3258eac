"""Batches in the OpenAI Batch format and through the Ray Jobs API.

The file formats and the job log are checked without Ray; a batch on an engine of its own
(`--model`) matches the engine; and, as an operator runs it, `ray start --head` (dashboard on,
token authentication on by default), `tierserve serve --address`, then `tierserve submit
--address http://...:DASHBOARD` as a Ray job, each a separate process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from cluster.batch.files import (
    BatchFileError,
    BatchRequest,
    BatchResult,
    OpenAIBatchRequest,
    parse_request,
    parse_result_line,
    read_requests,
    result_line,
    write_results,
)
from cluster.batch.job_submit import FAILURE, PROGRESS, RESULT, JobLog
from cluster.batch.runner import submit_batch
from cluster.submit_cli import parse_env
from engine.sampling_params import SamplingParams
from kvstore.redis_server import free_port
from router.openai_schema import BatchRequestOutput
from router.prompts import chat_prompt_token_ids
from tests.cluster.test_ray_client import wait_line, wait_port
from tests.engine.conftest import make_engine

GREEDY = SamplingParams(max_tokens=5, temperature=0, logprobs=1)
MESSAGES = [{"role": "user", "content": "Hi there"}]


def openai_line(custom_id: str, url: str = "/v1/completions", **body) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": "m", **body}})


def batch_file(tmp_path) -> tuple:
    """A file of two completions, a chat and a bad token id; the requests as the engine takes them."""
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join([
        openai_line("text", prompt="Hello, world!", max_tokens=5, temperature=0),
        openai_line("ids", prompt=[0, 11, 40, 7], max_tokens=5, temperature=0, logprobs=1, return_token_ids=True),
        openai_line("chat", "/v1/chat/completions", messages=MESSAGES, max_tokens=5, temperature=0),
        openai_line("bad", prompt=[10**8], max_tokens=5)]) + "\n")
    return path


def expected(tiny_model) -> list:
    engine = make_engine(tiny_model)
    chat = chat_prompt_token_ids(engine.tokenizer, MESSAGES)
    return engine.generate(["Hello, world!", [0, 11, 40, 7], chat], GREEDY)


def check_openai_results(results: list[BatchRequestOutput], want: list) -> None:
    assert [r.custom_id for r in results] == ["text", "ids", "chat", "bad"]
    text, ids, chat, bad = results
    assert text.error is None and text.response.status_code == 200
    assert text.response.body.object == "text_completion" and text.response.body.choices[0].text == want[0].text
    assert ids.response.body.choices[0].logprobs.token_logprobs == pytest.approx(
        [lp.logprob for lp in want[1].logprobs], abs=1e-4)
    assert ids.response.body.usage.completion_tokens == len(want[1].token_ids) == 5
    assert ids.response.body.choices[0].token_ids == want[1].token_ids  # return_token_ids (vLLM's)
    assert text.response.body.choices[0].token_ids is None
    assert chat.response.body.object == "chat.completion"
    assert chat.response.body.choices[0].message.content == want[2].text
    assert chat.response.body.usage.prompt_tokens == len(want[2].prompt_token_ids)
    assert bad.response.status_code == 400 and bad.error.code == "invalid_request"
    assert "outside the vocabulary" in bad.error.message and bad.response.body.error.message == bad.error.message
    assert len({r.id for r in results}) == 4 and all(r.id.startswith("batch_req_") for r in results)


def test_the_format_is_detected_per_file(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hi", "max_tokens": 2}\n')
    assert isinstance(read_requests(prompts)[0], BatchRequest)
    requests = read_requests(batch_file(tmp_path), {"temperature": 0.5, "max_tokens": 9})
    assert all(isinstance(r, OpenAIBatchRequest) for r in requests)
    assert requests[0].body.temperature == 0 and requests[3].body.temperature == 0.5  # defaults fill the gaps
    assert requests[2].body.max_tokens == 5 and requests[3].body.max_tokens == 5
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(openai_line("a", prompt="x") + '\n{"prompt": "y"}\n')
    with pytest.raises(BatchFileError, match="line 2: a line of the prompts format in a file of the openai format"):
        read_requests(mixed)
    twice = tmp_path / "twice.jsonl"
    twice.write_text(openai_line("a", prompt="x") + "\n" + openai_line("a", prompt="y") + "\n")
    with pytest.raises(BatchFileError, match="custom_id 'a' appears twice"):
        read_requests(twice)


@pytest.mark.parametrize("line, message", [
    ('{"custom_id": "a", "method": "GET", "url": "/v1/completions", "body": {}}', "line 3: method: Input should be"),
    ('{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}', "line 3: url: Input should be"),
    ('{"custom_id": "a", "method": "POST", "url": "/v1/completions"}', "line 3: body: Field required"),
    ('{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {}, "x": 1}', "line 3: x: Extra inputs"),
    (openai_line("a"), "line 3: body.prompt: Field required"),
    (openai_line("a", prompt="x", stream=True), "line 3: body: stream is not supported in a batch"),
    (openai_line("a", prompt="x", n=2), "line 3: body: n must be 1"),
    (openai_line("a", prompt=["x", "y"]), "line 3: body: batched prompts are not supported"),
    (openai_line("a", prompt="x", max_tokens=0), "line 3: body: max_tokens must be a positive integer"),
    (openai_line("a", "/v1/chat/completions", messages="hi"), "line 3: body.messages: Input should be"),
])
def test_bad_openai_lines_name_the_line_and_field(line, message):
    with pytest.raises(BatchFileError, match=message):
        parse_request(line, 3, {})


def test_results_round_trip_through_their_lines():
    plain = BatchResult("a", [1, 2], "hi", "stop", 3)
    assert parse_result_line(json.dumps(result_line(plain))) == plain
    line = {"id": "batch_req_1", "custom_id": "c", "error": {"code": "invalid_request", "message": "no"},
            "response": {"status_code": 400, "request_id": "cmpl-1", "body": {"error": {
                "message": "no", "type": "invalid_request_error", "code": "invalid_request", "param": None,
                "request_id": "cmpl-1"}}}}
    assert result_line(parse_result_line(json.dumps(line))) == line


def test_job_log_reading():
    log = JobLog(verbose=False)
    log.read("Runtime env is setting up.\n" + PROGRESS + "2 5\n" + RESULT + '{"a"')
    assert (log.done, log.results, list(log.tail)) == (2, [], ["Runtime env is setting up."])
    log.read("Runtime env is setting up.\n" + PROGRESS + "2 5\n" + RESULT + '{"a": 1}\n' + FAILURE + "gone\n")
    assert (log.results, log.failure) == (['{"a": 1}'], "gone")
    assert parse_env(["A=1", "B=x=y"]) == (("A", "1"), ("B", "x=y"))
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        parse_env(["A"])


def test_a_batch_on_its_own_engine_matches_the_engine(tiny_model, tmp_path):
    """`tierserve submit --model` (no cluster): both formats, in this process."""
    results = submit_batch(read_requests(batch_file(tmp_path)), model=str(tiny_model), progress=False)
    check_openai_results(results, expected(tiny_model))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "p", "prompt_token_ids": [0, 11, 40, 7], "max_tokens": 5, "temperature": 0}\n')
    (plain,) = submit_batch(read_requests(prompts), model=str(tiny_model), progress=False)
    assert (plain.id, plain.token_ids) == ("p", expected(tiny_model)[1].token_ids)
    write_results(tmp_path / "out.jsonl", results)
    assert json.loads((tmp_path / "out.jsonl").read_text().splitlines()[3])["error"]["code"] == "invalid_request"


def stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace_s`` (a head's Ray processes may take 30 s)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def start_head_with_dashboard(log_dir, temp: str) -> tuple[subprocess.Popen, int, int]:
    """`ray start --head --block` on loopback with its dashboard, every port of ours free: (process, GCS
    port, dashboard port). A shared machine may run other heads: none of Ray's fixed default ports."""
    gcs, dashboard = free_port(), free_port()
    ports = {"--port": gcs, "--dashboard-port": dashboard, "--dashboard-agent-listen-port": free_port(),
             "--dashboard-agent-grpc-port": free_port(), "--runtime-env-agent-port": free_port(),
             "--metrics-export-port": free_port(), "--node-manager-port": free_port(),
             "--ray-client-server-port": free_port()}
    log = log_dir / "ray-head.log"
    with open(log, "w") as sink:
        head = subprocess.Popen(["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                                 "--dashboard-host=127.0.0.1", *(f"{k}={v}" for k, v in ports.items()),
                                 "--num-cpus=4", f"--temp-dir={temp}", "--disable-usage-stats"],
                                start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_port(dashboard, 90, head)
    except TimeoutError as e:
        stop(head)
        raise TimeoutError(f"{e}; ray start said:\n{log.read_text()[-3000:]}") from None
    return head, gcs, dashboard


@pytest.mark.ray
@pytest.mark.redis
def test_submit_as_a_ray_job_through_the_dashboard(tiny_model, tmp_path, monkeypatch):
    # Token auth is on by default: the submitting side sends the token the head wrote to
    # ~/.ray/auth_token in the dashboard's Authorization header, with no RAY_AUTH_MODE set.
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    started, temp = time.monotonic(), tempfile.mkdtemp(prefix="js", dir="/tmp")  # short: Ray's socket paths
    head, gcs, dashboard = start_head_with_dashboard(tmp_path, temp)
    serve = None
    try:
        config = tmp_path / "cluster.yaml"
        config.write_text(f"name: js\nmodel: {tiny_model}\npools:\n"
                          "  prefill: {replicas: 1, hardware: {num_cpus: 1}}\n"
                          "  decode: {replicas: 1, hardware: {num_cpus: 1}}\nrouter: {grpc_port: 0, http_port: 0}\n")
        serve = subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve", "--config", str(config),
                                  "--address", f"127.0.0.1:{gcs}"], start_new_session=True, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_line(serve, "serving cluster 'js'", 180)
        out = tmp_path / "out.jsonl"
        done = subprocess.run([sys.executable, "-m", "cluster.cli", "submit", "--address",
                               f"http://127.0.0.1:{dashboard}", "--cluster", "js", "--submission-id", "js-batch-1",
                               str(batch_file(tmp_path)), "-o", str(out)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stderr[-3000:]  # one request of four fails (its token id)
        assert "submitted Ray job js-batch-1" in done.stderr and "3 of 4 requests done" in done.stdout
        results = [BatchRequestOutput.model_validate_json(line) for line in out.read_text().splitlines()]
        check_openai_results(results, expected(tiny_model))
        print(f"head + cluster + job: {time.monotonic() - started:.0f} s")
    finally:
        if serve is not None:
            stop(serve)
        stop(head)
        shutil.rmtree(temp, ignore_errors=True)
