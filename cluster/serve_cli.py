"""`tierserve serve`: one engine in-process (--model), or a cluster from its config (--config).

    tierserve serve --config cluster.yaml [--address local|auto|ray://HOST:10001] [--verbose] [router flags]

The router's settings are the config's `router:` section (RouterConfig's own fields); any
router flag given on the command line (--host, --http-port, --api-key or $TIERSERVE_API_KEYS,
--request-timeout, --tls-cert, ...) overrides that field. The engine flags of single-process
serve (--model, --dtype, --num-blocks, ...) have their place in the config and are refused with
--config, as --address and --verbose are without it. Before Ray starts, the config, the
router's ports and the model directory are checked; any of them wrong is one `error:` line
and exit code 2. Bring-up prints a line per phase on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from router.cli import SERVE_HELP, add_serve_flags, router_overrides, run_serve
from router.config import RouterConfig

if TYPE_CHECKING:
    from cluster.config import RouterSection

# single-process flags (argparse dest) that --config replaces with a config field
ENGINE_FLAGS = {"model": "model", "dtype": "dtype", "max_model_len": "max_model_len",
                "device": "pools.<pool>.hardware.num_gpus", "num_blocks": "pools.<pool>.engine.num_blocks",
                "prefix_caching": "pools.<pool>.engine.enable_prefix_caching"}
CLUSTER_FLAGS = ("address", "verbose")


class FlagError(ValueError):
    """A flag that does not apply to the chosen mode; the message says where its setting goes."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help=SERVE_HELP)
    add_serve_flags(serve)
    serve.add_argument("--config", type=Path, default=None,
                       help="cluster config YAML: start or join Ray and serve the pools it names; router "
                            "flags given here override its router: section")
    serve.add_argument("--address", default=None,
                       help="Ray to use with --config: local (start a private one, default), auto, or "
                            "ray://HOST:10001")
    serve.add_argument("--verbose", action="store_true", default=None,
                       help="with --config: show Ray's own log lines and the replicas' output")
    serve.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    """A cluster with --config, else the router in front of one in-process engine."""
    return run_cluster(args) if args.config else _single(args)


def _single(args: argparse.Namespace) -> int:
    given = [f"--{name}" for name in CLUSTER_FLAGS if getattr(args, name) is not None]
    if given:
        print(f"error: {given[0]} applies to a cluster (--config) only", file=sys.stderr)
        return 2
    return run_serve(args)


def check_engine_flags(args: argparse.Namespace) -> None:
    """With --config the engine's settings are the config's: an engine flag is an error naming
    the config field to set instead."""
    for dest, field in ENGINE_FLAGS.items():
        if getattr(args, dest, None) is not None:
            raise FlagError(f"--{dest.replace('_', '-')} does not apply with --config; set {field} in the config")


def cluster_router_config(args: argparse.Namespace, section: RouterSection) -> RouterConfig:
    """The config's router section with the command line's router flags laid over it (checked
    again by RouterConfig)."""
    return dataclasses.replace(section.router_config(), **router_overrides(args))


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
                                     f"router.{name} in the config or --{name.replace('_', '-')} "
                                     "(0 picks a free port)") from None


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _stop_on_sigterm() -> None:
    """SIGTERM during bring-up unwinds it like Ctrl-C (what started is stopped); while serving,
    the router handles SIGTERM itself (drain, then stop)."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)


def run_cluster(args: argparse.Namespace) -> int:
    from cluster.bringup.local_cluster import Cluster
    from cluster.config import load_cluster_config
    from router.server import Router

    _stop_on_sigterm()
    try:
        check_engine_flags(args)
        config = load_cluster_config(args.config)
        routing = cluster_router_config(args, config.router)
        check_ports(routing.host, {"grpc_port": routing.grpc_port, "http_port": routing.http_port})
        cluster = Cluster(config, args.address, progress=_progress, verbose=bool(args.verbose))
        dispatcher = cluster.start()
    except Exception as e:  # noqa: BLE001 — any start-up failure is reported, not traced
        print(f"error: {e}", file=sys.stderr)
        return 2

    def announce(router: Router) -> None:
        ports = {name: getattr(router, name) if getattr(routing, name) is not None else "off"
                 for name in ("grpc_port", "http_port")}
        print(f"serving cluster {config.name!r} ({', '.join(f'{k}={v.replicas}' for k, v in config.pools.items())}) "
              f"on {routing.host}: grpc_port={ports['grpc_port']} http_port={ports['http_port']}", flush=True)
    try:
        Router(dispatcher, routing).serve_forever(announce)
    except OSError as e:  # a port taken between the check and the bind
        print(f"error: the router could not listen: {e}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the clean-up short
        cluster.shutdown()
    return 0
