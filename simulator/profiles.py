"""Calibration profiles: JSON files our benchmarks write, read into typed measurements.

    {"device": "H100", "tp": 1, "model": "llama-3-8b",
     "measurements": [{"op": "decode_step", "batch": 16, "context": 4096, "seconds": 0.0123},
                      {"op": "prefill", "tokens": 2048, "context": 0, "seconds": 0.051},
                      {"op": "attention", "batch": 16, "context": 4096, "seconds": 0.0021}],
     "links": [{"src": "H100", "dst": "L40S", "bytes": 268435456, "seconds": 0.0061}]}

decode_step/attention: ``context`` is tokens per sequence; prefill: ``context`` is the cached prefix.
A mixed_step (``tierserve calibrate --mixed-batches``) is one engine step that prefills a prompt of
``tokens`` beside a decode step of ``batch`` sequences of ``context`` tokens each (a colocated
engine admitting a request):
    {"op": "mixed_step", "batch": 32, "tokens": 1024, "context": 1030, "seconds": 0.027}
prefill and mixed_step points may carry ``host_seconds``: the engine's host time to schedule, prepare
and launch that step (its step profile), what overlapped scheduling can hide behind the step before.
A decode_step is a whole model step; an attention measurement (``decode_attention`` as
benchmarks/attention.py writes it) is ``layers`` layers of decode attention (default 1).
A shared_prefix_decode measurement (benchmarks/shared_prefix.py) is ``layers`` layers (default 1)
of decode attention for ``batch`` >= 2 sequences that share one ``prefix`` of tokens and own
``suffix`` tokens each (the mean, the new token included), through the shared-prefix path:
    {"op": "shared_prefix_decode", "batch": 128, "prefix": 4096, "suffix": 312, "seconds": 0.000123}
Attention offload (benchmarks/offload_decode.py, on the compute device): ``offload_dense`` is a decode
step of ``batch`` sequences on the model worker with no attention, ``offload_link`` the link's part of a
step (every layer's q/k/v up and output down), ``offload_step`` a whole offloaded step with ``context``
tokens per sequence and ``micro_batches`` micro-batches:
    {"op": "offload_step", "batch": 256, "context": 4096, "micro_batches": 2, "seconds": 0.031}
Device memory as measured there (``tierserve calibrate``: torch.cuda.mem_get_info before the model loads),
which replaces the catalog's memory size for that device kind:
    "memory": {"total_bytes": 150754820096, "free_bytes": 150015639552}
Tensor parallelism's all-reduce between ``ranks`` devices of this kind (`tierserve calibrate` on two
GPUs, or two CPU processes), read as an all_reduce_perf log (``--nccl-tests``) is: the smallest
message's time and the best bus bandwidth; it replaces the catalog's for that device kind:
    "allreduce": {"ranks": 2, "points": [{"bytes": 8192, "seconds": 1.9e-05}, {"bytes": 16777216, ...}]}
Per-request serving costs of the cluster it was measured in (simulator/serving.py), e.g. fitted from a
serving run: "serving": {"prefill": {"latency_s": ..., "busy_s": ..., "handoff_s": ...}, ...}
``device`` (a catalog name, or a driver name like "NVIDIA H100 80GB HBM3") and ``tp`` say where
the measurements were taken. ``model`` (optional, top level or per measurement) says what they were
measured on: a name (benchmarks' profiles), which must equal the simulated model's name, or, as
`tierserve calibrate` writes it, the checkpoint and its shape, which must equal the simulated model's
shape whatever the names (``check_model``; simulate and plan refuse a profile of another shape):
    "model": {"name": "llama-3-8b", "path": "/models/llama-3-8b", "num_layers": 32, "hidden_size": 4096,
              "num_heads": 32, "num_kv_heads": 8, "head_dim": 128, "intermediate_size": 14336,
              "vocab_size": 128256, "dtype": "bfloat16"}
A profile with no model at all (older calibrate output) is used with a warning.
Link ends are catalog names, or gpuN/cpuN meaning ``device`` (as benchmarks/handoff.py and `tierserve
calibrate` write them: gpu0 -> gpu1 is a KV handoff between two devices of that kind); links to
redis-host (the host tier) and copies inside one device (gpu0 -> gpu0, older calibrate output) are skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from simulator.errors import SimInputError
from simulator.files import read_json
from simulator.models import DTYPE_BYTES, ModelSpec
from simulator.nccl_tests import AllReduce
from simulator.serving import ServingCosts, parse_serving

OPS = {"decode_step": ("batch", "context"), "attention": ("batch", "context"), "prefill": ("tokens",),
       "shared_prefix_decode": ("batch", "prefix", "suffix"), "mixed_step": ("batch", "tokens"),
       "offload_dense": ("batch",), "offload_link": ("batch",),
       "offload_step": ("batch", "context", "micro_batches")}
LAYERED = ("attention", "shared_prefix_decode")  # ops measured per ``layers`` layers
ALIASES = {"decode_attention": "attention"}
LOCAL_DEVICE = re.compile(r"^(gpu|cpu)\d+$")
SHAPE = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size", "vocab_size")


@dataclass(frozen=True)
class ProfiledModel:
    """The model a profile was measured on, as `tierserve calibrate` records it."""

    name: str
    path: str | None
    shape: tuple[int, ...]  # SHAPE's numbers, in that order
    dtype: str  # the dtype the engine ran at (float32 on CPU)

    @staticmethod
    def of(spec: ModelSpec, dtype: str, path: str | None = None) -> ProfiledModel:
        return ProfiledModel(spec.name, path, tuple(getattr(spec, k) for k in SHAPE), dtype)

    def as_dict(self) -> dict:
        return {"name": self.name, "path": self.path, **dict(zip(SHAPE, self.shape)), "dtype": self.dtype}

    def differences(self, model: ModelSpec) -> list[str]:
        """``key profile's vs simulated``, for each shape number (and the dtype's bytes) that differs."""
        diffs = [f"{k} {mine} vs {getattr(model, k)}" for k, mine in zip(SHAPE, self.shape)
                 if mine != getattr(model, k)]
        if DTYPE_BYTES[self.dtype] != model.dtype_bytes:
            diffs.append(f"dtype {self.dtype} ({DTYPE_BYTES[self.dtype]} bytes) vs {model.dtype_bytes} bytes")
        return diffs


@dataclass(frozen=True)
class Measurement:
    op: str
    seconds: float
    batch: int = 1
    tokens: int = 0
    context: int = 0
    prefix: int = 0
    suffix: int = 0
    layers: int = 1
    micro_batches: int = 1
    model: str | None = None
    host_seconds: float = 0.0  # prefill / mixed_step: host time to launch the step, when measured


@dataclass(frozen=True)
class LinkPoint:
    src: str
    dst: str
    bytes: float
    seconds: float


@dataclass(frozen=True)
class Profile:
    device: str
    tp: int
    model: str | None
    measurements: tuple[Measurement, ...]
    links: tuple[LinkPoint, ...]
    memory: tuple[float, float] | None = None  # (total bytes, free bytes) of one device
    serving: ServingCosts | None = None
    measured_on: ProfiledModel | None = None  # the model's shape, where the profile records it
    path: str | None = None  # the file it was read from
    allreduce: AllReduce | None = None  # tensor parallelism's all-reduce between devices of this kind

    def of(self, op: str) -> list[Measurement]:
        return [m for m in self.measurements if m.op == op]


def load_profile(path: str | Path, device: str | None = None) -> Profile:
    """Read a profile; ``device`` names the hardware when the file does not (or overrides it)."""
    data = read_json(path, "profile")
    if not isinstance(data, dict):
        raise SimInputError(f"profile {path}: the top level must be an object")
    device = device or data.get("device")
    if not isinstance(device, str):
        raise SimInputError(f"profile {path}: no 'device' (give it in the file or as FILE:DEVICE)")
    tp = data.get("tp", 1)
    if not isinstance(tp, int) or tp < 1:
        raise SimInputError(f"profile {path}: tp must be a positive integer, got {tp!r}")
    measurements = tuple(_measurement(m, f"{path}: measurements[{i}]")
                         for i, m in enumerate(_list(data, "measurements", path)))
    links = tuple(p for i, e in enumerate(_list(data, "links", path))
                  if (p := _link_point(e, device, f"{path}: links[{i}]")) is not None)
    serving = parse_serving(data["serving"], f"profile {path}") if "serving" in data else None
    model = data.get("model")
    measured_on = _profiled_model(model, path) if isinstance(model, dict) else None
    if model is not None and not isinstance(model, str | dict):
        raise SimInputError(f"profile {path}: model must be a name or an object, got {model!r}")
    return Profile(device, tp, model if isinstance(model, str) else None, measurements, links,
                   _memory(data.get("memory"), path), serving, measured_on, str(path),
                   _allreduce(data.get("allreduce"), path))


def check_model(profile: Profile, model: ModelSpec) -> str | None:
    """Refuse a profile measured on a model of another shape than ``model``; a warning (text) for a
    profile that does not say what it was measured on; None when it fits (a profile naming its model,
    top level or per measurement, is checked by name in CostModels)."""
    where = f"profile {profile.path or profile.device}"
    if profile.measured_on is not None:
        diffs = profile.measured_on.differences(model)
        if diffs:
            on = profile.measured_on
            raise SimInputError(
                f"{where} was measured on model {on.name!r}{f' ({on.path})' if on.path else ''}, not on the "
                f"simulated model {model.name!r}: {'; '.join(diffs)}. Calibrate on {model.name} "
                f"(tierserve calibrate --model CHECKPOINT) or simulate the profile's model (--model "
                f"{on.path or on.name})")
        return None
    if profile.model is None and all(m.model is None for m in profile.measurements):
        return (f"warning: {where} does not say which model it was measured on; using it for {model.name} "
                "(re-run tierserve calibrate to record the model)")
    return None


def _profiled_model(entry: dict, path: str | Path) -> ProfiledModel:
    where = f"profile {path}: model"
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise SimInputError(f"{where}: name must be a non-empty string, got {name!r}")
    shape = tuple(int(_positive(entry, k, where)) for k in SHAPE)
    dtype = entry.get("dtype")
    if dtype not in DTYPE_BYTES:
        raise SimInputError(f"{where}: dtype must be one of {sorted(DTYPE_BYTES)}, got {dtype!r}")
    found = entry.get("path")
    return ProfiledModel(name, str(found) if found is not None else None, shape, dtype)


def _memory(entry: object, path: str | Path) -> tuple[float, float] | None:
    if entry is None:
        return None
    where = f"profile {path}: memory"
    if not isinstance(entry, dict):
        raise SimInputError(f"{where} must be an object with total_bytes and free_bytes")
    total, free = (_positive(entry, k, where, float) for k in ("total_bytes", "free_bytes"))
    if free > total:
        raise SimInputError(f"{where}: free_bytes {free:g} exceeds total_bytes {total:g}")
    return total, free


def _allreduce(entry: object, path: str | Path) -> AllReduce | None:
    """``{"ranks": N, "points": [{"bytes", "seconds"}, ...]}``: as an all_reduce_perf log is read,
    the smallest message's time and the best bus bandwidth (bytes / seconds x 2 (N - 1) / N)."""
    if entry is None:
        return None
    where = f"profile {path}: allreduce"
    if not isinstance(entry, dict) or not isinstance(entry.get("points"), list) or not entry["points"]:
        raise SimInputError(f"{where} must be an object with ranks and a non-empty list of points")
    ranks = entry.get("ranks")
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 2:
        raise SimInputError(f"{where}: ranks must be an integer >= 2, got {ranks!r}")
    points = []
    for i, point in enumerate(entry["points"]):
        if not isinstance(point, dict):
            raise SimInputError(f"{where}: points[{i}] must be an object with bytes and seconds")
        points.append(tuple(_positive(point, k, f"{where}: points[{i}]", float) for k in ("bytes", "seconds")))
    smallest = min(points)
    return AllReduce(smallest[1], max(b / t for b, t in points) * 2 * (ranks - 1) / ranks, ranks)


def _list(data: dict, key: str, path: Path) -> list:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise SimInputError(f"profile {path}: {key} must be a list")
    return value


def _positive(entry: dict, key: str, where: str, kind: type = int) -> float:
    value = entry.get(key)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    if not ok or (kind is int and not isinstance(value, int)):
        raise SimInputError(f"{where}: {key} must be a positive {kind.__name__}, got {value!r}")
    return value


def _measurement(entry: object, where: str) -> Measurement:
    op = ALIASES.get(entry.get("op"), entry.get("op")) if isinstance(entry, dict) else None
    if op not in OPS:
        raise SimInputError(f"{where}: must be an object with op one of {sorted(OPS) + sorted(ALIASES)}")
    where = f"{where} ({op})"
    fields = {k: _positive(entry, k, where) for k in OPS[op]}
    if op in LAYERED and "layers" in entry:
        fields["layers"] = _positive(entry, "layers", where)
    if op == "shared_prefix_decode" and fields["batch"] < 2:
        raise SimInputError(f"{where}: a shared_prefix_decode batch must be >= 2 (sequences sharing the prefix), "
                            f"got {fields['batch']}")
    if op in ("prefill", "mixed_step"):  # the cached prefix / the decode context, 0 when absent
        fields["context"] = entry.get("context", 0)
        if not isinstance(fields["context"], int) or fields["context"] < 0:
            raise SimInputError(f"{where}: context must be an integer >= 0, got {fields['context']!r}")
        if "host_seconds" in entry:
            fields["host_seconds"] = _positive(entry, "host_seconds", where, float)
    return Measurement(op, _positive(entry, "seconds", where, float), model=entry.get("model"), **fields)


def _link_point(entry: object, device: str, where: str) -> LinkPoint | None:
    if not isinstance(entry, dict) or not {"src", "dst", "bytes", "seconds"} <= set(entry):
        raise SimInputError(f"{where}: must have src, dst, bytes and seconds")
    if str(entry["src"]) == str(entry["dst"]) and LOCAL_DEVICE.match(str(entry["src"])):
        return None  # a copy inside one device (older calibrate output), not a link between two
    ends = [device if LOCAL_DEVICE.match(str(e)) else str(e) for e in (entry["src"], entry["dst"])]
    if "redis-host" in ends:
        return None
    return LinkPoint(ends[0], ends[1], _positive(entry, "bytes", where, float),
                     _positive(entry, "seconds", where, float))
