"""Synthetic request streams: Poisson arrivals, log-normal prompt and output lengths."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TimedRequest:
    arrival_s: float
    prompt_token_ids: list[int]
    max_tokens: int


@dataclass(frozen=True)
class WorkloadSpec:
    rate: float                 # requests per second
    duration_s: float
    prompt_mean: int = 1024
    output_mean: int = 128
    sigma: float = 0.5          # log-normal shape of both lengths
    max_prompt: int = 3072
    max_output: int = 512
    vocab: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_s <= 0:
            raise ValueError("rate and duration_s must be > 0")


def _lengths(rng: np.random.Generator, mean: int, sigma: float, n: int, cap: int) -> np.ndarray:
    mu = np.log(mean) - sigma ** 2 / 2   # so that the mean is ``mean``
    return np.clip(rng.lognormal(mu, sigma, n).round().astype(int), 1, cap)


def poisson_workload(spec: WorkloadSpec) -> list[TimedRequest]:
    rng = np.random.default_rng(spec.seed)
    gaps = rng.exponential(1.0 / spec.rate, int(spec.rate * spec.duration_s * 2) + 16)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < spec.duration_s]
    n = len(arrivals)
    prompts = _lengths(rng, spec.prompt_mean, spec.sigma, n, spec.max_prompt)
    outputs = _lengths(rng, spec.output_mean, spec.sigma, n, spec.max_output)
    return [TimedRequest(float(t), rng.integers(3, spec.vocab, int(p)).tolist(), int(o))
            for t, p, o in zip(arrivals, prompts, outputs)]
