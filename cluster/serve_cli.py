"""`tierserve serve`: one engine in-process (--model), or a cluster from its config (--config).

    tierserve serve --config cluster.yaml [--address local|auto|ray://HOST:10001]
"""

from __future__ import annotations

import argparse
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
    single_process = serve.get_default("func")
    serve.set_defaults(func=lambda args: run_cluster(args) if args.config else single_process(args))


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
        cluster = Cluster(config, args.address)
        dispatcher = cluster.start()
    except Exception as e:  # noqa: BLE001 — any start-up failure is reported, not traced
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        Router(dispatcher, routing).serve_forever(lambda router: print(
            f"serving cluster {config.name!r} ({', '.join(f'{k}={v.replicas}' for k, v in config.pools.items())}) "
            f"on {routing.host}: grpc_port={router.grpc_port} http_port={router.http_port}", flush=True))
    finally:
        cluster.shutdown()
    return 0
