"""Lower bounds on pool sizes from the trace's load: where the planner starts its search.

Each bound assumes perfect batching and no queueing, so a design below it cannot keep up.
``LoadBounds.prefill_for_ttft`` is an estimate instead (queueing included), which the planner
orders its family searches by.
"""

from __future__ import annotations

import math

import numpy as np

from simulator.costs import CostModels, kv_capacity_tokens
from simulator.operators import prefill_work
from simulator.shared_prefix import shared_segments
from simulator.traces.trace import Trace


class LoadBounds:
    def __init__(self, trace: Trace, costs: CostModels, max_seqs: int, max_tokens: int) -> None:
        self.costs, self.max_seqs, self.max_tokens = costs, max_seqs, max_tokens
        self.duration = max(trace.duration_s, 1.0)  # a burst at one instant still has a second to drain
        self.requests = len(trace)
        self.prompts = trace.prompt_tokens.astype(np.float64)
        self._queued: dict[tuple, int | None] = {}
        self.serving = costs.path_costs()
        self.prompt_tokens = float(trace.prompt_tokens.sum())
        self.decode_tokens = float((trace.output_tokens - 1).sum())
        self.mean_length = float((trace.prompt_tokens + trace.output_tokens).mean())
        # mean context over decode tokens: prompt + half the output, weighted by output; prompt blocks
        # other requests share may be read once per batch (shared-prefix steps), so they do not count
        out = trace.output_tokens.astype(np.float64)
        runs = shared_segments(trace)
        shared = 0 if runs is None else np.array([r[-1][2] if r else 0 for r in runs]) * trace.block_tokens
        self.mean_context = float(((trace.prompt_tokens - shared + out / 2) * out).sum() / out.sum())

    def prefill_for_ttft(self, hw: str, tp: int, ttft: tuple[tuple[float, float], ...], latency_s: float,
                         busy_s: float, other_load: float = 0.0, most: int = 64) -> int | None:
        """An estimate (not a bound) of the replicas whose prefill queue meets each (percentile, bound)
        of ``ttft``: the smallest count, from the load bound up to ``most``, at which the pool as an M/M/c
        queue (Erlang C; its servers also busy ``other_load`` replicas' worth, a colocated pool's decode)
        keeps the share of requests whose wait + own prefill + ``latency_s`` exceed a bound within
        that percentile's tail. Each prompt's prefill is its tokens at a full chunk's per-token cost
        plus ``busy_s``. None: no count up to ``most`` does."""
        key = (hw, tp, ttft, latency_s, busy_s, other_load, most)
        if key not in self._queued:
            self._queued[key] = self._queued_count(hw, tp, ttft, latency_s, busy_s, other_load, most)
        return self._queued[key]

    def _queued_count(self, hw: str, tp: int, ttft: tuple[tuple[float, float], ...], latency_s: float,
                      busy_s: float, other_load: float, most: int) -> int | None:
        cost = self.costs.replica(hw, tp)
        per_token = cost.seconds(prefill_work(self.max_tokens, 0, 1)) / self.max_tokens
        service = self.prompts * per_token + busy_s
        mean = float(service.mean())
        load = float(service.sum()) / self.duration + other_load
        for servers in range(max(1, math.floor(load) + 1), most + 1):
            if all(float(np.mean(_tail(servers, load, mean, bound - latency_s - service))) <= 1 - pct / 100
                   for pct, bound in ttft):
                return servers
        return None

    def _count(self, busy_seconds: float) -> int:
        return max(1, math.ceil(busy_seconds / self.duration))

    def prefill_seconds(self, hw: str, tp: int) -> float:
        cost = self.costs.replica(hw, tp)
        per_token = cost.seconds(prefill_work(self.max_tokens, 0, 1)) / self.max_tokens
        return self.prompt_tokens * per_token + self.requests * self.serving.prefill.busy_s

    def decode_rate(self, hw: str, tp: int) -> float:
        """Tokens/s of one replica at the largest batch its memory and max_num_seqs allow."""
        capacity = kv_capacity_tokens(self.costs.model, self.costs.catalog[hw], tp, self.max_tokens)
        batch = max(1, min(self.max_seqs, int(capacity // self.mean_length)))
        _, a, b = self.costs.replica(hw, tp).decode_pieces(batch)[0]
        return batch / (a + b * batch * self.mean_context)

    def prefill(self, hw: str, tp: int) -> int:
        return self._count(self.prefill_seconds(hw, tp))

    def decode(self, hw: str, tp: int) -> int:
        return self._count(self.decode_tokens / self.decode_rate(hw, tp))

    def colocated(self, hw: str, tp: int) -> int:
        return self._count(self.prefill_seconds(hw, tp) + self.decode_tokens / self.decode_rate(hw, tp))

    def offload_compute(self, hw: str, tp: int) -> int:
        _, a, _ = self.costs.replica(hw, tp).decode_pieces(self.max_seqs)[0]
        return self._count(self.decode_tokens * a / self.max_seqs)

    def attention(self, hw: str) -> int:
        per_token = self.costs.replica(hw, 1).attention_seconds_per_token()
        memory = kv_capacity_tokens(self.costs.model, self.costs.catalog[hw], 1, 0, holds_weights=False)
        return max(self._count(self.decode_tokens * self.mean_context * per_token), 1 if memory > 0 else 0)


def _tail(servers: int, load: float, mean_service: float, slack: np.ndarray) -> np.ndarray:
    """P(wait > slack) in an M/M/c queue of ``servers`` at offered ``load`` (< servers)."""
    blocked = 1.0  # Erlang B by its recursion, then C
    for k in range(1, servers + 1):
        blocked = load * blocked / (k + load * blocked)
    waits = servers * blocked / (servers - load * (1 - blocked))
    decay = (servers - load) / mean_service
    return np.where(slack <= 0, 1.0, waits * np.exp(-decay * np.maximum(slack, 0.0)))
