"""The discrete-event simulation of one design on one trace.

Events are (time, seq, handler, arg) in one heap; arrivals come from the trace in order, merged
with the heap rather than pushed. Decode batches post one event per batch change (decode_batch).
"""

from __future__ import annotations

import gc
import heapq
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from simulator.costs import CostModels, kv_capacity_tokens
from simulator.design import Design, PoolSpec
from simulator.errors import SimInputError
from simulator.links import Link
from simulator.prefix_cache import PagedPrefixCache, PrefixCache
from simulator.replica import Replica
from simulator.request import Request
from simulator.roofline import IterationCost
from simulator.router import Router
from simulator.shared_prefix import shared_segments
from simulator.slo import SLO
from simulator.slo_watch import SloMissed, SloWatch
from simulator.traces.trace import Trace


@dataclass(frozen=True)
class SimRecord:
    """What a run leaves for metrics: every request, decode segments, replicas, the design."""

    design: Design
    trace: Trace
    requests: list[Request]
    segments: list[tuple[int, int, float, float]]
    replicas: dict[str, list[Replica]]
    rejected: int
    extra_gaps: list[float]   # token gaps outside decode segments (a preempted request's recompute token)
    preemptions: int
    client_latency_s: float = 0.0   # the entry path's serving latency: added to what clients see
    step_jitter: float = 0.0        # host noise per step: log-sd of its lognormal factor (serving.py)
    step_jitter_s: float = 0.0      # and its scale, seconds
    gap_p90: dict[int, float] | None = None  # request index -> its p90 token gap (request_gaps runs only)


class Simulation:
    """``stop_on``: raise SloMissed out of ``run`` as soon as that SLO is missed for sure (slo_watch).
    ``request_gaps``: keep each request's p90 token gap (decode_batch.py; slower, off by default)."""

    def __init__(self, design: Design, costs: CostModels, trace: Trace, stop_on: SLO | None = None,
                 request_gaps: bool = False) -> None:
        self.design, self.costs, self.trace = design, costs, trace
        self.model = costs.model
        self.heap: list = []
        self.seq: Iterator[int] = itertools.count()  # events' tie-break: in the order pushed
        self.segments: list[tuple[int, int, float, float]] = []
        self.extra_gaps: list[float] = []
        self.preemptions = 0
        self.serving = costs.path_costs()
        self._noise = random.Random(0) if self.serving.step_jitter and self.serving.step_jitter_s else None
        self.router = Router(design.router)
        self.sharing = design.prefix_caching and design.shared_prefix_attention and trace.hash_ids is not None
        self.pools = {name: self._pool(name, spec) for name, spec in design.pools().items() if name != "attention"}
        self.entry = self.pools.get("colocated") or self.pools["prefill"]
        self.decode = self.pools.get("decode")
        self.transfer_link = self._transfer_link() if self.decode else None
        self.gap_p90: dict[int, float] | None = {} if request_gaps else None
        for replica in itertools.chain.from_iterable(self.pools.values()) if request_gaps else ():
            if replica.batch is not None:
                replica.batch.keep_request_gaps(self.gap_p90)
        self.finished = 0
        entry = getattr(self.serving, "colocated" if "colocated" in self.pools else "prefill")
        self.watch = SloWatch(stop_on, len(trace), entry.latency_s) if stop_on is not None else None

    def _pool(self, name: str, spec: PoolSpec) -> list[Replica]:
        cost, capacity = self._cost_and_capacity(name, spec)
        caching = self.design.prefix_caching and name != "decode" and self.trace.hash_ids is not None
        sharing = self.sharing and name != "prefill"
        block = self.trace.block_tokens
        cache = PagedPrefixCache if self.design.paged_kv else PrefixCache
        busy = getattr(self.serving, name).busy_s
        return [Replica(self, name, name, cost, capacity, spec.max_num_seqs, spec.max_num_batched_tokens,
                        cache(capacity // block) if caching else None, block, sharing, self.design.on_demand_kv, busy)
                for _ in range(spec.replicas)]

    def _cost_and_capacity(self, name: str, spec: PoolSpec) -> tuple[IterationCost, int]:
        """A replica's cost model and KV capacity in tokens (offloaded decode: its attention share's)."""
        hw = self.costs.catalog[spec.hardware]
        capacity = kv_capacity_tokens(self.model, hw, spec.tp, spec.max_num_batched_tokens)
        attention = self.design.attention if name == "decode" else None
        if capacity < 0 or (capacity == 0 and attention is None):
            raise SimInputError(f"{self.model.name} does not fit on {spec.label()} with tp={spec.tp}")
        if attention is None:
            return self.costs.replica(spec.hardware, spec.tp), capacity
        share = attention.replicas / spec.replicas
        attn_hw = self.costs.catalog[attention.hardware]
        capacity = kv_capacity_tokens(self.model, attn_hw, 1, 0, holds_weights=False) * share
        cost = self.costs.offload(spec.hardware, spec.tp, attention.hardware, share, self.design.micro_batches)
        return cost, int(capacity)

    def _transfer_link(self) -> Link:
        p, d = self.design.prefill, self.design.decode
        link = self.costs.links.between(p.hardware, d.hardware)
        return Link(link.bandwidth * min(p.tp, d.tp), link.latency_s)

    def step_noise(self, seconds: float) -> float:
        """A prefill iteration's time with the host noise drawn for it (serving.py); seeded, so runs
        repeat. Decode steps get theirs in the token-gap statistics (tbt.py)."""
        if self._noise is None:
            return seconds
        s = self.serving
        return max(seconds + s.step_jitter_s * (self._noise.lognormvariate(0.0, s.step_jitter) - 1), 0.5 * seconds)

    def push(self, t: float, handler: Callable, arg: object) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), handler, arg))

    def run(self, on_progress: Callable[[int], None] | None = None) -> SimRecord:
        """Run to the last request's end; ``on_progress(arrivals so far)`` every 8192 arrivals."""
        tr = self.trace
        hashes = tr.hash_ids or itertools.repeat(None)
        enabled = gc.isenabled()  # the run makes no reference cycles: no collections on the way (nor while
        gc.disable()              # its requests are made: 0.6 us each at 100k)
        try:
            requests = list(map(Request, range(len(tr)), tr.arrival_s.tolist(), tr.prompt_tokens.tolist(),
                                tr.output_tokens.tolist(), hashes))
            if self.sharing:
                for req, runs in zip(requests, shared_segments(tr)):
                    req.shared_runs = runs
            rejected = self._events(requests, on_progress)
        finally:
            if enabled:
                gc.enable()
        if self.finished + rejected != len(requests):
            raise RuntimeError(f"simulation ended with {len(requests) - self.finished - rejected} requests stuck")
        entry = "colocated" if "colocated" in self.pools else "prefill"
        return SimRecord(self.design, tr, requests, self.segments, self.pools, rejected, self.extra_gaps,
                         self.preemptions, getattr(self.serving, entry).latency_s, self.serving.step_jitter,
                         self.serving.step_jitter_s, self.gap_p90)

    def _events(self, requests: list[Request], on_progress: Callable[[int], None] | None) -> int:
        """Arrivals merged with the event heap, to the end; the requests rejected (too long)."""
        heap, pop, rejected = self.heap, heapq.heappop, 0
        max_prompt, max_length = self._length_limits()
        pick, entry = self.router.pick_prefill, self.entry
        for req in requests:
            if on_progress is not None and not req.index & 8191:
                on_progress(req.index)
            arrival = req.arrival
            while heap and heap[0][0] < arrival:
                t, _, handler, arg = pop(heap)
                handler(t, arg)
            if req.prompt > max_prompt or req.prompt + req.output > max_length:
                if self.watch is not None:
                    raise SloMissed("a request is too long for the design")
                rejected += 1
                continue
            pick(entry, req).submit(req, arrival)  # arrives: to a replica of the entry pool
        while heap:
            t, _, handler, arg = pop(heap)
            handler(t, arg)
        return rejected

    def _length_limits(self) -> tuple[int, int]:
        """The longest prompt, and the longest prompt + output, every replica on the way can hold."""
        replicas = list(itertools.chain(*self.pools.values()))
        prompt = min((r.kv_capacity for r in replicas if r.role == "prefill"), default=1 << 62)
        return prompt, min(r.kv_capacity for r in replicas if r.role != "prefill")

    def on_prefilled(self, req: Request, t: float) -> None:
        if req.output == 1:
            req.finish_at = t
            req.prefill_replica.release_prefill(req, t)
            self.on_finished(req)
            return
        if self.router.pick_decode(self.decode).reserve(req, t):
            self.start_transfer(req, t)

    def start_transfer(self, req: Request, t: float) -> None:
        """Send the prompt's KV over the prefill replica's NIC (one transfer at a time per NIC).
        Layer-wise: if the decode side was ready when the prefill ended, the transfer may stream
        from the prefill's start, but its last layer still follows the prefill's end."""
        src, link = req.prefill_replica, self.transfer_link
        occupy = req.prompt * self.model.kv_bytes_per_token / link.bandwidth
        streamed = self.design.layerwise_transfer and t == req.ttft_at
        begin, free = req.prefill_start if streamed else t + self.serving.prefill.handoff_s, src.nic_free
        if free > begin:  # max(begin, free): no min/max calls on the hot paths
            begin = free
        src.nic_free = begin + occupy
        done = src.nic_free
        if streamed and t + occupy / self.model.num_layers > done:
            done = t + occupy / self.model.num_layers
        self.push(done + link.latency_s, self._transfer_done, req)

    def _transfer_done(self, t: float, req: Request) -> None:
        req.prefill_replica.release_prefill(req, t)
        req.decode_replica.kv_arrived(req, t)

    def on_finished(self, req: Request) -> None:
        self.finished += 1
        if self.watch is not None:
            self.watch.finished(req)
