"""`tierserve serve`: the router in front of one in-process engine (single-process mode).

    tierserve serve --model path/to/checkpoint --http-port 8000 --grpc-port 50051

API keys come from --api-key (repeatable) or TIERSERVE_API_KEYS (comma separated), each KEY
or NAME=KEY (a named tenant); the environment keeps them out of the process list, as
TIERSERVE_CACHE_SALT_SECRET does for --cache-salt-secret.

Every router flag defaults to None ("not given"): `router_overrides` returns the given ones as
RouterConfig fields, so `serve --config` can lay them over the config file's `router:` section.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from engine.config import CacheConfig, ConfigError, EngineConfig, SchedulerConfig
from engine.model_config import CheckpointError
from router.config import RouterConfig, RouterConfigError

API_KEYS_ENV = "TIERSERVE_API_KEYS"
SALT_SECRET_ENV = "TIERSERVE_CACHE_SALT_SECRET"
DEFAULTS = RouterConfig()
# serve flag (argparse dest) -> the RouterConfig field it sets
FLAG_FIELDS = {"host": "host", "grpc_port": "grpc_port", "http_port": "http_port",
               "served_model_name": "model_name", "cache_salt_secret": "cache_salt_secret",
               "request_timeout": "request_timeout_s", "shutdown_grace": "shutdown_grace_s",
               "max_request_bytes": "max_request_bytes", "rate_limit_rps": "rate_limit_rps",
               "rate_limit_burst": "rate_limit_burst", "idle_timeout": "idle_timeout_s",
               "read_timeout": "read_timeout_s", "tls_cert": "tls_cert", "tls_key": "tls_key",
               "tls_client_ca": "tls_client_ca"}


SERVE_HELP = "serve a checkpoint over gRPC and OpenAI-compatible HTTP"


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`serve` in single-process mode alone (``python -m router.cli``; `tierserve serve` is
    cluster/serve_cli.py's, which adds the cluster flags to these)."""
    serve = sub.add_parser("serve", help=SERVE_HELP)
    add_serve_flags(serve)
    serve.set_defaults(func=run_serve)


def add_serve_flags(serve: argparse.ArgumentParser) -> None:
    """The router's flags and the single-process engine's."""
    serve.add_argument("--model", default=None, help="checkpoint directory (default: the embedded tiny model)")
    serve.add_argument("--served-model-name", default=None, help="the model name clients use")
    serve.add_argument("--host", default=None, help=f"listen address (default: {DEFAULTS.host}, loopback only)")
    serve.add_argument("--grpc-port", type=int, default=None,
                       help=f"default {DEFAULTS.grpc_port}; 0 picks a free port; -1 turns gRPC off")
    serve.add_argument("--http-port", type=int, default=None,
                       help=f"default {DEFAULTS.http_port}; 0 picks a free port; -1 turns HTTP off")
    serve.add_argument("--api-key", action="append", default=None,
                       help=f"accepted key, KEY or NAME=KEY; each is a tenant (repeatable; or ${API_KEYS_ENV})")
    serve.add_argument("--cache-salt-secret", default=None,
                       help=f"HMAC key for tenants' cache salts (default: random per run; or ${SALT_SECRET_ENV})")
    serve.add_argument("--request-timeout", type=float, default=None,
                       help=f"seconds (default {DEFAULTS.request_timeout_s:g}); 0 for no limit")
    serve.add_argument("--shutdown-grace", type=float, default=None,
                       help=f"seconds running requests get to finish on SIGINT/SIGTERM (default "
                            f"{DEFAULTS.shutdown_grace_s:g})")
    serve.add_argument("--max-request-bytes", type=int, default=None,
                       help=f"largest HTTP body / gRPC message (413 / RESOURCE_EXHAUSTED; default "
                            f"{DEFAULTS.max_request_bytes})")
    serve.add_argument("--rate-limit-rps", type=float, default=None,
                       help="requests per second per tenant (default: no limit; 0: no limit)")
    serve.add_argument("--rate-limit-burst", type=int, default=None, help="bucket size (default: the rate, rounded up)")
    serve.add_argument("--idle-timeout", type=float, default=None,
                       help=f"seconds an idle connection stays open (default {DEFAULTS.idle_timeout_s:g})")
    serve.add_argument("--read-timeout", type=float, default=None,
                       help=f"seconds a client has to send a request's headers and body (default "
                            f"{DEFAULTS.read_timeout_s:g})")
    serve.add_argument("--tls-cert", default=None, help="PEM certificate: serve HTTPS and gRPC over TLS")
    serve.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    serve.add_argument("--tls-client-ca", default=None, help="PEM CA bundle: require client certificates (mTLS)")
    serve.add_argument("--device", default=None, help="cpu (default) or cuda[:N]")
    serve.add_argument("--dtype", default=None)
    serve.add_argument("--max-model-len", type=int, default=None)
    serve.add_argument("--num-blocks", type=int, default=None, help="KV blocks (default: sized from memory)")
    serve.add_argument("--prefix-caching", action="store_true", default=None)


def router_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The RouterConfig fields the command line gives (flags, $TIERSERVE_API_KEYS,
    $TIERSERVE_CACHE_SALT_SECRET); a port of -1 is None (off), a request timeout or rate of 0
    is None (no limit)."""
    given = {name: getattr(args, dest) for dest, name in FLAG_FIELDS.items() if getattr(args, dest) is not None}
    for name in ("grpc_port", "http_port"):
        if name in given and given[name] < 0:
            given[name] = None
    for name in ("request_timeout_s", "rate_limit_rps"):
        if given.get(name) == 0:
            given[name] = None
    keys = list(args.api_key or []) + [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
    if keys:
        given["api_keys"] = tuple(keys)
    if "cache_salt_secret" not in given and os.environ.get(SALT_SECRET_ENV):
        given["cache_salt_secret"] = os.environ[SALT_SECRET_ENV]
    return given


def router_config(args: argparse.Namespace) -> RouterConfig:
    """The single-process router's config: RouterConfig's defaults, then the command line's."""
    return RouterConfig(**router_overrides(args))


def engine_config(model: str, args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(model=model, device=args.device or "cpu", dtype=args.dtype,
                        cache=CacheConfig(num_blocks=args.num_blocks, enable_prefix_caching=bool(args.prefix_caching)),
                        scheduler=SchedulerConfig(max_model_len=args.max_model_len))


def run_serve(args: argparse.Namespace) -> int:
    from engine.default_model import default_model_dir
    from router.local_backend import serve_local
    from router.server import Router

    def announce(router: Router) -> None:
        grpc_port = router.grpc_port if router.config.grpc_port is not None else "off"
        http_port = router.http_port if router.config.http_port is not None else "off"
        print(f"serving {router.model_name!r} on {router.config.host}: grpc_port={grpc_port} "
              f"http_port={http_port}", flush=True)
    try:
        model = str(args.model or default_model_dir())
        serve_local(model, router_config(args), engine_config(model, args), announce)
    except (RouterConfigError, ConfigError, CheckpointError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.cli")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
