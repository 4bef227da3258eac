"""The hardware catalog: devices with compute, memory, interconnect, price and power (catalog.yaml)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from simulator.errors import SimInputError
from simulator.files import read_yaml

DEFAULT_CATALOG = Path(__file__).with_name("catalog.yaml")
KINDS = ("gpu", "cpu")
GIB = 1 << 30


@dataclass(frozen=True)
class HardwareSpec:
    """One device kind; efficiencies scale the datasheet peaks to what kernels reach."""

    name: str
    kind: str
    accelerator_type: str | None
    peak_bf16_tflops: float
    memory_gib: float
    memory_bandwidth_gbs: float
    interconnect_gbs: float
    network_gbps: float
    network_latency_us: float
    usd_per_hour: float
    watts: float
    num_cpus: int
    max_devices_per_node: int
    compute_efficiency: float
    memory_efficiency: float
    network_efficiency: float
    iteration_overhead_us: float
    idle_power_fraction: float
    memory_fraction: float
    price_source: str = "not stated"
    allreduce_latency_us: float = 28.0  # a small all-reduce over 8 devices of a node (catalog.yaml)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SimInputError(f"hardware {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("float", "int") and not (isinstance(value, int | float) and math.isfinite(value)
                                                   and value >= 0 and not isinstance(value, bool)):
                raise SimInputError(f"hardware {self.name}: {f.name} must be a number >= 0, got {value!r}")
        for name in ("peak_bf16_tflops", "memory_gib", "memory_bandwidth_gbs", "network_gbps"):
            if getattr(self, name) <= 0:
                raise SimInputError(f"hardware {self.name}: {name} must be > 0")
        for name in ("compute_efficiency", "memory_efficiency", "network_efficiency", "memory_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise SimInputError(f"hardware {self.name}: {name} must be in (0, 1]")

    @property
    def flops(self) -> float:
        """Reachable FLOP/s of one device."""
        return self.peak_bf16_tflops * 1e12 * self.compute_efficiency

    @property
    def memory_bandwidth(self) -> float:
        """Reachable bytes/s of one device's memory."""
        return self.memory_bandwidth_gbs * 1e9 * self.memory_efficiency

    def allreduce_latency_s(self, tp: int) -> float:
        """One small all-reduce over ``tp`` devices: the 8-device time, scaled by tp / 8 (the ring's
        hops grow with the group; an assumption between measurements at one group size)."""
        return self.allreduce_latency_us * 1e-6 * tp / 8

    @property
    def network_bandwidth(self) -> float:
        """Reachable bytes/s of one device's NIC."""
        return self.network_gbps * 1e9 / 8 * self.network_efficiency

    @property
    def memory_bytes(self) -> float:
        """Bytes of one device the engine may use (GiB as the driver reports them)."""
        return self.memory_gib * GIB * self.memory_fraction


@dataclass(frozen=True)
class LinkOverride:
    """A measured or chosen link between two tiers (both directions)."""

    src: str
    dst: str
    gbps: float
    latency_us: float

    def __post_init__(self) -> None:
        if self.gbps <= 0 or self.latency_us < 0:
            raise SimInputError(f"link {self.src}-{self.dst}: gbps must be > 0 and latency_us >= 0")


@dataclass(frozen=True)
class Catalog:
    hardware: dict[str, HardwareSpec]
    links: tuple[LinkOverride, ...] = ()

    def __getitem__(self, name: str) -> HardwareSpec:
        if name not in self.hardware:
            raise SimInputError(f"unknown hardware {name!r}; the catalog has {', '.join(self.hardware)}")
        return self.hardware[name]

    def resolve(self, device: str) -> str:
        """The catalog name for a device: the name itself, or the one entry whose name (before any
        '-') is a word of a driver's device name, e.g. 'NVIDIA H100 80GB HBM3' -> H100,
        'NVIDIA A100-SXM4-80GB' -> A100-80G."""
        if device in self.hardware:
            return device
        words = set(re.split(r"[\s_-]+", device.upper()))
        matches = [n for n in self.hardware if n.split("-")[0].upper() in words]
        if len(matches) != 1:
            raise SimInputError(f"device {device!r} matches {matches or 'no'} catalog entries; "
                                f"name one of {', '.join(self.hardware)} (e.g. --profile FILE:H100)")
        return matches[0]

    def names(self, kind: str | None = None) -> list[str]:
        return [n for n, h in self.hardware.items() if kind is None or h.kind == kind]

    def with_measured_memory(self, name: str, total_bytes: float, free_bytes: float) -> Catalog:
        """``name`` with its memory as measured on the device (as our engine sizes its KV cache): the
        total, of which the engine may use what was free less the (1 - memory_fraction) share it leaves."""
        hw = self[name]
        usable = free_bytes - total_bytes * (1 - hw.memory_fraction)
        if not 0 < usable <= total_bytes:
            raise SimInputError(f"{name}: measured memory leaves nothing usable (total {total_bytes:.4g} B, "
                                f"free {free_bytes:.4g} B, memory_fraction {hw.memory_fraction})")
        spec = replace(hw, memory_gib=total_bytes / GIB, memory_fraction=usable / total_bytes)
        return replace(self, hardware={**self.hardware, name: spec})

    def with_allreduce(self, name: str, latency_s: float, ranks: int, busbw_bytes_s: float) -> Catalog:
        """``name``'s tensor-parallel all-reduce as nccl-tests measured it on ``ranks`` of its devices."""
        spec = replace(self[name], allreduce_latency_us=latency_s * 1e6 * 8 / ranks,
                       interconnect_gbs=busbw_bytes_s / 1e9)
        return replace(self, hardware={**self.hardware, name: spec})

    def price_sources(self, names: list[str]) -> list[str]:
        """'NAME $X/h: source' for each named device kind, in order, once."""
        return [f"{n} ${self[n].usd_per_hour:g}/h: {self[n].price_source}" for n in dict.fromkeys(names)]


def load_catalog(*extra: str | Path) -> Catalog:
    """The shipped catalog, then each extra file merged over it (field by field, by name)."""
    defaults: dict = {}
    entries: dict[str, dict] = {}
    links: list[dict] = []
    for path in (DEFAULT_CATALOG, *map(Path, extra)):
        data = _read(path)
        defaults.update(data.get("defaults") or {})
        for name, entry in (data.get("hardware") or {}).items():
            if not isinstance(entry, dict):
                raise SimInputError(f"{path}: hardware.{name} must be a mapping")
            if path != DEFAULT_CATALOG and "usd_per_hour" in entry and "price_source" not in entry:
                entry = {**entry, "price_source": f"--catalog {path}"}  # not the shipped entry's source
            entries.setdefault(str(name), {}).update(entry)
        links.extend(data.get("links") or [])
    hardware = {name: _spec(name, {**defaults, **entry}) for name, entry in entries.items()}
    return Catalog(hardware, tuple(_link(link, hardware) for link in links))


def _read(path: Path) -> dict:
    data = read_yaml(path, "catalog") or {}
    unknown = set(data) - {"defaults", "hardware", "links"} if isinstance(data, dict) else {"<top level>"}
    if unknown:
        raise SimInputError(f"catalog {path}: unknown section(s) {sorted(unknown)} "
                            "(expected defaults, hardware, links)")
    return data


def _spec(name: str, entry: dict) -> HardwareSpec:
    names = {f.name for f in fields(HardwareSpec)} - {"name"}
    unknown, missing = sorted(set(entry) - names), sorted(names - set(entry) - {"price_source", "allreduce_latency_us"})
    if "memory_gb" in unknown:
        raise SimInputError(f"hardware {name}: memory_gb is now memory_gib, the device memory in GiB as the "
                            "driver reports it (nvidia-smi's MiB / 1024; an H200 is 140.4, not 141 GB = 141e9 bytes)")
    if unknown:
        raise SimInputError(f"hardware {name}: unknown field {unknown[0]!r}")
    if missing:
        raise SimInputError(f"hardware {name}: missing field(s) {', '.join(missing)}")
    return HardwareSpec(name=name, **entry)


def _link(entry: dict, hardware: dict[str, HardwareSpec]) -> LinkOverride:
    if not isinstance(entry, dict) or set(entry) != {"src", "dst", "gbps", "latency_us"}:
        raise SimInputError(f"links entry {entry!r} must have exactly src, dst, gbps, latency_us")
    for end in (entry["src"], entry["dst"]):
        if end not in hardware:
            raise SimInputError(f"links entry {entry!r}: unknown hardware {end!r}")
    return LinkOverride(**entry)
