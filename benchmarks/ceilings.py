"""Bandwidth ceilings, measured in the run that compares against them.

    PYTHONPATH=. python -m benchmarks.ceilings --out out/ceilings     # every method and size

copy:  a device-to-device copy, bytes read + bytes written per second (``common.copy_bandwidth``).
read:  a kernel that only reads: the best over methods and sizes of torch.sum and (on CUDA, or
       under TRITON_INTERPRET=1) a grid-stride Triton reduction, bytes read per second.
Kernels that mostly read (decode attention reads K/V, a decode step reads the weights) beat the
copy figure, so a fraction of the copy rate overstates how close they are to the memory roof;
benchmarks report both. The sizes are far past the L2 (CUDA: 1 to 16 GiB, timed by
triton's do_bench, which flushes the L2 between calls). Each Triton sum is checked against
torch.sum, so a kernel that skipped its loads could not set the ceiling.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from benchmarks.common import copy_bandwidth, median_seconds

MIB = 1 << 20
CUDA_SIZES = (1024 * MIB, 4096 * MIB, 16384 * MIB)
CPU_SIZES = (8 * MIB, 32 * MIB)
# (elements per load, loads in flight per iteration, warps, programs per SM): a thread holds 4 float32
# (one 16-byte load) per element group, so (4096, 2, 8, 4) is 8 x 16-byte loads in flight per thread
TRITON_CONFIGS = ((4096, 1, 8, 4), (4096, 2, 8, 4), (2048, 4, 4, 8), (8192, 2, 16, 2))


@dataclass(frozen=True)
class Reading:
    """One timed kernel: ``nbytes`` moved (a copy counts read + written) in ``seconds``."""

    method: str
    nbytes: int
    seconds: float

    @property
    def bytes_per_s(self) -> float:
        return self.nbytes / self.seconds


@dataclass(frozen=True)
class Ceilings:
    """The copy and read-only rates of one device, with every reading behind the read figure."""

    copy_bps: float
    read_bps: float
    read_method: str
    readings: tuple[Reading, ...]

    def record(self) -> dict[str, object]:
        """The JSON form: rates plus each reading's GB/s."""
        return {"copy_bytes_per_s": self.copy_bps, "read_bytes_per_s": self.read_bps, "read_method": self.read_method,
                "readings": [{"method": r.method, "nbytes": r.nbytes, "seconds": r.seconds,
                              "gbps": r.bytes_per_s / 1e9} for r in self.readings]}


@triton.jit
def _sum_kernel(x_ptr, partial_ptr, n_full, n, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    """Program p reads tiles of UNROLL x BLOCK elements, p-th, then striding by the whole grid (int64
    offsets: sizes past 8 GiB), unmasked over the ``n_full`` elements of whole tiles, then the tail
    masked; its float32 sum goes to partial[p]."""
    pid = tl.program_id(0).to(tl.int64)
    tile = UNROLL * BLOCK
    step = tl.num_programs(0).to(tl.int64) * tile
    lanes = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(pid * tile, n_full, step):
        for u in tl.static_range(UNROLL):
            acc += tl.load(x_ptr + start + u * BLOCK + lanes)
    for start in range(n_full + pid * BLOCK, n, tl.num_programs(0).to(tl.int64) * BLOCK):
        offs = start + lanes
        acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


def read_kernel(x: torch.Tensor, partial: torch.Tensor, block: int, unroll: int, warps: int) -> None:
    """Launch ``len(partial)`` programs that read all of the 1-D float32 ``x``, one partial sum each."""
    tile = block * unroll
    n_full = x.numel() // tile * tile
    _sum_kernel[(partial.numel(),)](x, partial, n_full, x.numel(), BLOCK=block, UNROLL=unroll, num_warps=warps)


def _units(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return os.cpu_count() or 1


def _triton_runs(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def read_readings(device: torch.device, sizes: tuple[int, ...]) -> list[Reading]:
    """torch.sum and each Triton config over the first ``size`` bytes of one float32 buffer."""
    data = torch.empty(max(sizes) // 4, dtype=torch.float32, device=device).uniform_()
    readings = []
    for size in sizes:
        x = data[: size // 4]
        readings.append(Reading("torch.sum", size, median_seconds(lambda: x.sum(), device)))
        if not _triton_runs(device):
            continue
        for block, unroll, warps, per_unit in TRITON_CONFIGS:
            partial = torch.empty(per_unit * _units(device), dtype=torch.float32, device=device)
            read_kernel(x, partial, block, unroll, warps)
            got, want = partial.sum().item(), x.sum(dtype=torch.float64).item()
            if abs(got - want) > 1e-3 * abs(want):
                raise RuntimeError(f"triton sum of {size} bytes is {got}, torch.sum {want}")
            seconds = median_seconds(lambda: read_kernel(x, partial, block, unroll, warps), device)  # the kernel alone
            readings.append(Reading(f"triton sum {block}x{unroll} {warps}w {per_unit}/SM", size, seconds))
    del data
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return readings


def measure(device: torch.device, sizes: tuple[int, ...] | None = None, copy_bytes: int | None = None) -> Ceilings:
    """Copy and read-only ceilings of ``device`` (small sizes on the CPU: a smoke run, not a figure)."""
    sizes = sizes or (CUDA_SIZES if device.type == "cuda" else CPU_SIZES)
    copy_bytes = copy_bytes or (2 << 30 if device.type == "cuda" else max(sizes))
    copy = copy_bandwidth(device, copy_bytes)
    readings = [Reading("copy", 2 * copy_bytes, 2 * copy_bytes / copy), *read_readings(device, sizes)]
    best = max((r for r in readings if r.method != "copy"), key=lambda r: r.bytes_per_s)
    return Ceilings(copy, best.bytes_per_s, f"{best.method}, {best.nbytes / MIB:g} MiB", tuple(readings))


def describe(c: Ceilings) -> str:
    """One line for a benchmark's header."""
    return (f"copy {c.copy_bps / 1e9:.0f} GB/s (read + write), read-only {c.read_bps / 1e9:.0f} GB/s "
            f"({c.read_method}; {c.read_bps / c.copy_bps:.2f}x copy)")


def main() -> None:
    from benchmarks.common import machine_info, out_dir, write_json
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes-mib", type=float, nargs="+", default=None, help="read sizes (default: by device)")
    p.add_argument("--out", default=None, help="output folder (default $OUT, else out/ceilings)")
    a = p.parse_args()
    device = torch.device(a.device)
    sizes = tuple(int(s * MIB) // 4 * 4 for s in a.sizes_mib) if a.sizes_mib else None
    c = measure(device, sizes)
    info = machine_info(device)
    for r in c.readings:
        print(f"{r.method:32s} {r.nbytes / MIB:8g} MiB {r.seconds * 1e6:10.1f} µs {r.bytes_per_s / 1e9:8.0f} GB/s")
    print(f"{info.device}: {describe(c)}")
    write_json(out_dir(a.out, "ceilings") / "ceilings.json", {"machine": info, **c.record()})


if __name__ == "__main__":
    main()
