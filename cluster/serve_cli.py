"""`tierserve serve`: one engine in-process (--model), or a cluster from its config (--config).

    tierserve serve --config cluster.yaml [--address local|auto|ray://HOST:10001] [--verbose]

Before Ray starts, the config, the router's ports and the model directory are checked; any
of them wrong is one `error:` line and exit code 2. Bring-up prints a line per phase on stderr.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from router.cli import add_commands as add_router_commands
from router.cli import router_config


def add_commands(sub: argparse._SubParsersAction) -> None:
    add_router_commands(sub)
    serve = sub.choices["serve"]
    serve.add_argument("--config", type=Path, default=None,
                       help="cluster config YAML: start or join Ray and serve the pools it names")
    serve.add_argument("--address", default=None,
                       help="Ray to use with --config: local (start one, default), auto, or ray://HOST:10001")
    serve.add_argument("--verbose", action="store_true",
                       help="with --config: show Ray's own log lines and the replicas' output")
    single_process = serve.get_default("func")
    serve.set_defaults(func=lambda args: run_cluster(args) if args.config else single_process(args))


class PortInUseError(OSError):
    """A port the router needs is taken; the message says which and how to pick another."""


def check_ports(host: str, ports: dict[str, int]) -> None:
    """Bind each (non-zero) port as the router will, and let it go again."""
    for name, port in ports.items():
        if not port:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise PortInUseError(f"router.{name} {port} on {host} is not free ({e.strerror}); set another "
                                     f"router.{name} in the config (0 picks a free port)") from None


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_cluster(args: argparse.Namespace) -> int:
    from cluster.config import load_cluster_config
    from cluster.local_cluster import Cluster
    from router.config import RouterConfig
    from router.server import Router

    try:
        config = load_cluster_config(args.config)
        cli = router_config(args)
        rc = config.router
        routing = RouterConfig(host=rc.host, grpc_port=rc.grpc_port, http_port=rc.http_port,
                               api_keys=rc.api_keys + cli.api_keys, model_name=cli.model_name,
                               request_timeout_s=cli.request_timeout_s)
        check_ports(rc.host, {"grpc_port": rc.grpc_port, "http_port": rc.http_port})
        cluster = Cluster(config, args.address, progress=_progress, verbose=args.verbose)
        dispatcher = cluster.start()
    except Exception as e:  # noqa: BLE001 — any start-up failure is reported, not traced
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        Router(dispatcher, routing).serve_forever(lambda router: print(
            f"serving cluster {config.name!r} ({', '.join(f'{k}={v.replicas}' for k, v in config.pools.items())}) "
            f"on {routing.host}: grpc_port={router.grpc_port} http_port={router.http_port}", flush=True))
    except OSError as e:  # a port taken between the check and the bind
        print(f"error: the router could not listen: {e}", file=sys.stderr)
        return 2
    finally:
        cluster.shutdown()
    return 0
