"""SIGTERM to single-process `tierserve serve` with requests in flight: a request that ends
within the shutdown grace is drained, one that does not ends with a terminal event (an
'unavailable' error event then [DONE] over HTTP, UNAVAILABLE over gRPC), never a cut
stream or a hang; the process exits 0."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import httpx

from router.proto import tierserve_pb2 as pb
from router.proto import tierserve_pb2_grpc as pb_grpc

GRACE_S = 1.0
LONG = 2000  # tokens: far beyond the grace at the tiny model's pace


def sse(base_url: str, max_tokens: int, prompt: str) -> tuple[list[dict], bool]:
    body = {"model": "cli-model", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True}
    events, done = [], False
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line == "data: [DONE]":
                done = True
                break
            if line.startswith("data: {"):
                events.append(json.loads(line[len("data: "):]))
    return events, done


def grpc_stream(target: str, max_tokens: int) -> tuple[int, grpc.StatusCode | None]:
    chunks = 0
    request = pb.GenerateRequest(text="gRPC in flight", sampling=pb.SamplingParams(max_tokens=max_tokens,
                                                                                   temperature=0, ignore_eos=True))
    with grpc.insecure_channel(target) as channel:
        try:
            for _ in pb_grpc.GenerationStub(channel).GenerateStream(request, timeout=60):
                chunks += 1
        except grpc.RpcError as e:
            return chunks, e.code()
    return chunks, None


def test_sigterm_drains_what_fits_the_grace_and_ends_the_rest_cleanly(tiny_model):
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--model", str(tiny_model), "--grpc-port",
                             "0", "--http-port", "0", "--num-blocks", "512", "--served-model-name", "cli-model",
                             "--shutdown-grace", str(GRACE_S)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"grpc_port=(\d+) http_port=(\d+)", line)
        assert match, f"no ports announced: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        target, base_url = f"127.0.0.1:{match.group(1)}", f"http://127.0.0.1:{match.group(2)}"
        outcomes: dict[str, object] = {}

        def run(label: str, call) -> None:
            try:
                outcomes[label] = call()
            except BaseException as e:  # noqa: BLE001 — asserted below
                outcomes[label] = e
        calls = {"short": lambda: sse(base_url, 8, "short"), "long": lambda: sse(base_url, LONG, "long"),
                 "grpc": lambda: grpc_stream(target, LONG)}
        threads = [threading.Thread(target=run, args=item) for item in calls.items()]
        for t in threads:
            t.start()
        time.sleep(0.5)  # all three running
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for t in threads:
            t.join(timeout=60)
        assert proc.wait(timeout=60) == 0
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events, done = outcomes["short"]
    assert done and "error" not in events[-1]  # drained: it fitted the grace
    events, done = outcomes["long"]
    assert done and events[-1]["error"]["code"] == "unavailable", events[-1]  # a terminal event, then [DONE]
    assert "retry later" in events[-1]["error"]["message"]
    chunks, code = outcomes["grpc"]
    assert code == grpc.StatusCode.UNAVAILABLE and chunks < LONG
    assert took < GRACE_S + 10
