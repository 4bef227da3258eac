"""`tierserve plan`: search designs, print the table, write the cluster config and the plots."""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from simulator.capacity import max_rate
from simulator.cluster_config import chart_values, cluster_config, write_chart_values, write_cluster_config
from simulator.errors import SimInputError
from simulator.inputs import build_costs, build_trace
from simulator.planner import Plan, Planner, PlanOptions
from simulator.plots import ParetoPoint, plot_latency_cdfs, plot_pareto
from simulator.progress import progress_bar
from simulator.report import band_dict, band_table, result_dict, results_table, write_json
from simulator.router_cost import for_design
from simulator.slo import SLO, parse_slo
from simulator.uncertainty import SlowdownPrior, prior_for

PARETO_SCALES = (1, 2, 4)


def _options(args: argparse.Namespace, prior: SlowdownPrior) -> PlanOptions:
    split = lambda text: tuple(s.strip() for s in text.split(",") if s.strip())  # noqa: E731
    if not 0 < args.confidence < 1:
        raise SimInputError(f"--confidence must be in (0, 1), got {args.confidence}")
    return PlanOptions(kinds=split(args.kinds), hardware=split(args.hardware), max_replicas=args.max_replicas,
                       max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                       router=args.router or "prefix_aware", search_requests=args.search_requests,
                       tp_choices=args.tp_choices or None, slowdown=prior.quantile(args.confidence), prior=prior,
                       time_budget_s=args.time_budget or None)


def plan_command(args: argparse.Namespace, console: Console) -> int:
    started, wall = time.process_time(), time.perf_counter()  # the budget covers the whole command's CPU time
    costs, trace, slo = build_costs(args), build_trace(args), parse_slo(args.slo)
    prior = prior_for(costs)
    options = _options(args, prior)
    console.print(f"trace {trace.name}: {len(trace)} requests at {trace.rate:.3g} req/s; model {costs.model.name}; "
                  f"SLO {slo.text()}\n{prior.source}; searching at its {args.confidence:.0%} quantile "
                  f"(every modeled time x{options.slowdown:.3g}); serving costs: {costs.serving.source}")
    with progress_bar(console, "searching designs", None) as update:
        planner = Planner(trace, costs, slo, options, lambda label: update(advance=1, description=label))
        plan = planner.plan()
    console.print(f"simulated {len(plan.evaluated)} designs in {plan.seconds:.1f} CPU s ({plan.wall_seconds:.1f} s "
                  "wall)"
                  + "".join(f"; skipped {s}" for s in plan.skipped))
    if plan.best is None:
        console.print("[red]no design meets the SLO[/red] within --max-replicas; loosen the SLO or allow more replicas")
        return 1
    marks = ["*" if c is plan.best else "" for c in plan.family_bests] + ["h" for _ in plan.head_only]
    console.print(results_table([c.result for c in (*plan.family_bests, *plan.head_only)],
                                f"cheapest design per family (* = chosen; h = on the first {options.search_requests} "
                                f"requests only), at slowdown x{options.slowdown:.3g}", marks, console.width))
    if plan.band is not None:
        console.print(band_table(plan.band, slo))
    used = [pool.hardware for c in (*plan.family_bests, *plan.head_only) for pool in c.design.pools().values()]
    prices = costs.catalog.price_sources(used)
    console.print("prices (assumptions; they mix clouds, put yours in --catalog):\n  " + "\n  ".join(prices))
    config_path = args.config_out or args.out / "cluster.yaml"
    predicted = plan.band.mid if plan.band is not None else plan.best.result
    config = cluster_config(plan.best.design, costs.model, costs.catalog, predicted, slo, trace.name,
                            args.model_ref)
    config["plan"]["model"] = args.model  # what `tierserve simulate --config` simulates
    config["plan"]["price_sources"] = costs.catalog.price_sources(
        [pool.hardware for pool in plan.best.design.pools().values()])
    config["plan"]["searched_at_slowdown"] = round(options.slowdown, 4)
    config["plan"]["prior"] = prior.source
    if plan.band is not None:
        config["plan"]["p_slo_met"] = round(plan.band.p_slo, 4)
        config["plan"]["band_p10_p90"] = {k: [round(v, 6) for v in plan.band.metric(k)[::2]]
                                          for k in ("ttft_p99", "tbt_p99", "goodput_rps")}
    router = for_design(plan.best.design, planner.full)  # router CPUs at the trace's rate (issue 22)
    if router is not None:
        console.print(router.text())
        config["plan"]["router"] = router.as_dict()
    write_cluster_config(config_path, config)
    values_path = write_chart_values(config_path.with_name("values.yaml"), chart_values(config, costs.catalog),
                                     plan.best.design.label())
    deadline = started + options.time_budget_s if options.time_budget_s is not None else None
    _plots(args, console, planner, plan, slo, deadline)
    cpu_s, wall_s = time.process_time() - started, time.perf_counter() - wall
    write_json(args.out / "plan.json", {"price_sources": prices, "prior": prior.source,
                                        "searched_at_slowdown": options.slowdown, "seconds": plan.seconds,
                                        "plan_cpu_s": plan.seconds, "plan_wall_s": plan.wall_seconds,
                                        "command_cpu_s": cpu_s, "command_wall_s": wall_s,
                                        "time_budget_cpu_s": options.time_budget_s,
                                        "band": band_dict(plan.band) if plan.band is not None else None,
                                        "best": result_dict(predicted), "best_at_search_slowdown":
                                        result_dict(plan.best.result),
                                        "family_bests": [result_dict(c.result) for c in plan.family_bests],
                                        "family_bests_head_only": [result_dict(c.result) for c in plan.head_only],
                                        "router": router.as_dict() if router is not None else None})
    chance = f" (P(SLO met) {plan.band.p_slo:.0%})" if plan.band is not None else ""
    price = plan.best.design.cost_per_hour(costs.catalog)
    console.print(f"chosen: {plan.best.design.label()}{chance} at ${price:.2f}/h; "
                  f"wrote {config_path}, {values_path} (Helm chart values), {args.out}/plan.json, pareto.png, "
                  "latency_cdf.png")
    budget = f" of a {options.time_budget_s:g} CPU s budget" if options.time_budget_s is not None else ""
    console.print(f"took {cpu_s:.1f} CPU s{budget} (this process: user + system), {wall_s:.1f} s wall")
    return 0


def _plots(args: argparse.Namespace, console: Console, planner: Planner, plan: Plan, slo: SLO,
           deadline: float | None = None) -> None:
    """Pareto: the cheapest design of each family (up to --pareto of them) at 1x, 2x and 4x its pool
    sizes, each at the highest rate it serves within the SLO; a family's capacities are measured
    only while the time budget (``deadline``, process CPU seconds) lasts, and only if the longest a
    family's took so far fits before it: the plan and the latency CDFs come first."""
    shown = list(plan.family_bests[:args.pareto])
    chosen = next((i for i, c in enumerate(shown) if c is plan.best), None)
    plot_latency_cdfs([c.result for c in shown], args.out / "latency_cdf.png", f"{planner.costs.model.name} on "
                      f"{planner.full.name}", chosen)  # first: the budget left is the Pareto plot's
    designs = [(c.design.label(), c.design.scaled(k)) for c in shown for k in PARETO_SCALES]
    points = []
    longest = began = 0.0  # CPU seconds a family's capacities took at most: the next one must fit before the deadline
    with progress_bar(console, "measuring capacity for the Pareto plot", len(designs)) as update:
        for i, (family, design) in enumerate(designs):
            if i % len(PARETO_SCALES) == 0:
                if deadline is not None and time.process_time() + longest > deadline:
                    console.print(f"Pareto plot: {i // len(PARETO_SCALES)} of {len(shown)} families measured "
                                  "within the time budget (--time-budget)")
                    break
                began = time.process_time()
            update(description=f"capacity of {design.label()}")
            cap = max_rate(design, planner.trace, planner.costs, slo, steps=4)
            points.append(ParetoPoint(design.label(), design.cost_per_hour(planner.costs.catalog), cap.rate,
                                      f"{family} (x1, x2, x4)"))
            update(advance=1)
            if i % len(PARETO_SCALES) == len(PARETO_SCALES) - 1:
                longest = max(longest, time.process_time() - began)
    plot_pareto(points, args.out / "pareto.png", f"{planner.costs.model.name}: cost vs throughput within {slo.text()}")
