"""`tierserve simulate`: one design on one trace, or the validation suite (--validate)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from rich.console import Console

from simulator import comparisons, validation
from simulator.costs import CostModels
from simulator.design_spec import design_from_config, parse_design
from simulator.inputs import build_costs, build_trace
from simulator.metrics import summarize
from simulator.models import load_model
from simulator.plots import plot_latency_cdfs
from simulator.progress import progress_bar
from simulator.report import print_tables, result_dict, results_table, validation_table, write_json
from simulator.simulation import Simulation
from simulator.slo import parse_slo


def simulate_command(args: argparse.Namespace, console: Console) -> int:
    costs = build_costs(args)
    trace = build_trace(args)
    if args.design:
        design = parse_design(args.design, costs.catalog, args.max_num_seqs, args.max_num_batched_tokens,
                              args.router or "prefix_aware")
    else:
        design = design_from_config(args.config, costs.catalog)
        design = replace(design, router=args.router) if args.router else design
    design = replace(design, shared_prefix_attention=False) if args.no_shared_prefix else design
    slo = parse_slo(args.slo) if args.slo else None
    with progress_bar(console, f"simulating {design.label()}", len(trace)) as update:
        record = Simulation(design, costs, trace).run(lambda n: update(completed=n))
    result = summarize(record, slo, costs.catalog)
    console.print(results_table([result], f"{trace.name}: {len(trace)} requests at {trace.rate:.3g} req/s"))
    console.print(f"completed {result.completed}, rejected {result.rejected} (longer than the KV memory), "
                  f"makespan {result.duration_s:.1f} s, prefix-cache hits {result.prefix_hit_rate:.1%}")
    if slo is not None:
        verdict = "meets" if result.meets(slo) else "misses: " + "; ".join(slo.violations(result.percentiles))
        console.print(f"SLO {slo.text()}: {verdict}; attainment {result.slo_attainment:.1%}")
    if args.out:
        write_json(args.out / "result.json", result_dict(result))
        plot_latency_cdfs([result], args.out / "latency_cdf.png", f"{design.label()} on {trace.name}")
        console.print(f"wrote {args.out}/result.json and latency_cdf.png")
    return 0


def validate_command(args: argparse.Namespace, console: Console) -> int:
    loaded = build_costs(args)  # operator sums are checked against the roofline, so no profiles here
    costs = CostModels(loaded.model, loaded.catalog, links=loaded.links)
    big = CostModels(load_model("llama-3-70b"), loaded.catalog, links=loaded.links)
    checks = [("single request = operator sum", lambda: validation.single_request(costs)),
              ("M/D/1 queueing", lambda: validation.md1(costs)),
              ("monotonicity", lambda: validation.monotonic(costs)),
              ("seeded reproducibility", lambda: validation.reproducible(costs)),
              ("Splitwise direction (llama-3-70b)", lambda: comparisons.splitwise(big)),
              ("Lamina direction (llama-3-70b)", lambda: comparisons.lamina(big))]
    tables = []
    with progress_bar(console, "validating", len(checks)) as update:
        for name, check in checks:
            update(description=name)
            tables.append(check())
            update(advance=1)
    print_tables(console, [validation_table(t) for t in tables])
    if args.out:
        write_json(args.out / "validation.json", [t.__dict__ for t in tables])
    return 0 if all(t.passed for t in tables) else 1
