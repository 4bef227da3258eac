"""Simulator results, bit for bit: fingerprints of 25 representative runs, saved and compared.

  python -m benchmarks.sim_golden save /tmp/golden.json     # before a change (e.g. on a checkout of HEAD)
  python -m benchmarks.sim_golden check /tmp/golden.json    # after it: IDENTICAL, or what differs

For speed work on simulator/ (issue 17), whose rule is that results do not change. Each run records
hashes of every request's times, the decode segments, the extra token gaps, every replica's busy / KV /
attention sums, and the ``summarize()`` output (repr: floats to the bit), plus counts. The runs cover
colocated, disaggregated, heterogeneous and offload designs; the tierserve stack's serving costs (step
jitter on) and a x1.3 slowdown; prefix caching paged (reserved, and on demand with and without
preemptions) and not, shared prefixes on and off; the three routers; reserve_output; preemption-heavy
long contexts; calibrated H100 profiles and a launch (overlapped-scheduling) profile; tensor
parallelism; and two runs stopped by an SLO watch. About 12 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from simulator.costs import CostModels
from simulator.design_spec import parse_design
from simulator.hardware import load_catalog
from simulator.metrics import summarize
from simulator.models import load_model
from simulator.profiles import load_profile
from simulator.serving import TIERSERVE_STACK
from simulator.simulation import Simulation
from simulator.slo import SLO
from simulator.slo_watch import SloMissed
from simulator.traces.load import load_trace

DATA = Path(__file__).resolve().parent.parent / "tests" / "simulator" / "data"
CONVERSATION = "synthetic:n=6000,rate=120,workload=conversation,seed=0"
PREFIXES = "synthetic:n=4000,rate=40,workload=conversation,prefix_groups=16,prefix_tokens=2048,seed=3"
LONG = "synthetic:n=4000,rate=60,workload=long-context,seed=5"
# a host-bound prefill floor (tests/simulator/test_overlap.py): mixed iterations split their time
LAUNCH = [{"op": "prefill", "tokens": 128, "seconds": 0.0208}, {"op": "prefill", "tokens": 256, "seconds": 0.0209},
          {"op": "prefill", "tokens": 2048, "seconds": 0.051}, {"op": "decode_step", "batch": 8, "context": 1000,
                                                                 "seconds": 0.005},
          {"op": "decode_step", "batch": 64, "context": 1000, "seconds": 0.007}]


def cost_models(folder: Path) -> dict[str, CostModels]:
    catalog, model = load_catalog(), load_model("llama-3-8b")
    stack = CostModels(model, catalog, serving=TIERSERVE_STACK)
    profiles = (load_profile(DATA / "h100_decode_step_calibration.json"),
                load_profile(DATA / "h100_shared_prefix_calibration.json"))
    launch = folder / "launch_profile.json"
    launch.write_text(json.dumps({"device": "H100", "measurements": LAUNCH}))
    return {"roofline": CostModels(model, catalog), "stack": stack, "slowed": stack.slowed(1.3),
            "calibrated": CostModels(model, catalog, profiles, serving=TIERSERVE_STACK),
            "launch": CostModels(model, catalog, (load_profile(launch),), serving=TIERSERVE_STACK)}


RUNS: list[tuple[str, str, str, str, dict]] = [  # name, design, cost models, trace, Design overrides
    ("colo", "colocated=H100x16", "roofline", CONVERSATION, {}),
    ("disagg", "prefill=H100x4,decode=H100x12", "roofline", CONVERSATION, {}),
    ("hetero", "prefill=H100x4,decode=A100-80Gx12", "roofline", CONVERSATION, {}),
    ("offload", "prefill=H100x4,decode=H100x8,attention=H20x4", "roofline", CONVERSATION, {}),
    ("disagg_stack", "prefill=H100x3,decode=H100x5", "stack", CONVERSATION, {}),
    ("colo_stack", "colocated=H100x6", "stack", CONVERSATION, {}),
    ("prefix_colo", "colocated=H100x4", "stack", PREFIXES, {}),
    ("prefix_paged", "colocated=H100x4", "roofline", PREFIXES, {"paged_kv": True, "kv_admission": "reserve_output"}),
    ("prefix_rr", "prefill=H100x2,decode=H100x3", "stack", PREFIXES, {"router": "round_robin"}),
    ("prefix_ll", "prefill=H100x2,decode=H100x3", "roofline", PREFIXES, {"router": "least_loaded"}),
    ("reserve", "prefill=H100x2,decode=H100x2", "roofline", PREFIXES, {"kv_admission": "reserve_output"}),
    ("heavy_preempt", "prefill=H100x4,decode=A100-80Gx2", "roofline", LONG, {}),
    ("heavy_colo", "colocated=A100-80Gx3", "stack", LONG, {}),
    ("calib", "prefill=H100x2,decode=H100x3", "calibrated", PREFIXES, {}),
    ("calib_colo", "colocated=H100x3", "calibrated", CONVERSATION, {}),
    ("tp", "prefill=H100x2@tp2,decode=A100-80Gx2@tp4", "stack", LONG, {}),
    ("slowed_disagg", "prefill=H100x3,decode=H100x5", "slowed", CONVERSATION, {}),
    ("offload_stack_pre", "prefill=H100x2,decode=H100x2,attention=H20x2", "stack", PREFIXES, {}),
    ("launch_colo", "colocated=H100x3", "launch", CONVERSATION, {}),
    ("launch_pre", "colocated=H100x2", "launch", PREFIXES, {}),
    ("calib_noshare", "colocated=H100x3", "calibrated", PREFIXES, {"shared_prefix_attention": False}),
    ("prefix_paged_od", "colocated=H100x4", "roofline", PREFIXES, {"paged_kv": True}),
    ("paged_preempt", "colocated=L40Sx3", "stack", PREFIXES, {"paged_kv": True}),
]
WATCHED = [  # name, design, cost models, trace, the SLO that stops the run
    ("watch_miss", "prefill=H100x1,decode=H100x1", "stack", CONVERSATION, SLO((("ttft_p99", 0.5),))),
    ("watch_pass", "prefill=H100x3,decode=H100x5", "stack", CONVERSATION, SLO((("ttft_p99", 5.0), ("tpot_p90", 0.2)))),
]


def fingerprint(value: object) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def one_run(spec: str, costs: CostModels, trace: str, overrides: dict) -> dict:
    record = Simulation(replace(parse_design(spec, costs.catalog), **overrides), costs, load_trace(trace)).run()
    times = [(r.ttft_at, r.first_decode_at, r.first_step_s, r.finish_at, r.preemptions, r.cached, r.prefill_start)
             for r in record.requests]
    sums = [[(r.busy_total_s, r.batch.kv_token_s if r.batch else 0.0, r.batch.attention_s if r.batch else 0.0)
             for r in pool] for pool in record.replicas.values()]
    result = asdict(replace(summarize(record, SLO((("ttft_p99", 2.0), ("tbt_p99", 0.1))), costs.catalog),
                            samples=None))
    return {"requests": fingerprint(times), "segments": fingerprint(record.segments), "nseg": len(record.segments),
            "extra": fingerprint(record.extra_gaps), "preempt": record.preemptions, "rejected": record.rejected,
            "busy": fingerprint(sums), "result": repr(result)}


def watched_run(spec: str, costs: CostModels, trace: str, slo: SLO) -> dict:
    sim = Simulation(parse_design(spec, costs.catalog), costs, load_trace(trace), stop_on=slo)
    try:
        sim.run()
        missed = None
    except SloMissed as e:
        missed = str(e)
    return {"missed": missed, "finished": sim.finished}


def fingerprints() -> dict[str, dict]:
    with tempfile.TemporaryDirectory() as folder:
        costs = cost_models(Path(folder))
        out = {name: one_run(spec, costs[c], trace, kw) for name, spec, c, trace, kw in RUNS}
        out.update({name: watched_run(spec, costs[c], trace, slo) for name, spec, c, trace, slo in WATCHED})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("save", "check"))
    p.add_argument("file", type=Path)
    args = p.parse_args(argv)
    now = fingerprints()
    if args.action == "save":
        args.file.write_text(json.dumps(now, indent=1))
        print(f"saved {len(now)} runs to {args.file}")
        return 0
    saved = json.loads(args.file.read_text())
    differ = [name for name in saved if saved[name] != now.get(name)]
    for name in differ:
        for key, value in saved[name].items():
            if value != now.get(name, {}).get(key):
                print(f"{name} {key}: {value} -> {now.get(name, {}).get(key)}")
    print("IDENTICAL" if not differ else f"DIFFER: {differ}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
