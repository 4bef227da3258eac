"""Small helpers shared by the benchmark scripts: timing, the copy-bandwidth ceiling, output files.

  median_seconds(fn)         median time of fn() (CUDA: triton.testing.do_bench, L2 flushed)
  graph_seconds(fn)          the same for a CUDA-graph replay of fn (no launch gaps)
  copy_bandwidth(device)     device-to-device copy rate, bytes read + written per second
  machine_info(device)       what ran where and when, for every result file
  cpu_model()                the host CPU's model name (/proc/cpuinfo, else platform's)
  wall_median(fn, device, reps)  median wall time of fn() after warm-up calls (synchronized on CUDA)
  out_dir(arg, name)         --out, else $OUT, else out/<name>
  write_json(path, obj)      dataclasses and tuples made JSON
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch


@dataclass(frozen=True)
class MachineInfo:
    """The device and software a benchmark ran on, with the UTC time it started."""

    device: str
    multiprocessors: int
    torch: str
    triton: str
    host: str
    date: str


def machine_info(device: torch.device) -> MachineInfo:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name, sms = props.name, props.multi_processor_count
    else:
        name, sms = platform.processor() or platform.machine(), os.cpu_count() or 1
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    return MachineInfo(name, sms, torch.__version__, triton_version, platform.node(),
                       datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def median_seconds(fn: Callable[[], object], device: torch.device, warmup_ms: int = 25,
                   rep_ms: int = 100) -> float:
    """Median seconds per call; on CUDA timed with events by triton's do_bench (L2 flushed between calls)."""
    if device.type == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") / 1e3
    fn()
    times = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while time.perf_counter() < deadline or len(times) < 3:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def graph_seconds(fn: Callable[[], object], device: torch.device, **timing) -> float:
    """Median seconds of replaying a CUDA graph of fn (fn is run once first to compile and warm up)."""
    if device.type != "cuda":
        return median_seconds(fn, device, **timing)
    fn()
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_seconds(graph.replay, device, **timing)


def copy_bandwidth(device: torch.device, nbytes: int = 2 << 30) -> float:
    """Bytes per second of a large device-to-device copy, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device)  # noqa: F821 (ruff: the later del)
    del src, dst
    return 2 * nbytes / seconds


def out_dir(arg: str | None, name: str) -> Path:
    path = Path(arg or os.environ.get("OUT") or Path("out") / name)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, obj: object) -> None:
    def plain(o: object) -> object:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return {f.name: plain(getattr(o, f.name)) for f in dataclasses.fields(o)}
        if isinstance(o, (list, tuple)):
            return [plain(x) for x in o]
        if isinstance(o, dict):
            return {str(k): plain(v) for k, v in o.items()}
        return o
    path.write_text(json.dumps(plain(obj), indent=2) + "\n")


def cpu_model() -> str:
    """The host CPU's model name from /proc/cpuinfo, else what ``platform`` says."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def wall_median(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median wall seconds of ``reps`` calls of fn() after ``warmup`` untimed ones, each call
    synchronized on CUDA before and after (whole host + device time, the L2 not flushed)."""
    times = [wall_seconds(fn, device) for _ in range(warmup + reps)]
    return statistics.median(times[warmup:])


def wall_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of fn(), synchronized on CUDA before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
