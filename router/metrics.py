"""Prometheus metrics for one router, in its own CollectorRegistry.

Latency and token metrics are observed as requests stream through either front end; load
metrics (queue depth, blocks, prefix cache, handoff bytes) are read from the backend at
scrape time. Tokens/s is ``rate(tierserve_generation_tokens_total[1m])``.

Beside our names, vLLM's (``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc``,
``vllm:time_to_first_token_seconds``, ...; labels ``model_name`` and ``engine``, vLLM's
histogram buckets), so dashboards and autoscaling rules written for vLLM work unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engine.outputs import FinishReason, RequestOutput
from engine.step_profile import PHASES
from router.backend import BackendStats, GenerationBackend, HealthState
from router.errors import ErrorKind

M = TypeVar("M", Histogram, Counter)

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TBT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
VLLM_LABELS = ("model_name", "engine")   # engine "0": the backend's stats are one engine's, or the pools' sum
VLLM_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                     20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
VLLM_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                    40.0, 80.0)
VLLM_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                    480.0, 960.0, 1920.0, 7680.0)


class BackendStatsCollector:
    """Turns one `backend.stats()` call per scrape into gauges and counters."""

    def __init__(self, backend: GenerationBackend, model_name: str):
        self.backend = backend
        self.vllm_labels = [model_name, "0"]

    def collect(self) -> Iterator[Metric]:
        s = self.backend.stats()
        yield from self._vllm(s)
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
        yield GaugeMetricFamily("tierserve_router_prefix_index_blocks", "Blocks the router's prefix index knows "
                                "a holder of (held or predicted)", value=s.prefix_index_blocks)
        yield GaugeMetricFamily("tierserve_router_prefix_index_bytes", "Memory of the router's prefix index",
                                value=s.prefix_index_bytes)
        yield GaugeMetricFamily("tierserve_router_prefix_index_predicted", "(replica, block) pairs the router "
                                "predicted and no KV event confirmed yet", value=s.prefix_index_predicted)
        yield CounterMetricFamily("tierserve_router_kv_event_blocks", "Blocks of KV events the router applied",
                                  value=s.kv_event_blocks)
        yield from self._segments(s)
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

    @staticmethod
    def _segments(s: BackendStats) -> Iterator[Metric]:
        """Segment reuse (docs/segment_reuse.md), summed over the engines."""
        g = s.segments
        for name, text, value in (
                ("segment_prompt_tokens", "Prompt tokens of requests that asked for segment reuse", g.prompt_tokens),
                ("segment_lookups", "Segments looked up in an engine's segment store", g.lookups),
                ("segment_hits", "Segments whose KV was reused from the segment store", g.hits),
                ("segment_reused_tokens", "Prompt tokens filled from reused segments instead of computed",
                 g.reused_tokens)):
            yield CounterMetricFamily(f"tierserve_{name}", text, value=value)
        yield GaugeMetricFamily("tierserve_segment_reuse_rate", "Reused segment tokens over the prompt tokens of "
                                "requests that asked for segment reuse", value=g.reuse_rate)
        yield GaugeMetricFamily("tierserve_segment_store_bytes", "Bytes held by the engines' segment stores",
                                value=g.stored_bytes)
        yield GaugeMetricFamily("tierserve_router_segment_index_segments", "Segments the router knows a holder of",
                                value=s.segment_index_entries)

    def _vllm(self, s: BackendStats) -> Iterator[Metric]:
        """vLLM's names for the same figures."""
        usage = s.num_blocks_used / s.num_blocks_total if s.num_blocks_total else 0.0
        for kind, name, doc, value in (
                (GaugeMetricFamily, "vllm:num_requests_running", "Number of requests in model execution batches.",
                 s.num_running),
                (GaugeMetricFamily, "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                 s.num_waiting),
                (GaugeMetricFamily, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage),
                (GaugeMetricFamily, "vllm:gpu_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage. "
                 "DEPRECATED in vLLM: use vllm:kv_cache_usage_perc.", usage),
                (CounterMetricFamily, "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of "
                 "queried tokens.", s.prefix_cache_query_tokens),
                (CounterMetricFamily, "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached "
                 "tokens.", s.prefix_cache_hit_tokens),
                (CounterMetricFamily, "vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                 s.num_preemptions)):
            family = kind(name, doc, labels=VLLM_LABELS)
            family.add_metric(self.vllm_labels, value)
            yield family

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
    """The router's metrics; `exposition()` renders them in the Prometheus text format.
    ``model_name`` is the served name (vLLM's ``model_name`` label); default: the backend's."""

    def __init__(self, backend: GenerationBackend, model_name: str | None = None):
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
        self.vllm = VllmMetrics(r, model_name or backend.model_name)
        r.register(BackendStatsCollector(backend, model_name or backend.model_name))

    def track(self) -> RequestTracker:
        return RequestTracker(self)

    def count_error(self, kind: ErrorKind) -> None:
        self.errors.labels(kind.value).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class VllmMetrics:
    """vLLM's names for the latency histograms and token and request counters (one engine's labels)."""

    def __init__(self, registry: CollectorRegistry, model_name: str):
        def labelled(metric: M) -> M:
            return metric.labels(model_name, "0")
        r, labels = registry, VLLM_LABELS
        self.ttft = labelled(Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in "
                                       "seconds.", labels, registry=r, buckets=VLLM_TTFT_BUCKETS))
        self.itl = labelled(Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in "
                                      "seconds.", labels, registry=r, buckets=VLLM_ITL_BUCKETS))
        self.tpot = labelled(Histogram("vllm:time_per_output_token_seconds", "Histogram of time per output token in "
                                       "seconds. DEPRECATED in vLLM: use vllm:inter_token_latency_seconds.", labels,
                                       registry=r, buckets=VLLM_ITL_BUCKETS))
        self.e2e = labelled(Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in "
                                      "seconds.", labels, registry=r, buckets=VLLM_E2E_BUCKETS))
        self.prompt_tokens = labelled(Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", labels,
                                              registry=r))
        self.generation_tokens = labelled(Counter("vllm:generation_tokens", "Number of generation tokens "
                                                  "processed.", labels, registry=r))
        self.success = Counter("vllm:request_success", "Count of successfully processed requests.",
                               [*labels, "finished_reason"], registry=r)
        self.model_name = model_name

    def ended(self, reason: FinishReason, seconds: float) -> None:
        self.success.labels(self.model_name, "0", reason.value).inc()
        self.e2e.observe(seconds)


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
                for ttft, prompt in ((m.ttft, m.prompt_tokens), (m.vllm.ttft, m.vllm.prompt_tokens)):
                    ttft.observe(now - self.started_at)
                    prompt.inc(delta.num_prompt_tokens)
            else:
                for gap in (m.tbt, m.vllm.itl, m.vllm.tpot):
                    gap.observe(now - self.last_token_at)
            self.last_token_at = now
            for tokens in (m.generation_tokens, m.vllm.generation_tokens):
                tokens.inc(len(delta.new_token_ids))
        if delta.finished:
            self.ended(delta.finish_reason or FinishReason.STOP)

    def ended(self, reason: FinishReason) -> None:
        seconds = time.monotonic() - self.started_at
        self.metrics.requests.labels(reason.value).inc()
        self.metrics.e2e.observe(seconds)
        self.metrics.vllm.ended(reason, seconds)
