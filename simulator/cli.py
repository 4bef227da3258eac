"""`tierserve plan` and `tierserve simulate`: the capacity planner and the cluster simulator."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from rich.console import Console

from simulator.errors import SimInputError
from simulator.inputs import add_input_options


def add_commands(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser("plan", help="cheapest cluster design that meets an SLO at a trace's rate")
    plan.add_argument("--trace", required=True, help="Azure .csv (e.g. the shipped simulator/traces/"
                      "azure_conv_sample.csv), Mooncake .jsonl or synthetic:key=value,...")
    plan.add_argument("--slo", required=True, help="e.g. ttft_p99=2,tbt_p99=100ms")
    add_input_options(plan)
    plan.add_argument("--kinds", default="colocated,disaggregated,offload", help="design kinds to search")
    plan.add_argument("--hardware", default="", help="tiers to consider, comma separated (default: all)")
    plan.add_argument("--max-replicas", type=int, default=64)
    plan.add_argument("--max-num-seqs", type=int, default=256)
    plan.add_argument("--max-num-batched-tokens", type=int, default=8192)
    plan.add_argument("--search-requests", type=int, default=4000,
                      help="search on the trace's first N requests; each family's best is rerun on all of them "
                           "and the winner shrunk there")
    plan.add_argument("--confidence", type=float, default=0.8,
                      help="search with every modeled time at this quantile of the slowdown prior, so the design "
                           "meets the SLO with about this probability (uncalibrated: a wide prior; see --profile)")
    plan.add_argument("--tp-choices", type=int, default=0,
                      help="tensor-parallel degrees per tier: the smallest that fits, doubled up to the node's "
                           "GPU count (catalog max_devices_per_node); N: only the first N (default 0: all)")
    plan.add_argument("--time-budget", type=float, default=60.0,
                      help="CPU seconds of the plan process (user + system time, not wall time: a loaded machine "
                           "takes longer by the clock); family searches stop starting after ~60%% of it, the "
                           "Pareto plot measures families only while it lasts (0: none). The output reports both")
    plan.add_argument("--pareto", type=int, default=6, help="designs whose capacity the Pareto plot measures")
    plan.add_argument("--out", type=Path, default=Path("plan-out"), help="plots and results")
    plan.add_argument("--config-out", type=Path, default=None, help="cluster config (default OUT/cluster.yaml)")
    plan.add_argument("--model-ref", default=None, help="checkpoint the cluster config names (default: the model's)")
    plan.set_defaults(func=run_plan)

    sim = sub.add_parser("simulate", help="simulate one cluster design on a trace, or run the validation suite")
    sim.add_argument("--trace", help="Azure .csv, Mooncake .jsonl or synthetic:key=value,...")
    which = sim.add_mutually_exclusive_group()
    which.add_argument("--design", help="e.g. prefill=H100x2,decode=L40Sx4@tp2 or colocated=H100x4")
    which.add_argument("--config", type=Path, help="a cluster config YAML (as `plan` writes)")
    sim.add_argument("--slo", default=None, help="for SLO attainment and goodput, e.g. ttft_p99=2,tbt_p99=0.1")
    add_input_options(sim)
    sim.set_defaults(model=None)  # llama-3-8b, or with --config the config's model
    sim.add_argument("--max-num-seqs", type=int, default=256)
    sim.add_argument("--max-num-batched-tokens", type=int, default=8192)
    sim.add_argument("--no-shared-prefix", action="store_true",
                     help="decode steps read every sequence's whole context (no shared-prefix attention)")
    sim.add_argument("--no-band", action="store_true",
                     help="skip the uncertainty band (p10/p50/p90 under the slowdown prior, P(SLO met))")
    sim.add_argument("--out", type=Path, default=None, help="write result.json and latency_cdf.png here")
    sim.add_argument("--validate", action="store_true",
                     help="run the validation suite (operator sums, M/D/1, monotonicity, seeds, Splitwise, Lamina)")
    sim.set_defaults(func=run_simulate)

    from simulator.calibrate_command import add_calibrate
    add_calibrate(sub, run_calibrate)

    sample = sub.add_parser("sample-trace", help="write a synthetic trace in the Azure CSV format "
                            "(default: rewrite the shipped simulator/traces/azure_conv_sample.csv)")
    sample.add_argument("out", type=Path, nargs="?", default=None, help="CSV to write (default: the shipped sample)")
    sample.add_argument("--spec", default=None, help="synthetic:key=value,... (default: the sample's, "
                        "synthetic:n=2000,rate=5.4,workload=conversation,seed=2023)")
    sample.set_defaults(func=run_sample_trace)


def _guard(fn):
    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except SimInputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return run


def _console() -> Console:
    """Wide tables when the output is not a terminal (logs, CI)."""
    return Console() if sys.stdout.isatty() else Console(width=160)


@_guard
def run_plan(args: argparse.Namespace) -> int:
    from simulator.plan_command import plan_command
    return plan_command(args, _console())


@_guard
def run_simulate(args: argparse.Namespace) -> int:
    from simulator.simulate_command import simulate_command, validate_command
    if args.validate:
        return validate_command(args, _console())
    if not args.trace or not (args.design or args.config):
        raise SimInputError("simulate needs --trace and --design or --config (or --validate)")
    return simulate_command(args, _console())


@_guard
def run_calibrate(args: argparse.Namespace) -> int:
    from simulator.calibrate_command import calibrate_command
    return calibrate_command(args)


@_guard
def run_sample_trace(args: argparse.Namespace) -> int:
    from simulator.traces.sample import SAMPLE_PATH, SAMPLE_SPEC, write_sample
    path = write_sample(args.out or SAMPLE_PATH, args.spec or SAMPLE_SPEC)
    print(f"wrote {path} ({args.spec or SAMPLE_SPEC} in the Azure CSV format)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tierserve", description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
