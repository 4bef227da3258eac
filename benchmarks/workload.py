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


def shared_prefix_prompts(w) -> tuple[np.ndarray, list[list[int]], list[int]]:
    """Arrival times, prompts and each prompt's few-shot group of the shared-prefix workload
    (benchmarks/prefix_serving.py, and its simulator prediction, draw for draw).

    ``w`` has users, requests_per_user, rate, system_tokens, groups, fewshot_tokens,
    question_tokens, seed and optionally cyclic_groups. Prompt = one system prompt + the user's
    group of few-shot examples + the user's own question. Each user draws its group at random:
    the cyclic assignment (user i -> group i % groups, one request each; ``cyclic_groups``,
    kept to reproduce the runs made with it) lines up with round-robin's cyclic replica choice
    and partitions the groups for it.
    """
    rng = np.random.default_rng(w.seed)
    system = rng.integers(3, 500, w.system_tokens).tolist()
    fewshot = [rng.integers(3, 500, w.fewshot_tokens).tolist() for _ in range(w.groups)]
    cyclic = getattr(w, "cyclic_groups", False)
    total = w.users * (1 if cyclic else w.requests_per_user)
    arrivals = np.cumsum(rng.exponential(1.0 / w.rate, total))
    if cyclic:
        groups = [i % w.groups for i in range(w.users)]
    else:
        user_group = rng.integers(0, w.groups, w.users)
        users = rng.permutation(np.arange(total) % w.users)  # every user asks requests_per_user times
        groups = [int(user_group[u]) for u in users]
    prompts = [system + fewshot[g] + rng.integers(3, 500, w.question_tokens).tolist() for g in groups]
    return arrivals, prompts, groups
