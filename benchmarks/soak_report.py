"""benchmarks/soak.py's results: per-window figures, memory slopes, the summary, files and the plot.

Times in the report are seconds since the soak's load started (``t0``); a window's requests
are those that ended in it (lost ones: those that started in it).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
from pathlib import Path

import numpy as np

OUTCOMES = ("ok", "503", "unavailable", "error", "lost")
MIN_SEGMENT_S = 60.0  # a replica's memory slope needs one incarnation at least this long


def _pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


def relative(records: list[dict], t0: float) -> list[dict]:
    return [{**r, "start": r["start"] - t0, "end": None if r["end"] is None else r["end"] - t0} for r in records]


def windows(records: list[dict], samples: list[dict], span_s: float, window_s: float) -> list[dict]:
    rows = []
    for k in range(math.ceil(span_s / window_s)):
        lo, hi = k * window_s, (k + 1) * window_s
        ended = [r for r in records if r["end"] is not None and lo <= r["end"] < hi]
        lost = [r for r in records if r["end"] is None and lo <= r["start"] < hi]
        ok = [r for r in ended if r["outcome"] == "ok"]
        inside = [s for s in samples if lo <= s["t"] < hi]
        rows.append({"t": lo, "ended": len(ended) + len(lost), "ok": len(ok),
                     "error_rate": (len(ended) + len(lost) - len(ok)) / max(1, len(ended) + len(lost)),
                     "ok_req_s": len(ok) / window_s, "tok_s": sum(r["tokens"] for r in ok) / window_s,
                     "ttft_p50": _pct([r["ttft"] for r in ok], 50), "ttft_p99": _pct([r["ttft"] for r in ok], 99),
                     "latency_p50": _pct([r["end"] - r["start"] for r in ok], 50),
                     "latency_p99": _pct([r["end"] - r["start"] for r in ok], 99),
                     "rss_mb": inside[-1]["rss_mb"] if inside else None})
    return rows


def _slope(points: list[tuple[float, float]]) -> float | None:
    """MB per minute of a least-squares line through (seconds, MB)."""
    if len(points) < 3 or points[-1][0] - points[0][0] < MIN_SEGMENT_S:
        return None
    t, mb = np.array(points).T
    return float(np.polyfit(t / 60, mb, 1)[0])


def memory(samples: list[dict], duration_s: float) -> dict:
    """Per process: first and last RSS and the slope over the soak; a replica's over its longest
    incarnation (a restarted one starts afresh)."""
    inside = [s for s in samples if 0 <= s["t"] <= duration_s]
    result = {}
    for name in sorted({n for s in inside for n in s["rss_mb"]}):
        segments: dict[object, list[tuple[float, float]]] = {}
        for s in inside:
            if s["rss_mb"].get(name) is not None:
                segments.setdefault(s["pids"].get(name, "-"), []).append((s["t"], s["rss_mb"][name]))
        if not segments:
            continue
        longest = max(segments.values(), key=lambda p: p[-1][0] - p[0][0])
        half = len(longest) // 2  # a slope that falls from one half to the next is warm-up, a steady one a leak
        result[name] = {"first_mb": longest[0][1], "last_mb": longest[-1][1], "span_s": longest[-1][0] - longest[0][0],
                        "incarnations": len(segments), "slope_mb_per_min": _slope(longest),
                        "halves_mb_per_min": (_slope(longest[:half]), _slope(longest[half:]))}
    return result


def recovery(fault: dict, samples: list[dict]) -> dict:
    """Seconds from a fault until its target showed not ready on /health, ready again, and
    running as a new process (a Redis restarted within a second never shows down)."""
    down = back = new_pid = None
    for s in samples:
        if fault["t"] is None or s["t"] < fault["t"]:
            continue
        t, state, pid = s["t"] - fault["t"], s["states"].get(fault["target"]), s["pids"].get(fault["target"])
        if new_pid is None and pid is not None and pid != fault["pid"]:
            new_pid = t
        if down is None and state not in ("ready", None):
            down = t
        elif down is not None and back is None and state == "ready":
            back = t
    return {"down_after_s": down, "ready_after_s": back, "new_process_after_s": new_pid}


def summary(records: list[dict], rows: list[dict], duration_s: float) -> dict:
    counts = {o: sum(r["outcome"] == o for r in records) for o in OUTCOMES}
    ok = [r for r in records if r["outcome"] == "ok"]
    worst = lambda key: max((w[key] for w in rows if w[key] is not None), default=None)  # noqa: E731
    return {"requests": len(records), "outcomes": counts, "lost": counts["lost"],
            "error_rate": 1 - counts["ok"] / max(1, len(records)), "ok_req_s": len(ok) / duration_s,
            "tok_s": sum(r["tokens"] for r in ok) / duration_s,
            "ttft_p50": _pct([r["ttft"] for r in ok], 50), "ttft_p99": _pct([r["ttft"] for r in ok], 99),
            "latency_p50": _pct([r["end"] - r["start"] for r in ok], 50),
            "latency_p99": _pct([r["end"] - r["start"] for r in ok], 99),
            "worst_window_ttft_p99": worst("ttft_p99"), "worst_window_latency_p99": worst("latency_p99"),
            "worst_window_error_rate": worst("error_rate")}


def report_of(args, run: dict, samples: list[dict], bring_up_s: float) -> dict:
    import torch

    from benchmarks.common import machine_info
    t0, duration = run["t0"], run["duration_s"]
    records = relative(run["records"], t0)
    samples = [{**s, "t": s["t"] - t0} for s in samples]
    faults = [dataclasses.asdict(f) for f in run["faults"]]
    for f in faults:
        f.update(recovery(f, samples))
    rows = windows(records, samples, max(duration, run["drained_s"]), args.window_s)
    machine = dataclasses.asdict(machine_info(torch.device("cuda" if args.gpu else "cpu")))
    return {"args": vars(args), "machine": machine,
            "bring_up_s": bring_up_s, "capacity_req_s": run["capacity_req_s"], "ramp": run["ramp"],
            "rate_req_s": run["rate_req_s"], "duration_s": duration, "drained_s": run["drained_s"],
            "healthy_after_drain_s": run["healthy_after_drain_s"], "faults": faults, "leaks": run["leaks"],
            "summary": summary(records, rows, duration), "memory": memory(samples, duration),
            "windows": rows, "samples": samples, "records": records}


def write(report: dict, out: Path) -> None:
    """summary.json: everything but the requests and samples; soak.json.gz: everything."""
    (out / "summary.json").write_text(json.dumps({k: v for k, v in report.items() if k not in ("records", "samples")},
                                                 indent=2) + "\n")
    with gzip.open(out / "soak.json.gz", "wt") as f:
        json.dump(report, f, separators=(",", ":"))


def summary_lines(report: dict) -> list[str]:
    s, ms = report["summary"], lambda x: "-" if x is None else f"{1e3 * x:.0f} ms"
    lines = [f"capacity {report['capacity_req_s']:.2f} req/s; soak at {report['rate_req_s']:.2f} req/s for "
             f"{report['duration_s']:g} s: {s['requests']} requests, "
             + ", ".join(f"{k} {v}" for k, v in s["outcomes"].items()),
             f"lost {s['lost']} (goal 0); error rate {100 * s['error_rate']:.2f}% (worst window "
             f"{100 * (s['worst_window_error_rate'] or 0):.1f}%); {s['ok_req_s']:.2f} ok req/s, {s['tok_s']:.0f} tok/s",
             f"TTFT p50/p99 {ms(s['ttft_p50'])}/{ms(s['ttft_p99'])} "
             f"(worst window p99 {ms(s['worst_window_ttft_p99'])}); "
             f"latency p50/p99 {ms(s['latency_p50'])}/{ms(s['latency_p99'])} "
             f"(worst window p99 {ms(s['worst_window_latency_p99'])})"]
    for f in report["faults"]:
        secs = lambda x: "-" if x is None else f"{x:.1f} s"  # noqa: E731
        lines.append(f"fault {f['action']}:{f['target']} at {f['t']:.0f} s (pid {f['pid']}{', ' if f['note'] else ''}"
                     f"{f['note']}): not ready on /health after {secs(f['down_after_s'])}, ready again after "
                     f"{secs(f['ready_after_s'])}, a new process after {secs(f['new_process_after_s'])}")
    slope = lambda x: "-" if x is None else f"{x:+.2f}"  # noqa: E731
    for name, m in report["memory"].items():
        lines.append(f"RSS {name}: {m['first_mb']:.0f} -> {m['last_mb']:.0f} MB over {m['span_s']:.0f} s "
                     f"({m['incarnations']} incarnation(s), the longest), slope {slope(m['slope_mb_per_min'])} "
                     f"MB/min ({' then '.join(map(slope, m['halves_mb_per_min']))} over its halves)")
    leaks = report["leaks"]
    lines.append(f"leaks: check {leaks['check']}; held blocks {leaks['held_blocks']}; Redis leases "
                 f"{leaks['redis_leases']}")
    return lines


def plot(report: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows, samples = report["windows"], report["samples"]
    mid = [w["t"] + report["args"]["window_s"] / 2 for w in rows]
    fig, (lat, err, mem) = plt.subplots(3, 1, figsize=(12, 10), sharex=True)
    for key, style in (("ttft_p99", "o-"), ("latency_p99", "s-"), ("latency_p50", ".:")):
        lat.plot(mid, [np.nan if w[key] is None else w[key] for w in rows], style, label=key.replace("_", " "))
    args = report["args"]
    lat.set(yscale="log", ylabel="seconds", title=f"soak at {report['rate_req_s']:.2f} req/s ({args['load']:.0%} "
            f"of {report['capacity_req_s']:.2f}), {args['window_s']:g} s windows")
    err.bar(mid, [100 * w["error_rate"] for w in rows], width=report["args"]["window_s"] * 0.8, color="tab:red",
            alpha=0.6, label="error rate %")
    err.set(ylabel="error rate (%)")
    ok = err.twinx()
    ok.plot(mid, [w["ok_req_s"] for w in rows], "k.-", label="ok req/s")
    ok.set(ylabel="ok req/s")
    ok.legend(loc="upper right", fontsize=8)
    soaking = [s for s in samples if s["t"] >= 0]
    for name, _ in report["memory"].items():  # change since the soak started, so that a slope shows
        base = next(s["rss_mb"][name] for s in soaking if s["rss_mb"].get(name) is not None)
        mem.plot([s["t"] for s in soaking], [np.nan if s["rss_mb"].get(name) is None else s["rss_mb"][name] - base
                                             for s in soaking], label=f"{name} (from {base:.0f} MB)")
    mem.set(xlabel="seconds into the soak", ylabel="RSS change (MB)", xlim=(0, max(mid + [1])))
    for ax in (lat, err, mem):
        for f in report["faults"]:
            if f["t"] is not None:
                ax.axvline(f["t"], color="gray", ls="--", lw=1)
        ax.legend(loc="lower left" if ax is lat else "upper left", fontsize=8)
    for f in report["faults"]:
        if f["t"] is not None:
            lat.annotate(f"{f['action']} {f['target']}", (f["t"], 1), xycoords=("data", "axes fraction"),
                         rotation=90, va="top", ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
