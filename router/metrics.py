"""Prometheus metrics for one router, in its own CollectorRegistry.

Latency and token metrics are observed as requests stream through either front end; load
metrics (queue depth, blocks, prefix cache, handoff bytes) are read from the backend at
scrape time. Tokens/s is ``rate(tierserve_generation_tokens_total[1m])``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engine.outputs import FinishReason, RequestOutput
from router.backend import GenerationBackend, HealthState
from engine.step_profile import PHASES
from router.errors import ErrorKind

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TBT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class BackendStatsCollector:
    """Turns one `backend.stats()` call per scrape into gauges and counters."""

    def __init__(self, backend: GenerationBackend):
        self.backend = backend

    def collect(self) -> Iterator[Metric]:
        s = self.backend.stats()
        yield GaugeMetricFamily("tierserve_queue_depth", "Requests waiting to be scheduled", value=s.num_waiting)
        yield GaugeMetricFamily("tierserve_running_requests", "Requests being computed", value=s.num_running)
        yield GaugeMetricFamily("tierserve_kv_blocks_in_use", "KV cache blocks in use", value=s.num_blocks_used)
        yield GaugeMetricFamily("tierserve_kv_blocks_total", "KV cache blocks in all", value=s.num_blocks_total)
        yield CounterMetricFamily("tierserve_prefix_cache_query_tokens", "Prompt tokens looked up in the prefix cache",
                                  value=s.prefix_cache_query_tokens)
        yield CounterMetricFamily("tierserve_prefix_cache_hit_tokens", "Prompt tokens found in the prefix cache",
                                  value=s.prefix_cache_hit_tokens)
        yield CounterMetricFamily("tierserve_kv_handoff_bytes", "KV cache bytes handed from prefill to decode",
                                  value=s.handoff_bytes_total)
        yield CounterMetricFamily("tierserve_preemptions", "Requests preempted for lack of KV blocks",
                                  value=s.num_preemptions)
        steps = CounterMetricFamily("tierserve_engine_steps", "Engine steps, by kind (graph, decode, shared, mixed)",
                                    labels=["kind"])
        tokens = CounterMetricFamily("tierserve_engine_step_tokens", "Tokens computed by engine steps, by kind",
                                     labels=["kind"])
        seconds = CounterMetricFamily(
            "tierserve_engine_step_seconds",
            "Seconds engine steps spent, by kind and phase (schedule, prepare, forward, wait, finish)",
            labels=["kind", "phase"])
        for kind, totals in sorted(s.step_totals.items()):
            steps.add_metric([kind], totals.get("steps", 0))
            tokens.add_metric([kind], totals.get("tokens", 0))
            for phase in PHASES:
                seconds.add_metric([kind, phase], totals.get(phase, 0.0))
        yield steps
        yield tokens
        yield seconds
        yield from self._health()

    def _health(self) -> Iterator[Metric]:
        """One series per replica (and per component, such as Redis) and state: 1 for its
        current state, 0 for the others."""
        h = self.backend.health()
        replicas = GaugeMetricFamily("tierserve_replica_state", "Replica state: 1 for the current one "
                                     "(ready, degraded, down)", labels=["pool", "replica", "state"])
        for pool, states in sorted(h.pools.items()):
            for replica, current in sorted(states.items()):
                for state in HealthState:
                    replicas.add_metric([pool, replica, state.value], float(state is current))
        components = GaugeMetricFamily("tierserve_component_state", "State of what the pools rely on "
                                       "(redis): 1 for the current one", labels=["component", "state"])
        for component, current in sorted(h.components.items()):
            for state in HealthState:
                components.add_metric([component, state.value], float(state is current))
        yield replicas
        yield components


class RouterMetrics:
    """The router's metrics; `exposition()` renders them in the Prometheus text format."""

    def __init__(self, backend: GenerationBackend):
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("tierserve_time_to_first_token_seconds", "Time from arrival to the first token",
                              registry=r, buckets=TTFT_BUCKETS)
        self.tbt = Histogram("tierserve_inter_token_latency_seconds", "Time between a request's consecutive tokens",
                             registry=r, buckets=TBT_BUCKETS)
        self.e2e = Histogram("tierserve_request_latency_seconds", "Time from arrival to the last token",
                             registry=r, buckets=E2E_BUCKETS)
        self.prompt_tokens = Counter("tierserve_prompt_tokens", "Prompt tokens of started requests", registry=r)
        self.generation_tokens = Counter("tierserve_generation_tokens", "Tokens generated", registry=r)
        self.requests = Counter("tierserve_requests", "Requests ended, by finish reason", ["finish_reason"],
                                registry=r)
        self.errors = Counter("tierserve_request_errors", "Requests refused or failed, by kind", ["kind"],
                              registry=r)
        r.register(BackendStatsCollector(backend))

    def track(self) -> RequestTracker:
        return RequestTracker(self)

    def count_error(self, kind: ErrorKind) -> None:
        self.errors.labels(kind.value).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestTracker:
    """Observes one request's deltas: TTFT, inter-token gaps, token counts, how it ended."""

    def __init__(self, metrics: RouterMetrics):
        self.metrics = metrics
        self.started_at = time.monotonic()
        self.last_token_at: float | None = None

    def observe(self, delta: RequestOutput) -> None:
        now, m = time.monotonic(), self.metrics
        if delta.new_token_ids:
            if self.last_token_at is None:
                m.ttft.observe(now - self.started_at)
                m.prompt_tokens.inc(delta.num_prompt_tokens)
            else:
                m.tbt.observe(now - self.last_token_at)
            self.last_token_at = now
            m.generation_tokens.inc(len(delta.new_token_ids))
        if delta.finished:
            self.ended(delta.finish_reason or FinishReason.STOP)

    def ended(self, reason: FinishReason) -> None:
        self.metrics.requests.labels(reason.value).inc()
        self.metrics.e2e.observe(time.monotonic() - self.started_at)
