"""Host time to build one decode step's inputs, kept incremental, against rebuilding them.

    PYTHONPATH=. python -m benchmarks.step_inputs --batch 256 --prefix 16384 --out DIR

B requests share a P-token prefix (the same physical blocks) and decode together; between
two steps each gains a token and, at block boundaries, a block (rows cross them on
different steps), as in the engine. Timed per step: ``engine.batch.build_model_input`` with
no shared-prefix plan, planning every step (no cache), and with the engine's ``PlanCache``;
the baseline, in the same process, rebuilds everything from the Python lists every step
(block tables, the plan, one host-to-device copy per field), as the engine did before.
Host-only (CPU tensors): what the numbers show is Python and numpy work, the part of a step
the GPU cannot hide.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from benchmarks.common import machine_info, out_dir, write_json
from engine.attention.shared_prefix import PlanCache, plan_shared_prefixes
from engine.batch import build_model_input
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import ScheduledRequest

BLOCK = 16


def make_batch(batch: int, prefix: int, question: int) -> tuple[list[ScheduledRequest], list[int]]:
    """Decoding requests sharing ``prefix`` tokens; the counter is the next free block id."""
    shared = list(range(prefix // BLOCK))
    next_block = [len(shared)]
    scheduled = []
    for i in range(batch):
        r = Request(f"r{i}", list(range(prefix + question)), SamplingParams(max_tokens=1 << 20))
        r.output_token_ids = [5] * (1 + 3 * i % BLOCK)  # staggered across block boundaries
        r.num_computed_tokens = r.num_tokens - 1
        own = -(-r.num_tokens // BLOCK) - len(shared)
        r.block_ids = shared + list(range(next_block[0], next_block[0] + own))
        next_block[0] += own
        scheduled.append(ScheduledRequest(r, 1))
    return scheduled, next_block


def advance(scheduled: list[ScheduledRequest], next_block: list[int]) -> None:
    """What a decode step and the next allocation do to each request."""
    for s in scheduled:
        r = s.request
        r.num_computed_tokens += 1
        r.output_token_ids.append(7)
        need = -(-r.num_tokens // BLOCK) - len(r.block_ids)
        if need > 0:
            r.block_ids.extend(range(next_block[0], next_block[0] + need))
            next_block[0] += need


def rebuild(scheduled: list[ScheduledRequest], min_tokens: int | None) -> None:
    """The baseline: every array from the Python lists, the plan from scratch, a copy per field."""
    ids, positions, slots, seq_lens = [], [], [], []
    for s in scheduled:
        r, lo = s.request, s.request.num_computed_tokens
        ids.append(r.token_ids(lo, lo + 1)[0])
        positions.append(lo)
        slots.append(r.block_ids[lo // BLOCK] * BLOCK + lo % BLOCK)
        seq_lens.append(lo + 1)
    tables = np.zeros((len(scheduled), max(len(s.request.block_ids) for s in scheduled)), dtype=np.int32)
    for row, s in zip(tables, scheduled):
        row[:len(s.request.block_ids)] = s.request.block_ids
    if min_tokens is not None:
        plan_shared_prefixes([s.request.block_ids for s in scheduled], seq_lens, BLOCK)
    for values in (ids, positions, slots, seq_lens, list(range(len(scheduled) + 1)), list(range(len(scheduled)))):
        torch.tensor(values)
    torch.from_numpy(tables)


def time_steps(args, build) -> list[float]:
    scheduled, next_block = make_batch(args.batch, args.prefix, args.question_tokens)
    gc.collect()
    seconds = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        build(scheduled)
        seconds.append(time.perf_counter() - t0)
        advance(scheduled, next_block)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prefix", type=int, default=16384, help="shared prefix tokens (a multiple of 16)")
    ap.add_argument("--question-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.prefix % BLOCK or args.batch < 2 or args.steps < 2:
        raise SystemExit(f"--prefix a multiple of {BLOCK}, --batch >= 2 and --steps >= 2, please")
    out = out_dir(args.out, "step_inputs")
    cpu = torch.device("cpu")
    cache = PlanCache()
    cases = [  # (name, the baseline's planning threshold, our call)
        ("no plan", None, lambda s: build_model_input(s, BLOCK, cpu, None)),
        ("plan every step", 0, lambda s: build_model_input(s, BLOCK, cpu, 0)),
        ("plan, PlanCache", 0, lambda s: build_model_input(s, BLOCK, cpu, 0, cache)),
    ]
    rows = []
    for name, threshold, ours in track(cases, description="cases"):
        base = time_steps(args, lambda s: rebuild(s, threshold))
        mine = time_steps(args, ours)
        rows.append({"case": name, "baseline_ms": 1e3 * statistics.median(base[1:]),
                     "ms": 1e3 * statistics.median(mine[1:]), "first_ms": 1e3 * mine[0]})
    report(rows, args, out, machine_info(cpu))


def report(rows: list[dict], args, out: Path, info) -> None:
    table = Table(title=f"build_model_input, {args.batch} x {args.prefix}-token shared prefix, "
                        f"median of steps 2..{args.steps} (host, {info.host})")
    for col in ("case", "rebuild ms", "incremental ms", "speedup", "first step ms"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["case"], f"{r['baseline_ms']:.2f}", f"{r['ms']:.2f}", f"{r['baseline_ms'] / r['ms']:.1f}x",
                      f"{r['first_ms']:.2f}")
    Console().print(table)
    write_json(out / "step_inputs.json", {"args": vars(args), "machine": info.__dict__, "rows": rows,
                                          "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["baseline_ms"] for r in rows], 0.4, label="rebuilt every step")
    ax.bar(x + 0.2, [r["ms"] for r in rows], 0.4, label="incremental (engine)")
    ax.set_xticks(x, [r["case"] for r in rows])
    ax.set_ylabel("host ms per step")
    ax.set_title(f"step inputs, {args.batch} x {args.prefix // 1024}K shared prefix")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "step_inputs.png", dpi=120)


if __name__ == "__main__":
    main()
