"""The `tierserve` command: one entry point, subcommands contributed by each package."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from cluster.demo import add_commands as demo_commands
    from cluster.deploy_cli import add_commands as deploy_commands
    from cluster.serve_cli import add_commands as serve_commands
    from cluster.submit_cli import add_commands as submit_commands
    from engine.cli import add_commands as engine_commands
    from simulator.cli import add_commands as simulator_commands
    parser = argparse.ArgumentParser(prog="tierserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    engine_commands(sub)
    demo_commands(sub)
    serve_commands(sub)
    submit_commands(sub)
    simulator_commands(sub)
    deploy_commands(sub)
    return parser


SIMULATOR_COMMANDS = ("plan", "simulate", "sample-trace", "calibrate")  # start without torch or Ray


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SIMULATOR_COMMANDS:
        from simulator.cli import main as simulator_main
        return simulator_main(argv)
    from cluster.bringup.ray_auth import opt_into_token_auth
    opt_into_token_auth()  # before anything imports ray, which reads RAY_AUTH_MODE on import
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
