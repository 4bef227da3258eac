"""From command-line options to the simulator's inputs: model, catalog, profiles, links, trace."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from simulator.costs import CostModels
from simulator.design import ROUTERS
from simulator.errors import SimInputError
from simulator.hardware import Catalog, load_catalog
from simulator.links import LinkTable, fit_link
from simulator.models import load_model
from simulator.nccl_tests import allreduce_from_nccl_tests, link_from_nccl_tests
from simulator.profiles import Profile, check_model, load_profile
from simulator.serving import NONE, TIERSERVE_STACK
from simulator.traces.load import load_trace
from simulator.traces.trace import Trace


def add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama-3-8b",
                   help="preset (llama-3-8b, llama-3-70b, qwen2-7b, mistral-7b), config.json or checkpoint dir")
    p.add_argument("--catalog", action="append", default=[], metavar="YAML",
                   help="hardware catalog merged over the shipped one (repeatable)")
    p.add_argument("--profile", action="append", default=[], metavar="JSON[:DEVICE]",
                   help="calibration profile from our benchmarks; DEVICE names its hardware if the file does not")
    p.add_argument("--nccl-tests", action="append", default=[], metavar="SRC:DST=FILE",
                   help="nccl-tests output: sendrecv_perf between two tiers (a KV link), or all_reduce_perf "
                        "inside one node of a tier, X:X=FILE (its tensor-parallel all-reduce)")
    p.add_argument("--rate-scale", type=float, default=1.0, help="replay the trace this many times faster")
    p.add_argument("--router", default=None, choices=ROUTERS,
                   help="routing policy (default prefix_aware, or the cluster config's router.policy)")
    p.add_argument("--serving-costs", default="stack", choices=("stack", "none"),
                   help="per-request serving costs when no profile gives them: tierserve's stack as fitted on "
                        "2xH200 runs (default), or none (the bare engine model)")


def profile_arg(text: str, catalog: Catalog) -> Profile:
    path, sep, device = text.rpartition(":")
    if sep and device in catalog.hardware and not Path(text).is_file():
        return load_profile(path, device)
    return load_profile(text)


def nccl_pair(text: str) -> tuple[tuple[str, str], str]:
    pair, sep, path = text.partition("=")
    src, sep2, dst = pair.partition(":")
    if not sep or not sep2 or not src or not dst:
        raise SimInputError(f"--nccl-tests {text!r} is not SRC:DST=FILE (e.g. H100:L40S=sendrecv.txt)")
    return (src, dst), path



def resolved(catalog: Catalog, pair: tuple[str, str]) -> tuple[str, str]:
    return catalog.resolve(pair[0]), catalog.resolve(pair[1])


def build_costs(args: argparse.Namespace) -> CostModels:
    catalog = load_catalog(*args.catalog)
    model = load_model(args.model)
    profiles = tuple(profile_arg(p, catalog) for p in args.profile)
    for prof in profiles:  # a profile of another model's shape is refused here, one naming none warned of
        warning = check_model(prof, model)
        if warning:
            print(warning, file=sys.stderr)
    points: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for prof in profiles:
        for lp in prof.links:
            points[resolved(catalog, (lp.src, lp.dst))].append((lp.bytes, lp.seconds))
    measured = {pair: fit_link(pts) for pair, pts in points.items()}
    for text in args.nccl_tests:
        pair, path = nccl_pair(text)
        src, dst = resolved(catalog, pair)
        allreduce = allreduce_from_nccl_tests(path) if src == dst else None
        if allreduce is not None:  # inside a node of one tier: its tensor-parallel all-reduce
            catalog = catalog.with_allreduce(src, allreduce.latency_s, allreduce.ranks, allreduce.busbw_bytes_s)
        else:
            measured[(src, dst)] = link_from_nccl_tests(path)
    serving = TIERSERVE_STACK if getattr(args, "serving_costs", "stack") == "stack" else NONE
    return CostModels(model, catalog, profiles, LinkTable(catalog, measured), serving)


def build_trace(args: argparse.Namespace) -> Trace:
    trace = load_trace(args.trace)
    return trace.scaled(args.rate_scale) if args.rate_scale != 1.0 else trace
