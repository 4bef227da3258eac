"""Synthetic traces from a one-line spec, e.g.

    synthetic:n=10000,rate=20,workload=conversation,arrival=gamma:2,seed=1
    synthetic:n=500,rate=4,prompt=fixed:2048,output=uniform:64:256,prefix_groups=8,prefix_tokens=1024

Lengths: fixed:V, uniform:LO:HI, lognormal:MEDIAN:SIGMA (clipped to 1..max_tokens).
Arrivals: poisson, gamma:CV (burstier for CV > 1), constant. ``workload`` presets set both
lengths: conversation and coding are shaped after the medians Splitwise reports for the Azure
2023 traces (prompt 1020 / output 129, prompt 1500 / output 13), long-context after Lamina's
long-context decode setting (an approximation, not the traces themselves).
With prefix_groups > 0 every prompt starts with one of that many shared prefixes of prefix_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.errors import SimInputError
from simulator.traces.trace import Trace, make_trace

WORKLOADS = {
    "conversation": ("lognormal:1020:0.9", "lognormal:129:0.9"),
    "coding": ("lognormal:1500:0.8", "lognormal:13:1.0"),
    "long-context": ("lognormal:8192:0.4", "lognormal:512:0.5"),
}
UNIQUE_BLOCK_BASE = 1 << 40


@dataclass(frozen=True)
class SyntheticSpec:
    n: int = 1000
    rate: float = 10.0
    prompt: str = "lognormal:1020:0.9"
    output: str = "lognormal:129:0.9"
    arrival: str = "poisson"
    seed: int = 0
    prefix_groups: int = 0
    prefix_tokens: int = 0
    block: int = 64
    max_tokens: int = 32768

    def __post_init__(self) -> None:
        if self.n < 1 or not self.rate > 0:
            raise SimInputError(f"synthetic trace: n must be >= 1 and rate > 0, got n={self.n} rate={self.rate}")
        if self.prefix_groups < 0 or self.prefix_tokens < 0 or self.block < 1 or self.max_tokens < 2:
            raise SimInputError("synthetic trace: prefix_groups, prefix_tokens >= 0, block >= 1, max_tokens >= 2")
        if self.prefix_groups and self.prefix_tokens >= self.max_tokens:
            raise SimInputError("synthetic trace: prefix_tokens must be < max_tokens")
        rng = np.random.default_rng(0)
        for name in ("prompt", "output"):
            lengths(getattr(self, name), 1, rng, self.max_tokens)
        gaps(self.arrival, 1, 1.0, rng)


def parse_synthetic(spec: str) -> SyntheticSpec:
    """``synthetic:key=value,...`` -> SyntheticSpec (``workload=`` expands to prompt and output)."""
    body = spec.removeprefix("synthetic:").removeprefix("synthetic")
    values: dict[str, str] = {}
    for item in filter(None, body.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SimInputError(f"synthetic trace: {item!r} is not key=value")
        values[key.strip()] = value.strip()
    workload = values.pop("workload", None)
    if workload is not None:
        if workload not in WORKLOADS:
            raise SimInputError(f"synthetic trace: workload must be one of {sorted(WORKLOADS)}, got {workload!r}")
        values.setdefault("prompt", WORKLOADS[workload][0])
        values.setdefault("output", WORKLOADS[workload][1])
    types = {k: type(v) for k, v in SyntheticSpec().__dict__.items()}
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise SimInputError(f"synthetic trace: unknown key {unknown[0]!r} (known: workload, {', '.join(types)})")
    try:
        return SyntheticSpec(**{k: types[k](v) for k, v in values.items()})
    except ValueError as e:
        raise SimInputError(f"synthetic trace {spec!r}: {e}") from None


def lengths(dist: str, n: int, rng: np.random.Generator, max_tokens: int) -> np.ndarray:
    kind, *args = dist.split(":")
    try:
        nums = [float(a) for a in args]
    except ValueError:
        raise SimInputError(f"synthetic trace: bad numbers in {dist!r}") from None
    if kind == "fixed" and len(nums) == 1:
        raw = np.full(n, nums[0])
    elif kind == "uniform" and len(nums) == 2 and nums[0] <= nums[1]:
        raw = rng.integers(int(nums[0]), int(nums[1]) + 1, n)
    elif kind == "lognormal" and len(nums) == 2 and nums[0] > 0 and nums[1] >= 0:
        raw = rng.lognormal(np.log(nums[0]), nums[1], n)
    else:
        raise SimInputError(f"synthetic trace: length {dist!r} is not fixed:V, uniform:LO:HI or lognormal:MEDIAN:SIGMA")
    return np.clip(np.rint(raw), 1, max_tokens).astype(np.int64)


def gaps(arrival: str, n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    kind, _, arg = arrival.partition(":")
    if kind == "poisson" and not arg:
        return rng.exponential(1 / rate, n)
    if kind == "constant" and not arg:
        return np.full(n, 1 / rate)
    if kind == "gamma" and arg:
        try:
            cv = float(arg)
        except ValueError:
            cv = -1.0
        if cv > 0:
            shape = 1 / cv ** 2
            return rng.gamma(shape, 1 / (rate * shape), n)
    raise SimInputError(f"synthetic trace: arrival {arrival!r} is not poisson, constant or gamma:CV (CV > 0)")


def synthetic_trace(spec: SyntheticSpec) -> Trace:
    rng = np.random.default_rng(spec.seed)
    arrival = np.concatenate([[0.0], np.cumsum(gaps(spec.arrival, spec.n - 1, spec.rate, rng))])
    prompts = lengths(spec.prompt, spec.n, rng, spec.max_tokens)
    outputs = lengths(spec.output, spec.n, rng, spec.max_tokens)
    hashes = None
    if spec.prefix_groups:
        prompts = np.minimum(prompts + spec.prefix_tokens, spec.max_tokens)
        groups = rng.integers(0, spec.prefix_groups, spec.n)
        hashes = [_hash_ids(int(g), int(p), i, spec) for i, (g, p) in enumerate(zip(groups, prompts))]
    name = f"synthetic(n={spec.n}, rate={spec.rate:g}/s, seed={spec.seed})"
    return make_trace(name, arrival.tolist(), prompts.tolist(), outputs.tolist(), hashes, spec.block)


def _hash_ids(group: int, prompt: int, index: int, spec: SyntheticSpec) -> tuple[int, ...]:
    shared = spec.prefix_tokens // spec.block
    total = -(-prompt // spec.block)
    own = UNIQUE_BLOCK_BASE + index * (spec.max_tokens // spec.block + 1)
    return tuple(group * (shared + 1) + j for j in range(shared)) + tuple(own + j for j in range(total - shared))
