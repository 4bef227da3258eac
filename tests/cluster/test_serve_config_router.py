"""The cluster config's ``router:`` section is RouterConfig's own fields (issue 20: one
vocabulary), checked by RouterConfig with errors naming ``router.<field>``; secrets may come
from files; `tierserve serve --config` lays the router flags it was given over the section
and refuses the single-process engine flags. No Ray, no Redis."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from cluster.cli import build_parser
from cluster.config import RouterSection, load_cluster_config, parse_cluster_config
from cluster.schema import ConfigFileError
from cluster.serve_cli import FlagError, check_engine_flags, cluster_router_config
from router.config import RouterConfig

POOLS = {"colocated": {}}
SALT = "a-salt-secret-of-32-characters!!"


def section(**router) -> RouterSection:
    return parse_cluster_config({"model": "m", "pools": POOLS, "router": router}).router


def serve_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--config", "cluster.yaml", *flags])


@pytest.fixture
def pems(tmp_path):
    """Files for the TLS fields (RouterConfig checks that they exist, not what they hold)."""
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("-")
    return tmp_path


def test_every_router_config_field_is_a_router_section_field_by_the_same_name(tmp_path, pems, monkeypatch):
    monkeypatch.delenv("TIERSERVE_API_KEYS", raising=False)
    monkeypatch.delenv("TIERSERVE_CACHE_SALT_SECRET", raising=False)
    keys = tmp_path / "keys"
    keys.write_text("# tenants\nalice=key-a\n\n  bob=key-b  \nplainkey\n")
    salt = tmp_path / "salt"
    salt.write_text(SALT + "\n")
    config = tmp_path / "cluster.yaml"
    config.write_text(f"""model: m
pools: {{colocated: {{replicas: 1}}}}
router:
  host: 0.0.0.0
  grpc_port: null
  http_port: 8443
  api_keys: [carol=key-c]
  api_keys_file: {keys}
  cache_salt_secret_file: {salt}
  model_name: llama
  request_timeout_s: 120
  shutdown_grace_s: 9
  max_request_bytes: 65536
  rate_limit_rps: 2.5
  rate_limit_burst: 4
  idle_timeout_s: 7
  read_timeout_s: 8
  tls_cert: {pems / 'cert.pem'}
  tls_key: {pems / 'key.pem'}
  tls_client_ca: {pems / 'ca.pem'}
  policy: round-robin
  max_predicted: 1000
""")
    router = load_cluster_config(config).router
    # the section is the router's config plus the dispatcher's own knobs (its routing policy and the
    # prefix index's cap on predictions)
    assert {f.name for f in dataclasses.fields(RouterConfig)} | {"policy", "max_predicted"} == \
        {f.name for f in dataclasses.fields(RouterSection)}
    assert router.policy == "round-robin" and router.max_predicted == 1000
    routing = router.router_config()
    assert type(routing) is RouterConfig
    assert routing == RouterConfig(
        host="0.0.0.0", grpc_port=None, http_port=8443,
        api_keys=("carol=key-c", "alice=key-a", "bob=key-b", "plainkey"),
        cache_salt_secret=SALT, model_name="llama", request_timeout_s=120.0, shutdown_grace_s=9.0,
        max_request_bytes=65536, rate_limit_rps=2.5, rate_limit_burst=4, idle_timeout_s=7.0, read_timeout_s=8.0,
        tls_cert=str(pems / "cert.pem"), tls_key=str(pems / "key.pem"), tls_client_ca=str(pems / "ca.pem"))
    # the secrets stay out of reprs (and so out of any log line that prints a config)
    for shown in (repr(router), repr(routing), repr(load_cluster_config(config))):
        assert "key-a" not in shown and "key-c" not in shown and SALT not in shown


def test_an_empty_router_section_is_router_configs_defaults():
    assert section().router_config() == RouterConfig()
    assert parse_cluster_config({"model": "m", "pools": POOLS}).router.router_config() == RouterConfig()


@pytest.mark.parametrize("router, message", [
    ({"grpc_port": 70000}, "router.grpc_port must be None or an integer in [0, 65535], got 70000"),
    ({"grpc_port": None, "http_port": None}, "router: at least one of grpc_port and http_port must be set"),
    ({"rate_limit_burst": 3}, "router.rate_limit_burst needs rate_limit_rps"),
    ({"idle_timeout_s": 0}, "router.idle_timeout_s must be a finite number > 0, got 0"),
    ({"max_request_bytes": 10}, "router.max_request_bytes must be an integer in [1024, 2**31 - 1], got 10"),
    ({"tls_cert": "/nonexistent/cert.pem"}, "router.tls_cert and tls_key must be given together"),
    ({"tls_cert": "/nonexistent/c.pem", "tls_key": "/nonexistent/k.pem"},
     "router.tls_cert: '/nonexistent/c.pem' is not a readable file"),
    ({"policy": "random"}, "router.policy must be one of ('prefix-aware', 'round-robin'), got 'random'"),
    ({"api_keys": ["a=k", "b=k"]}, "router.api_keys: a key is listed twice (tenant 'b')"),
    ({"request_timeout": 5}, "router.request_timeout: unknown field"),
    ({"api_keys_file": "/nonexistent/keys"}, "router.api_keys_file: cannot read '/nonexistent/keys': "
                                             "No such file or directory"),
])
def test_a_bad_router_field_is_named(router, message):
    with pytest.raises(ConfigFileError) as info:
        section(**router)
    assert str(info.value).startswith(message), str(info.value)


def test_secret_values_are_not_echoed_in_errors():
    with pytest.raises(ConfigFileError) as info:
        section(api_keys=[123456789])
    assert str(info.value) == "router.api_keys[0] must be str, got int (value not shown)"
    with pytest.raises(ConfigFileError) as info:
        section(cache_salt_secret=4242424242)
    assert "4242424242" not in str(info.value)
    with pytest.raises(ConfigFileError, match="cache_salt_secret must be None or at least 16") as info:
        section(cache_salt_secret="short-secret")
    assert "short-secret" not in str(info.value)


def test_router_flags_override_the_config_and_the_rest_is_kept(pems, monkeypatch):
    monkeypatch.delenv("TIERSERVE_API_KEYS", raising=False)
    monkeypatch.delenv("TIERSERVE_CACHE_SALT_SECRET", raising=False)
    base = section(host="0.0.0.0", grpc_port=50052, http_port=8001, api_keys=["alice=key-a"], request_timeout_s=30,
                   rate_limit_rps=3, model_name="llama", policy="round-robin")
    assert cluster_router_config(serve_args(), base) == base.router_config()  # no flag: the config as it is
    routing = cluster_router_config(serve_args("--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "-1",
                                               "--api-key", "bob=key-b", "--request-timeout", "0",
                                               "--tls-cert", str(pems / "cert.pem"), "--tls-key",
                                               str(pems / "key.pem"), "--idle-timeout", "3"), base)
    assert (routing.host, routing.http_port, routing.grpc_port) == ("127.0.0.1", 0, None)
    assert routing.api_keys == ("bob=key-b",)  # keys given on the command line replace the config's
    assert routing.request_timeout_s is None and routing.idle_timeout_s == 3 and routing.tls
    assert (routing.rate_limit_rps, routing.model_name) == (3, "llama")  # not given: kept from the config
    monkeypatch.setenv("TIERSERVE_API_KEYS", "carol=key-c")
    monkeypatch.setenv("TIERSERVE_CACHE_SALT_SECRET", SALT)
    routing = cluster_router_config(serve_args("--rate-limit-rps", "0"), base)
    assert routing.api_keys == ("carol=key-c",) and routing.cache_salt_secret == SALT
    assert routing.rate_limit_rps is None


def test_an_override_is_checked_by_router_config():
    with pytest.raises(ValueError, match="grpc_port and http_port must differ, both are 9000"):
        cluster_router_config(serve_args("--http-port", "9000"), section(grpc_port=9000))


@pytest.mark.parametrize("flags, field", [
    (["--model", "x"], "model"), (["--dtype", "float32"], "dtype"), (["--max-model-len", "64"], "max_model_len"),
    (["--num-blocks", "8"], "pools.<pool>.engine.num_blocks"), (["--device", "cuda"], "pools.<pool>.hardware.num_gpus"),
    (["--prefix-caching"], "pools.<pool>.engine.enable_prefix_caching"),
])
def test_engine_flags_are_refused_with_config_naming_the_field_to_set(flags, field):
    with pytest.raises(FlagError) as info:
        check_engine_flags(serve_args(*flags))
    assert str(info.value) == f"{flags[0]} does not apply with --config; set {field} in the config"
    check_engine_flags(serve_args("--http-port", "0"))  # router flags are fine


def test_serve_refuses_what_does_not_apply(tmp_path, capsys):
    def run(*argv: str) -> int:
        args = build_parser().parse_args(["serve", *argv])
        return int(args.func(args) or 0)
    config = tmp_path / "cluster.yaml"
    config.write_text("model: m\npools: {colocated: {}}\n")
    assert run("--config", str(config), "--num-blocks", "8") == 2
    assert capsys.readouterr().err == "error: --num-blocks does not apply with --config; set " \
                                      "pools.<pool>.engine.num_blocks in the config\n"
    assert run("--address", "auto") == 2
    assert capsys.readouterr().err == "error: --address applies to a cluster (--config) only\n"
