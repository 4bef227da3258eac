"""Soak (issue 14): a disaggregated cluster behind the real router at ~80% of its measured
capacity for N minutes, with faults injected on a schedule.

    PYTHONPATH=. python -m benchmarks.soak --minutes 5               # CPU: tiny model, 2P+2D
    PYTHONPATH=. python -m benchmarks.soak --gpu --minutes 4         # Llama-3-8B shapes, a GPU per replica

The cluster and its router run in this process as `tierserve serve --config` runs them (Cluster +
Router on a loop thread: tests/faults' harness, whose helpers find pids, read /health and check
for leaks). The load comes from a separate process streaming completions over HTTP (Poisson
arrivals of token-id prompts, tests/faults' `stream_one`).

1. Capacity: steps of --ramp-step-s at rising rates; a step is sustainable when every request
   finishes with p99 TTFT <= --ttft-bound and p99 time per output token <= --tpot-bound; one
   more step between the last good and the first bad rate. Capacity = the best good rate.
2. Soak: --load x capacity for --minutes; each of --faults once (spread over the first 80%,
   so the last one has time to recover), or cycled every --every seconds. A fault is
   kill:<replica|redis> (SIGKILL) or hang:<replica|redis> (SIGSTOP, --hang-s, SIGCONT).
3. Drain: every replica ready and Redis up again; then no KV block held on any replica and
   no Redis lease (tests/faults' check).

In a checkout that others edit while it runs, run it from a snapshot (`git archive HEAD | tar x
-C DIR`): a replica that Ray restarts imports the code as it is at that moment.

Per request: start, end, outcome (ok, 503 = a 503 with Retry-After before any token,
unavailable = an 'unavailable' error event after some tokens, error = anything else, lost =
no end within --deadline), TTFT, tokens. Per --window-s window: throughput, error rate, p50/p99
TTFT and latency; every second: /health states and the RSS of the router process, each replica
and redis-server. Writes under --out ($OUT, or out/soak) soak.json.gz (all of it), summary.json
(all but the requests and samples) and soak.png; prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import out_dir
from benchmarks.workload import TimedRequest, WorkloadSpec, poisson_workload
from tests.faults.conftest import REQUEST_TIMEOUT_S, Faulty, Outcome, stream_one

SAMPLE_S = 1.0
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


# -- the load-generating process ------------------------------------------------------------

def _client_main(base_url: str, model: str, deadline_s: float, jobs, results) -> None:
    """Runs each list of requests it is sent (their start time first, then their records)."""
    while (requests := jobs.get()) is not None:
        t0 = time.time()
        results.put(t0)
        results.put(asyncio.run(_phase(base_url, model, requests, t0, deadline_s)))


async def _phase(base_url: str, model: str, requests: list[TimedRequest], t0: float, deadline_s: float
                 ) -> list[dict]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=deadline_s, limits=limits) as http:
        return list(await asyncio.gather(*(_request(http, model, r, t0, deadline_s) for r in requests)))


async def _request(http: httpx.AsyncClient, model: str, req: TimedRequest, t0: float, deadline_s: float) -> dict:
    await asyncio.sleep(max(0.0, t0 + req.arrival_s - time.time()))
    start, first, first_at = time.time(), asyncio.Event(), []
    watch = asyncio.create_task(first.wait())
    watch.add_done_callback(lambda task: task.cancelled() or first_at.append(time.time()))
    record = {"start": start, "end": None, "status": None, "retry_after": None, "tokens": 0,
              "max_tokens": req.max_tokens, "prompt_tokens": len(req.prompt_token_ids), "message": ""}
    try:
        o = await asyncio.wait_for(stream_one(http, model, req.prompt_token_ids, req.max_tokens, first), deadline_s)
        record.update(outcome=outcome_of(o), status=o.status, retry_after=o.retry_after, tokens=o.tokens,
                      message=o.message[:200] if o.kind != "done" else "")
    except TimeoutError:
        record.update(outcome="lost", message=f"no end within {deadline_s:g} s")
    except Exception as e:  # noqa: BLE001 — a broken connection is an outcome like any other
        record.update(outcome="error", message=f"{type(e).__name__}: {e}"[:200])
    finally:
        watch.cancel()
    if record["outcome"] != "lost":
        record["end"] = time.time()
    record["ttft"] = first_at[0] - start if first_at else None
    return record


def outcome_of(o: Outcome) -> str:
    if o.kind == "done":
        return "ok"
    if o.kind == "unavailable" and o.tokens == 0:
        return "503" if o.status == 503 and o.retry_after is not None else "error"
    return "unavailable" if o.kind == "unavailable" else "error"


class LoadClient:
    """The load generator in its own process, so that this (the router's) process's memory and
    CPU are the router's."""

    def __init__(self, base_url: str, model: str, deadline_s: float):
        ctx = mp.get_context("spawn")
        self.jobs, self.results, self.deadline_s = ctx.Queue(), ctx.Queue(), deadline_s
        self.proc = ctx.Process(target=_client_main, args=(base_url, model, deadline_s, self.jobs, self.results),
                                name="soak-load", daemon=True)
        self.proc.start()

    def start(self, requests: list[TimedRequest]) -> float:
        self.jobs.put(requests)
        self._span = max((r.arrival_s for r in requests), default=0.0)
        return self.results.get(timeout=300)

    def finish(self) -> list[dict]:
        return self.results.get(timeout=self._span + self.deadline_s + 300)

    def run(self, requests: list[TimedRequest]) -> tuple[float, list[dict]]:
        return self.start(requests), self.finish()

    def close(self) -> None:
        self.jobs.put(None)
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()


# -- what the cluster does meanwhile: health and memory every second --------------------------

def rss_mb(pid: int | None) -> float | None:
    """Resident memory of a live process (None: gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, TypeError, ValueError):
        return None
    return pages * PAGE_MB or None


class Sampler(threading.Thread):
    """Every SAMPLE_S: replica states and Redis's from /health, and the RSS of the router (this
    process), each replica (its current pid, looked up again once it is ready after a restart)
    and redis-server."""

    def __init__(self, faulty: Faulty):
        super().__init__(name="soak-sampler", daemon=True)
        self.faulty, self.samples, self.pids = faulty, [], {}
        self.workers = [r.worker_id for r in faulty.cluster.pools.all]
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(SAMPLE_S):
            self.samples.append(self.sample())

    def sample(self) -> dict:
        t = time.time()
        try:
            code, body = self.faulty.health()
            states = {w: s for pool in body["pools"].values() for w, s in pool["replicas"].items()}
            states["redis"] = body["components"].get("redis")
        except Exception as e:  # noqa: BLE001 — a router too busy to answer is worth recording
            code, states = None, {"error": f"{type(e).__name__}: {e}"}
        redis = self.faulty.cluster.redis
        self.pids["redis"] = redis.proc.pid if redis and redis.proc else None  # its supervisor restarts it
        rss = {"router": rss_mb(os.getpid()), "redis": rss_mb(self.pids["redis"])}
        rss.update({w: rss_mb(self.pid(w, states.get(w))) for w in self.workers})
        return {"t": t, "health": code, "states": states, "rss_mb": rss, "pids": dict(self.pids)}

    def pid(self, worker_id: str, state: str | None) -> int | None:
        pid = self.pids.get(worker_id)
        if rss_mb(pid) is None and state == "ready":
            try:
                pid = self.faulty.pid(worker_id)
            except Exception:  # noqa: BLE001 — restarting again: next time
                pid = None
            self.pids[worker_id] = pid
        return pid


# -- faults -------------------------------------------------------------------------------------

@dataclass
class Fault:
    at_s: float          # planned, seconds into the soak
    action: str          # kill | hang
    target: str          # a replica's worker id, or redis
    t: float | None = None  # when it was injected (seconds into the soak)
    pid: int | None = None
    note: str = ""


def schedule(specs: list[str], duration_s: float, every_s: float | None) -> list[Fault]:
    """Each spec once, spread over the first 80% of the soak; or cycled every ``every_s``."""
    if every_s:
        times = np.arange(every_s, 0.8 * duration_s, every_s)
    else:
        times = 0.8 * duration_s * (np.arange(len(specs)) + 0.5) / len(specs)
    return [Fault(float(t), *specs[i % len(specs)].split(":", 1)) for i, t in enumerate(times)]


def inject(faulty: Faulty, sampler: Sampler, fault: Fault, hang_s: float) -> None:
    pid = faulty.cluster.redis.proc.pid if fault.target == "redis" else sampler.pids.get(fault.target)
    if rss_mb(pid) is None:
        fault.note = "skipped: not up"
        return
    fault.pid = pid
    if fault.action == "kill":
        os.kill(pid, signal.SIGKILL)
        return
    os.kill(pid, signal.SIGSTOP)
    time.sleep(hang_s)
    try:
        os.kill(pid, signal.SIGCONT)
        fault.note = f"stopped for {hang_s:g} s"
    except ProcessLookupError:
        fault.note = f"stopped, and gone before the SIGCONT {hang_s:g} s later"


# -- capacity -------------------------------------------------------------------------------------

def workload(args, rate: float, duration_s: float, seed: int) -> list[TimedRequest]:
    return poisson_workload(WorkloadSpec(rate=rate, duration_s=duration_s, prompt_mean=args.prompt_mean,
                                         output_mean=args.output_mean, max_prompt=args.max_prompt,
                                         max_output=args.max_output, seed=seed))


def step_stats(records: list[dict], rate: float, args) -> dict:
    ok = [r for r in records if r["outcome"] == "ok"]
    ttft = [r["ttft"] for r in ok]
    tpot = [(r["end"] - r["start"] - r["ttft"]) / (r["tokens"] - 1) for r in ok if r["tokens"] > 1]
    p99 = lambda xs: float(np.percentile(xs, 99)) if xs else None  # noqa: E731
    stats = {"rate": rate, "requests": len(records), "ok": len(ok),
             "ttft_p50": float(np.median(ttft)) if ttft else None, "ttft_p99": p99(ttft), "tpot_p99": p99(tpot),
             "latency_p99": p99([r["end"] - r["start"] for r in ok])}
    stats["sustainable"] = bool(ok and len(ok) == len(records) and stats["ttft_p99"] <= args.ttft_bound
                                and (stats["tpot_p99"] or 0) <= args.tpot_bound)
    return stats


def measure_capacity(client: LoadClient, args) -> tuple[float, list[dict]]:
    """Rates rising by --ramp-factor until a step is not sustainable, then one step between."""
    steps, good, bad, rate = [], None, None, args.ramp_start
    while rate <= args.ramp_max and bad is None:
        steps.append(step_stats(client.run(workload(args, rate, args.ramp_step_s, len(steps)))[1], rate, args))
        print(_step_line(steps[-1]), flush=True)
        good, bad = (rate, bad) if steps[-1]["sustainable"] else (good, rate)
        rate *= args.ramp_factor
    if good is not None and bad is not None:
        mid = (good * bad) ** 0.5
        steps.append(step_stats(client.run(workload(args, mid, args.ramp_step_s, len(steps)))[1], mid, args))
        print(_step_line(steps[-1]), flush=True)
        good = mid if steps[-1]["sustainable"] else good
    if good is None:
        raise SystemExit(f"not even {args.ramp_start:g} req/s was sustainable: lower --ramp-start or relax the bounds")
    return good, steps


def _step_line(s: dict) -> str:
    ms = lambda x: f"{1e3 * x:.0f}" if x is not None else "-"  # noqa: E731
    return (f"ramp {s['rate']:6.2f} req/s: {s['ok']}/{s['requests']} ok, TTFT p50/p99 {ms(s['ttft_p50'])}/"
            f"{ms(s['ttft_p99'])} ms, TPOT p99 {ms(s['tpot_p99'])} ms -> "
            + ("sustainable" if s["sustainable"] else "not sustainable"))


# -- the run --------------------------------------------------------------------------------------

def cluster_fields(args) -> dict:
    """Faulty's config fields: --replicas prefill and as many decode replicas."""
    hardware = {"num_gpus": 1, "num_cpus": 2} if args.gpu else {"num_cpus": 0.25}
    pools = {role: {"replicas": args.replicas, "hardware": hardware} for role in ("prefill", "decode")}
    fields = {"pools": pools, "name": "soak", "max_model_len": args.max_prompt + args.max_output + 16,
              "router": {"policy": args.policy}}
    if args.gpu:
        pools["decode"]["engine"] = {"max_num_seqs": 128}
        fields.update(load_format="dummy", dtype="bfloat16")
    return fields


def wait_healthy(faulty: Faulty, timeout_s: float) -> float | None:
    """Seconds until /health says ok (every replica ready, Redis up); None if it did not."""
    start = time.time()
    while time.time() - start < timeout_s:
        try:
            code, body = faulty.health()
            if code == 200 and body["status"] == "ok":
                return time.time() - start
        except Exception:  # noqa: BLE001 — busy: ask again
            pass
        time.sleep(0.5)
    return None


def leak_check(faulty: Faulty) -> dict:
    """tests/faults' check (no replica holds a block, handoff or request; no Redis lease), and
    what it found."""
    from kvstore.store import KVStore
    try:
        faulty.assert_all_free(timeout_s=60)
        verdict = "passed"
    except AssertionError as e:
        verdict = f"failed: {e}"
    held = {r.worker_id: None if r.load is None else r.load.total_blocks - r.load.free_blocks
            for r in faulty.cluster.pools.all}
    store = KVStore.connect(faulty.cluster.kvstore)
    try:
        leases = store.leases.pinned_blocks()
    finally:
        store.close()
    return {"check": verdict, "held_blocks": held, "redis_leases": leases}


def soak(args, faulty: Faulty, sampler: Sampler, client: LoadClient) -> dict:
    client.run(workload(args, 2.0, 3.0, seed=99))  # warm-up: pair groups form
    capacity, ramp = measure_capacity(client, args)
    rate, duration = args.load * capacity, 60 * args.minutes
    faults = schedule(args.faults, duration, args.every)
    print(f"capacity {capacity:.2f} req/s; soaking at {rate:.2f} req/s for {duration:g} s, faults: "
          + ", ".join(f"{f.action}:{f.target}@{f.at_s:.0f}s" for f in faults), flush=True)
    t0 = client.start(workload(args, rate, duration, seed=1000))
    for fault in faults:
        time.sleep(max(0.0, t0 + fault.at_s - time.time()))
        fault.t = time.time() - t0
        inject(faulty, sampler, fault, args.hang_s)
        print(f"{fault.t:6.1f} s: {fault.action} {fault.target} (pid {fault.pid}) {fault.note}", flush=True)
    records = client.finish()
    drained = time.time() - t0
    healthy_s = wait_healthy(faulty, 180)
    return {"capacity_req_s": capacity, "ramp": ramp, "rate_req_s": rate, "duration_s": duration, "t0": t0,
            "drained_s": drained, "healthy_after_drain_s": healthy_s, "faults": faults, "records": records,
            "leaks": leak_check(faulty)}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--gpu", action="store_true", help="Llama-3-8B shapes (random bf16 weights), a GPU per replica")
    ap.add_argument("--replicas", type=int, default=2, help="prefill replicas, and as many decode replicas")
    ap.add_argument("--policy", default="prefix-aware", choices=["prefix-aware", "round-robin"])
    ap.add_argument("--load", type=float, default=0.8, help="soak rate as a fraction of the measured capacity")
    ap.add_argument("--faults", nargs="*", default=["kill:prefill-0", "kill:decode-1", "kill:redis", "hang:decode-0"],
                    help="kill:<worker|redis> (SIGKILL) or hang:<worker|redis> (SIGSTOP for --hang-s)")
    ap.add_argument("--every", type=float, default=None, help="cycle the faults every this many seconds")
    ap.add_argument("--hang-s", type=float, default=15.0, help="how long a hung process stays stopped")
    ap.add_argument("--deadline", type=float, default=REQUEST_TIMEOUT_S, help="a request not ended by then is lost")
    ap.add_argument("--window-s", type=float, default=10.0)
    ap.add_argument("--ramp-start", type=float, default=2.0)
    ap.add_argument("--ramp-factor", type=float, default=1.5)
    ap.add_argument("--ramp-max", type=float, default=200.0)
    ap.add_argument("--ramp-step-s", type=float, default=20.0)
    ap.add_argument("--ttft-bound", type=float, default=1.0, help="p99 TTFT of a sustainable rate (s)")
    ap.add_argument("--tpot-bound", type=float, default=0.05,
                    help="p99 (over requests) of the mean time per output token after the first, at a sustainable rate")
    ap.add_argument("--prompt-mean", type=int, default=None)
    ap.add_argument("--output-mean", type=int, default=None)
    ap.add_argument("--max-prompt", type=int, default=None)
    ap.add_argument("--max-output", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    defaults = ({"prompt_mean": 1024, "output_mean": 128, "max_prompt": 3072, "max_output": 512} if args.gpu else
                {"prompt_mean": 128, "output_mean": 64, "max_prompt": 512, "max_output": 256})
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main() -> None:
    from benchmarks.model_shapes import shape_dir
    from benchmarks.soak_report import plot, report_of, summary_lines, write
    from engine.tiny_model import make_tiny_model
    args = parse_args()
    out = out_dir(args.out, "soak")
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    model = shape_dir("llama-3-8b", root) if args.gpu else make_tiny_model(root / "tiny")
    began = time.time()
    faulty = Faulty(model, **cluster_fields(args))
    bring_up_s = time.time() - began
    print(f"cluster up in {bring_up_s:.0f} s at {faulty.base_url}", flush=True)
    sampler, client = Sampler(faulty), None
    sampler.start()
    try:
        client = LoadClient(faulty.base_url, faulty.model_name, args.deadline)
        run = soak(args, faulty, sampler, client)
    finally:
        sampler.stopped.set()
        sampler.join(10)
        if client is not None:
            client.close()
        faulty.close()
    report = report_of(args, run, sampler.samples, bring_up_s)
    write(report, out)
    plot(report, out / "soak.png")
    print("\n".join(summary_lines(report)))
    print(f"wrote summary.json, soak.json.gz and soak.png in {out}")


if __name__ == "__main__":
    main()
