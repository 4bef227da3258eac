"""What a newcomer meets starting a cluster and submitting to it (issue 13): checks that fail
before Ray starts, addresses that fail in seconds, a local cluster found by its name, a line
per start-up phase."""

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
import ray

from cluster.batch import runner
from cluster.bringup import ray_connect
from cluster.bringup.registry import ClusterNotFoundError
from cluster.cli import build_parser
from kvstore.redis_server import free_port

CONFIG = """name: {name}
model: {model}
pools:
  prefill: {{replicas: 1, hardware: {{num_cpus: 0.5}}}}
  decode: {{replicas: 1, hardware: {{num_cpus: 0.5}}}}
router: {{grpc_port: 0, http_port: {http_port}}}
"""


@pytest.fixture
def markers(tmp_path, monkeypatch):
    """Cluster markers in a directory of this test's own."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return ray_connect.marker_dir()


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def config(tmp_path, model, http_port: int = 0, name: str = "t") -> str:
    path = tmp_path / "cluster.yaml"
    path.write_text(CONFIG.format(name=name, model=model, http_port=http_port))
    return str(path)


def test_serve_config_with_a_missing_model_is_one_line_before_ray(tmp_path, capsys):
    assert run(["serve", "--config", config(tmp_path, tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: model directory {tmp_path / 'nope'} does not exist (the config's model)"]
    assert not ray.is_initialized()


def test_serve_config_with_a_busy_port_is_one_line_before_ray(tmp_path, tiny_model, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert run(["serve", "--config", config(tmp_path, tiny_model, http_port=port)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: router.http_port {port} on 127.0.0.1 is not free")
    assert not ray.is_initialized()


@pytest.mark.parametrize("address", ["ray://nonexistent.invalid:10001", "127.0.0.1:{free}", "ray://127.0.0.1:{free}"])
def test_submit_to_an_unreachable_address_fails_in_seconds(tmp_path, capsys, address):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hello"}\n')
    start = time.monotonic()
    address = address.format(free=free_port())
    assert run(["submit", "--address", address, str(prompts), "-o", str(tmp_path / "out.jsonl")]) == 2
    assert time.monotonic() - start < 15
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach Ray at {address}: ") and len(err.splitlines()) == 1
    assert "leave --address out" in err
    assert not ray.is_initialized()


def test_submit_by_default_wants_a_cluster_started_here(tmp_path, capsys, markers):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hello"}\n')
    assert run(["submit", "--cluster", "mine", str(prompts), "-o", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "no tierserve cluster named 'mine' was started on this machine" in err
    ray_connect.write_marker("other", "127.0.0.1:1")
    assert run(["submit", "--cluster", "mine", str(prompts), "-o", str(tmp_path / "out.jsonl")]) == 2
    assert "running here: other (pass --cluster NAME)" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_markers_name_live_clusters_only(markers):
    ray_connect.write_marker("a", "10.0.0.1:6379")
    (markers / "gone.json").write_text(json.dumps({"gcs_address": "10.0.0.2:6379", "pid": 2 ** 22 + 1}))
    (markers / "junk.json").write_text("{")
    assert ray_connect.local_clusters() == {"a": "10.0.0.1:6379"}
    assert ray_connect.resolve_address("local", "a") == "10.0.0.1:6379"
    assert ray_connect.resolve_address("ray://h:10001", "a") == "ray://h:10001"
    (markers / "b.json").write_text(json.dumps({"gcs_address": "10.0.0.3:6379", "pid": 1}))
    ray_connect.remove_marker("b")  # another process's marker stays
    assert (markers / "b.json").exists()
    ray_connect.remove_marker("a")
    assert not (markers / "a.json").exists()


def test_a_ray_without_our_cluster_says_so(monkeypatch):
    def not_found(name):
        raise ClusterNotFoundError(name)
    monkeypatch.setattr(runner, "lookup", not_found)
    monkeypatch.setattr(ray.util, "list_named_actors", lambda all_namespaces: [
        {"name": "someone:else", "namespace": "theirs"}])
    with pytest.raises(ClusterNotFoundError, match=r"the Ray at ray://h:1 runs no tierserve cluster; `--address "
                                                   r"auto` takes any Ray on this machine, perhaps someone else's"):
        runner.find_cluster("x", "ray://h:1")
    monkeypatch.setattr(ray.util, "list_named_actors", lambda all_namespaces: [
        {"name": "prod:registry", "namespace": "tierserve"}, {"name": "prod:prefill-0", "namespace": "tierserve"}])
    with pytest.raises(ClusterNotFoundError, match=r"no tierserve cluster named 'x' in the Ray at ray://h:1; it runs: "
                                                   r"prod \(pass --cluster NAME\)"):
        runner.find_cluster("x", "ray://h:1")


@pytest.mark.ray
@pytest.mark.redis
def test_serve_prints_its_phases_and_submit_finds_it_by_name(tmp_path, tiny_model):
    name = f"t{os.getpid()}"
    serve = subprocess.Popen([sys.executable, "-m", "cluster.cli", "serve", "--config",
                              config(tmp_path, tiny_model, name=name)], start_new_session=True, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = serve.stdout.readline()  # '' once serve has exited: then its stderr says why
        assert f"serving cluster {name!r}" in line, line or serve.stderr.read()
        assert (ray_connect.marker_dir() / f"{name}.json").is_file()
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text('{"prompt_token_ids": [1, 2, 3]}\n{"prompt": "Hello", "max_tokens": 4}\n')
        done = subprocess.run([sys.executable, "-m", "cluster.cli", "submit", "--cluster", name, str(prompts),
                               "-o", str(tmp_path / "out.jsonl"), "--max-tokens", "3"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert [len(json.loads(r)["token_ids"]) for r in (tmp_path / "out.jsonl").read_text().splitlines()] == [3, 4]
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        _, err = serve.communicate(timeout=120)
    lines = err.splitlines()
    phases = ["starting redis-server on 127.0.0.1:", "starting Ray (local, ",
              f"placing 1 prefill + 1 decode replica(s) of {tiny_model}",
              "loading the model in 2 replicas (prefill-0, decode-0)", "replica ", "replica ", f"cluster {name!r} up"]
    assert [line[:len(p)] for line, p in zip(lines, phases)] == phases, err
    assert not any("INFO" in line or "WARNING" in line for line in lines), err  # Ray is quiet without --verbose
    assert not (ray_connect.marker_dir() / f"{name}.json").exists()
