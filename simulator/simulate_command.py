"""`tierserve simulate`: one design on one trace, or the validation suite (--validate)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from simulator import comparisons, validation
from simulator.costs import CostModels
from simulator.design_spec import design_from_config, parse_design
from simulator.errors import SimInputError
from simulator.files import read_yaml
from simulator.inputs import build_costs, build_trace
from simulator.metrics import summarize
from simulator.models import ModelSpec, load_model, presets
from simulator.plots import plot_latency_cdfs
from simulator.progress import progress_bar
from simulator.report import (
    band_dict,
    band_table,
    print_tables,
    result_dict,
    results_table,
    validation_table,
    write_json,
)
from simulator.simulation import Simulation
from simulator.slo import parse_slo
from simulator.uncertainty import band, prior_for

DEFAULT_MODEL = "llama-3-8b"


def config_model(path: Path) -> str:
    """The simulator's model for a cluster config: ``plan.model`` where `plan` wrote it, else the
    config's ``model:`` as a preset name, a preset's checkpoint (``meta-llama/Meta-Llama-3-70B``,
    or a directory of that name) or a local checkpoint directory with a config.json."""
    data = read_yaml(path, "cluster config")
    data = data if isinstance(data, dict) else {}
    planned = (data.get("plan") or {}).get("model")
    if planned:
        return str(planned)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise SimInputError(f"cluster config {path}: no model")
    if model in presets() or (Path(model) / "config.json").is_file():
        return model
    tail = model.rstrip("/").rsplit("/", 1)[-1].lower()
    for name, preset in presets().items():
        hf_name = preset.get("hf_name") or ""
        if model == hf_name or tail == hf_name.rsplit("/", 1)[-1].lower():
            return name
    known = ", ".join(f"{n} ({p.get('hf_name')})" for n, p in presets().items())
    raise SimInputError(f"cluster config {path}: model {model!r} is not in the simulator's catalog "
                        f"(simulator/models.yaml: {known}) nor a checkpoint directory with a config.json; "
                        "pass --model PRESET or a config.json of the same shape")


def _same_shape(a: ModelSpec, b: ModelSpec) -> bool:
    return replace(a, name="", hf_name=None) == replace(b, name="", hf_name=None)


def model_for(args: argparse.Namespace) -> str:
    """--model, the config's model, or the default; an explicit --model must agree with the config."""
    if not args.config:
        return args.model or DEFAULT_MODEL
    if args.model is None:
        return config_model(args.config)
    try:
        from_config = config_model(args.config)
    except SimInputError:
        return args.model  # an unmapped checkpoint: --model says what it is
    if not _same_shape(load_model(args.model), load_model(from_config)):
        raise SimInputError(f"--model {args.model} disagrees with the model of {args.config} ({from_config}); "
                            "leave --model out to simulate the config's model")
    return args.model


def simulate_command(args: argparse.Namespace, console: Console) -> int:
    args = argparse.Namespace(**{**vars(args), "model": model_for(args)})
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
    prior = prior_for(costs)
    middle = costs.slowed(prior.quantile(0.5))
    with progress_bar(console, f"simulating {design.label()}", len(trace)) as update:
        record = Simulation(design, middle, trace).run(lambda n: update(completed=n))
    result = summarize(record, slo, costs.catalog)
    console.print(results_table([result], f"{trace.name}: {len(trace)} requests at {trace.rate:.3g} req/s; "
                                          f"model {costs.model.name}; the prior's median slowdown "
                                          f"x{prior.quantile(0.5):.3g}", width=console.width))
    spread = None
    if not args.no_band:
        with progress_bar(console, "uncertainty band", None):
            spread = band(design, trace, costs, slo, prior)
        console.print(band_table(spread, slo))
    console.print("prices: " + "; ".join(costs.catalog.price_sources([p.hardware for p in design.pools().values()])))
    console.print(f"completed {result.completed}, rejected {result.rejected} (longer than the KV memory), "
                  f"makespan {result.duration_s:.1f} s, prefix-cache hits {result.prefix_hit_rate:.1%}")
    if slo is not None:
        verdict = "meets" if result.meets(slo) else "misses: " + "; ".join(slo.violations(result.percentiles))
        chance = f"; P(SLO met) {spread.p_slo:.0%} under {spread.prior.source}" if spread else ""
        console.print(f"SLO {slo.text()}: {verdict} at the median slowdown{chance}; attainment "
                      f"{result.slo_attainment:.1%}")
    if args.out:
        payload = result_dict(result)
        if spread is not None:
            payload["band"] = band_dict(spread)
        write_json(args.out / "result.json", payload)
        plot_latency_cdfs([result], args.out / "latency_cdf.png", f"{design.label()} on {trace.name}")
        console.print(f"wrote {args.out}/result.json and latency_cdf.png")
    return 0


def validate_command(args: argparse.Namespace, console: Console) -> int:
    args = argparse.Namespace(**{**vars(args), "model": args.model or DEFAULT_MODEL})
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
