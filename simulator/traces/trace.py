"""A request trace: arrival times, prompt and output lengths, and optional prefix block hashes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.errors import SimInputError


@dataclass(frozen=True, eq=False)
class Trace:
    """Requests sorted by arrival (seconds from the first). ``hash_ids[i]`` names the prompt's
    blocks of ``block_tokens`` tokens; requests sharing leading ids share that prefix."""

    name: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    hash_ids: tuple[tuple[int, ...], ...] | None = None
    block_tokens: int = 512

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if n == 0:
            raise SimInputError(f"trace {self.name} has no requests")
        if len(self.prompt_tokens) != n or len(self.output_tokens) != n or (
                self.hash_ids is not None and len(self.hash_ids) != n):
            raise SimInputError(f"trace {self.name}: columns of different lengths")
        if np.any(np.diff(self.arrival_s) < 0):
            raise SimInputError(f"trace {self.name}: arrivals are not sorted")
        if self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1:
            raise SimInputError(f"trace {self.name}: prompt and output lengths must be >= 1")
        if self.block_tokens < 1:
            raise SimInputError(f"trace {self.name}: block_tokens must be >= 1")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1] - self.arrival_s[0])

    @property
    def rate(self) -> float:
        """Mean arrivals per second."""
        return (len(self) - 1) / self.duration_s if self.duration_s > 0 else float("inf")

    def scaled(self, factor: float) -> Trace:
        """The same requests arriving ``factor`` times as fast."""
        if not factor > 0:
            raise SimInputError(f"rate scale must be > 0, got {factor}")
        return Trace(f"{self.name} x{factor:g}", self.arrival_s / factor, self.prompt_tokens,
                     self.output_tokens, self.hash_ids, self.block_tokens)

    def head(self, n: int) -> Trace:
        """The first n requests."""
        hashes = None if self.hash_ids is None else self.hash_ids[:n]
        return Trace(self.name, self.arrival_s[:n], self.prompt_tokens[:n], self.output_tokens[:n], hashes,
                     self.block_tokens)


def make_trace(name: str, arrival_s: list[float], prompts: list[int], outputs: list[int],
               hash_ids: list[tuple[int, ...]] | None = None, block_tokens: int = 512) -> Trace:
    """Sort by arrival (stable) and shift so the first request arrives at 0."""
    arrival = np.asarray(arrival_s, dtype=np.float64)
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order] - (arrival[order[0]] if len(order) else 0.0)
    hashes = None if hash_ids is None else tuple(hash_ids[i] for i in order)
    return Trace(name, arrival, np.asarray(prompts, dtype=np.int64)[order],
                 np.asarray(outputs, dtype=np.int64)[order], hashes, block_tokens)
