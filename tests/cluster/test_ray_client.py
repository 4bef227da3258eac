"""End to end as an operator runs it: `ray start`, `tierserve serve --address`, `tierserve submit
--address ray://...` through Ray Client, each a separate process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from engine.sampling_params import SamplingParams
from kvstore.redis_server import free_port
from tests.engine.conftest import make_engine

pytestmark = [pytest.mark.ray, pytest.mark.redis]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s"
                       + ("" if proc is None or proc.poll() is None else f" (the process exited: {proc.returncode})"))


def start_head(log_dir, attempts: int = 2) -> tuple[subprocess.Popen, int, int]:
    """`ray start --head --block` on fresh ports until its Ray Client port listens: (process, GCS
    port, client port). A head that dies or stays silent is retried once on other ports (on a
    loaded 2-core CI machine one failed to bring up its GCS); the last failure carries its log."""
    for attempt in range(attempts):
        gcs, client = free_port(), free_port()
        temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")
        log = log_dir / f"ray-head-{attempt}.log"
        with open(log, "w") as sink:
            head = subprocess.Popen(["ray", "start", "--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                                     "--num-cpus=4", "--include-dashboard=false", f"--temp-dir={temp}", "--block"],
                                    start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
        try:
            wait_port(client, 60, head)
            return head, gcs, client
        except TimeoutError as e:
            stop(head)
            if attempt == attempts - 1:
                raise TimeoutError(f"{e}; ray start said:\n{log.read_text()[-3000:]}") from None
    raise AssertionError("unreachable")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_line(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{needle!r} never printed; output:\n{''.join(seen)}")


def test_serve_then_submit_over_ray_client(tiny_model, tmp_path, monkeypatch):
    # Ray's token auth is on by default; serve and submit join by address and must opt in by
    # themselves (cluster/bringup/ray_connect.py) with the token the head wrote to ~/.ray/auth_token.
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    head, gcs, client = start_head(tmp_path)
    serve = None
    try:
        config = tmp_path / "cluster.yaml"
        config.write_text(f"name: rc\nmodel: {tiny_model}\npools:\n"
                          "  prefill: {replicas: 1, hardware: {num_cpus: 1}}\n"
                          "  decode: {replicas: 1, hardware: {num_cpus: 1}}\nrouter: {grpc_port: 0, http_port: 0}\n")
        serve = subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve", "--config", str(config),
                                  "--address", f"127.0.0.1:{gcs}"], start_new_session=True, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_line(serve, "serving cluster 'rc'", 180)
        prompts = tmp_path / "prompts.jsonl"
        rows = [[0, 9, 8, 7 + i] for i in range(8)]
        prompts.write_text("".join(json.dumps({"prompt_token_ids": r}) + "\n" for r in rows))
        out = tmp_path / "out.jsonl"
        done = subprocess.run([sys.executable, "-m", "cluster.cli", "submit", "--address", f"ray://127.0.0.1:{client}",
                               "--cluster", "rc", "--max-tokens", "5", "--temperature", "0", str(prompts),
                               "-o", str(out)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        results = [json.loads(line) for line in out.read_text().splitlines()]
        expected = make_engine(tiny_model).generate(rows, SamplingParams(max_tokens=5, temperature=0))
        assert [r["token_ids"] for r in results] == [e.token_ids for e in expected]
        missing = subprocess.run([sys.executable, "-m", "cluster.cli", "submit", "--address",
                                  f"ray://127.0.0.1:{client}", "--cluster", "nope", str(prompts), "-o", str(out)],
                                 capture_output=True, text=True, timeout=300)
        assert missing.returncode == 2 and "no tierserve cluster named 'nope'" in missing.stderr
    finally:
        if serve is not None:
            stop(serve)
        stop(head)
