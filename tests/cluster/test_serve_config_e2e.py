"""`tierserve serve --config` end to end: one 1 prefill + 1 decode cluster behind the real
router, in a subprocess, serves every case of the module.

Its config's router section holds TLS and API keys (from a file) and ports that are taken;
flags lay free ports and a short request timeout over them. $RAY_ADDRESS names another
"Ray" (a listening socket): serve must start a private Ray, not join it. Then API keys, the
request timeout and a client disconnect through the router in front of the cluster, and
last SIGTERM with requests in flight: each ends with a terminal event, the process exits 0
and leaves no Ray or Redis process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from cluster.bringup import ray_connect
from tests.router.test_tls import issue

pytestmark = [pytest.mark.ray, pytest.mark.redis]

KEY = "key-of-alice-0123456789"
REQUEST_TIMEOUT_S = 5.0   # the flag's; the config says 600
SHUTDOWN_GRACE_S = 1.5  # well inside the request timeout, so what ends the long request is the shutdown
LONG = 1900               # tokens: longer than the request timeout and the grace at this cluster's pace


@dataclass
class Served:
    proc: subprocess.Popen
    name: str
    base_url: str
    pki: Path
    taken_port: int
    fake_ray: str
    stderr: list[str]

    def client(self, key: str | None = KEY, timeout: float = 60) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, verify=ssl.create_default_context(cafile=str(self.pki / "ca.pem")),
                            headers=headers, timeout=timeout)


def completion(max_tokens: int, stream: bool = True, prompt: str = "Once upon a time") -> dict:
    return {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": stream}


def session_members(sid: int) -> list[str]:
    """The processes of session ``sid`` (serve is its leader): Ray, Redis, replicas."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[3]) == sid:
            found.append(text[text.index("(") + 1:text.rindex(")")])
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    tmp = tmp_path_factory.mktemp("serve-config")
    ca = issue("ca", None, tmp, ca=True)
    issue("server", ca, tmp, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    (tmp / "keys").write_text(f"# tenants\nalice={KEY}\n")
    name = f"e2e{os.getpid()}"
    with socket.socket() as taken, socket.socket() as taken_too, socket.socket() as fake_ray:
        for s in (taken, taken_too, fake_ray):
            s.bind(("127.0.0.1", 0))
            s.listen()
        port, fake = taken.getsockname()[1], f"127.0.0.1:{fake_ray.getsockname()[1]}"
        (tmp / "cluster.yaml").write_text(f"""name: {name}
model: {tiny_model}
pools:
  prefill: {{replicas: 1, hardware: {{num_cpus: 0.5}}}}
  decode: {{replicas: 1, hardware: {{num_cpus: 0.5}}}}
router:
  http_port: {port}
  grpc_port: {taken_too.getsockname()[1]}
  api_keys_file: {tmp / 'keys'}
  tls_cert: {tmp / 'server.pem'}
  tls_key: {tmp / 'server.key'}
  shutdown_grace_s: {SHUTDOWN_GRACE_S}
  model_name: tiny
""")
        proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve", "--config", str(tmp / "cluster.yaml"),
                                 "--http-port", "0", "--grpc-port", "-1", "--request-timeout", str(REQUEST_TIMEOUT_S)],
                                env={**os.environ, "RAY_ADDRESS": fake}, start_new_session=True, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stderr: list[str] = []
        threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True).start()
        line = proc.stdout.readline()
        match = re.search(r"grpc_port=(\S+) http_port=(\d+)", line)
        assert match, f"serve did not start: {line!r}\n{''.join(stderr)}"
        assert match.group(1) == "off"
        running = Served(proc, name, f"https://127.0.0.1:{match.group(2)}", tmp, port, fake, stderr)
        try:
            yield running
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def test_flags_override_the_config_and_tls_is_served(served):
    assert not served.base_url.endswith(f":{served.taken_port}")
    with served.client() as http:
        assert http.get("/health").status_code == 200
    with pytest.raises(httpx.TransportError):  # TLS only
        httpx.get(served.base_url.replace("https", "http") + "/health", timeout=10)


def test_a_private_ray_not_the_one_ray_address_names(served):
    marker = json.loads((ray_connect.marker_dir() / f"{served.name}.json").read_text())
    assert marker["pid"] == served.proc.pid
    assert marker["gcs_address"] != served.fake_ray


def test_api_keys_through_the_cluster(served):
    for key in (None, "wrong-key"):
        with served.client(key) as http:
            refused = http.post("/v1/completions", json=completion(4, stream=False))
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
    with served.client() as http:
        reply = http.post("/v1/completions", json=completion(4, stream=False))
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4


def stream_events(http: httpx.Client, body: dict, stop_after: int | None = None) -> tuple[list[dict], bool]:
    """The JSON events of a streamed completion and whether [DONE] came; ``stop_after``
    events, the client leaves."""
    events, done = [], False
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line == "data: [DONE]":
                done = True
                break
            if line.startswith("data: {"):
                events.append(json.loads(line[len("data: "):]))
                if stop_after is not None and len(events) >= stop_after:
                    break
    return events, done


def test_the_request_timeout_ends_a_long_stream(served):
    start = time.monotonic()
    with served.client() as http:
        events, done = stream_events(http, completion(LONG))
    elapsed = time.monotonic() - start
    assert done and events[-1].get("error", {}).get("code") == "timeout", events[-1]
    tokens = sum(1 for e in events if e.get("choices"))
    print(f"\ntimed out after {elapsed:.1f} s and {tokens} events")
    assert tokens < LONG and REQUEST_TIMEOUT_S - 0.5 < elapsed < REQUEST_TIMEOUT_S + 5, (tokens, elapsed)


def metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def test_a_client_that_leaves_frees_its_request(served):
    with served.client() as http:
        events, done = stream_events(http, completion(LONG, prompt="A client that leaves"), stop_after=3)
        assert len(events) == 3 and not done
        left = time.monotonic()
        deadline = left + REQUEST_TIMEOUT_S - 1  # sooner than the timeout would end it
        while (metric(http, "tierserve_running_requests") or metric(http, "tierserve_kv_blocks_in_use")) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"\nrequest gone {time.monotonic() - left:.2f} s after its client left")
        assert metric(http, "tierserve_running_requests") == 0
        assert metric(http, "tierserve_kv_blocks_in_use") == 0


def test_sigterm_with_requests_in_flight_ends_them_cleanly_and_exits_0(served):
    outcomes: dict[str, tuple[list[dict], bool] | BaseException] = {}

    def run(label: str, tokens: int) -> None:
        try:
            with served.client() as http:
                outcomes[label] = stream_events(http, completion(tokens, prompt=f"In flight: {label}"))
        except BaseException as e:  # noqa: BLE001 — recorded and asserted below
            outcomes[label] = e
    threads = [threading.Thread(target=run, args=(label, tokens)) for label, tokens in (("short", 64), ("long", LONG))]
    for t in threads:
        t.start()
    time.sleep(1.0)  # both streaming
    served.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    for t in threads:
        t.join(timeout=60)
    code = served.proc.wait(timeout=120)
    print(f"\nserve exited {code} {time.monotonic() - signalled:.1f} s after SIGTERM")
    assert code == 0, "".join(served.stderr)[-3000:]
    for label, outcome in outcomes.items():
        assert not isinstance(outcome, BaseException), (label, outcome)
        print(label, len(outcome[0]), "events, last", outcome[0][-1:], "done", outcome[1])
        events, done = outcome
        assert done, (label, events[-1:])  # a terminal event, never a cut stream or a hang
    assert "error" not in outcomes["short"][0][-1]  # within the grace: drained
    assert outcomes["long"][0][-1]["error"]["code"] == "unavailable"  # past it: a terminal 'unavailable' event
    deadline = time.monotonic() + 20
    while session_members(served.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_members(served.proc.pid) == []  # no raylet, gcs_server, replica or redis-server left
    assert not (ray_connect.marker_dir() / f"{served.name}.json").exists()


def test_sigterm_during_bring_up_stops_what_had_started(tmp_path, tiny_model):
    (tmp_path / "cluster.yaml").write_text(f"""name: early{os.getpid()}
model: {tiny_model}
pools: {{colocated: {{replicas: 1, hardware: {{num_cpus: 0.5}}}}}}
router: {{http_port: 0, grpc_port: null}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve", "--config", str(tmp_path / "cluster.yaml")],
                            start_new_session=True, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for line in proc.stderr:  # Redis and Ray are up, the replica is loading
            if line.startswith("loading the model"):
                break
        assert session_members(proc.pid)  # redis-server, Ray's processes
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 20
        while session_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session_members(proc.pid) == []
        assert proc.stdout.read() == ""  # it never served
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
