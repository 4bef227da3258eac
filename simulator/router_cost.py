"""How many router processes a fleet needs (issue 22), from what benchmarks/router_scale.py
measured: one router core's KV-event ingest rate and a routing decision's CPU time against
the number of replicas it picks among.

Every router applies every KV event (they all follow one stream, cluster/index/index_follower.py),
so ingest is a cost per router that more routers do not share, while requests split among
them. A fleet that prefills T prompt tokens/s in blocks of B tokens publishes about 2 T / B
event blocks/s in steady state (each block STORED once and, its cache full, EVICTED once).
A request costs hashing its prompt (per block), the decision (prefix match + load balance,
measured on 4K-token prompts) and recording its prediction (per block). A router is one
process on one core kept below ``utilization``; the HTTP and tokenizer work around a
decision is not in these numbers.

    cost = RouterCost.load()                        # the measured JSON, or None without it
    need = routers_needed(cost, prefill_tokens_per_s=2e6, requests_per_s=500, replicas=256,
                          prompt_tokens=4096, block_size=16)
    need.routers, need.ingest_cores, need.routing_cores
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.errors import SimInputError

if TYPE_CHECKING:
    from simulator.design import Design
    from simulator.traces.trace import Trace

MEASURED = Path(__file__).resolve().parents[1] / "benchmarks/results/router-scale-cpu-2026-12-02/router_cost.json"
IMPL = "compact-c"       # the router's index as served (its C core)
UTILIZATION = 0.7        # a router core's share kept busy, the rest for bursts
EVENTS_PER_BLOCK = 2.0   # STORED + EVICTED per prefilled block in steady state
BLOCK_SIZE = 16          # tokens a KV block (cluster/config.py's default block_size)


@dataclass(frozen=True)
class RouterCost:
    ingest_blocks_per_s: float         # event blocks one core applies a second (the slowest measured form)
    decision_us: dict[int, float]      # mean decision CPU time by replicas picked among
    hash_us_per_block: float           # hashing a prompt's tokens, per block
    predict_us_per_block: float        # recording a routed prompt's prediction, per block
    bytes_per_block: float             # index memory per cached block
    source: str

    @classmethod
    def from_dict(cls, data: dict, impl: str = IMPL, source: str = "") -> RouterCost:
        try:
            m = data["impls"][impl]
            return cls(float(m["ingest_blocks_per_s"]), {int(k): float(v) for k, v in m["decision_us"].items()},
                       float(m["hash_us_per_block"]), float(m["predict_us_per_block"]), float(m["bytes_per_block"]),
                       source or f"{impl}, {data.get('source', '?')} ({data.get('date', '?')}, {data.get('cpu', '?')})")
        except (KeyError, TypeError, ValueError) as e:
            raise SimInputError(f"router cost measurements: no usable {impl!r} entry ({e})") from None

    @classmethod
    def load(cls, path: Path = MEASURED, impl: str = IMPL) -> RouterCost | None:
        """The measurements in ``path`` (router_scale.py's router_cost.json); None where absent."""
        if not path.exists():
            return None
        return cls.from_dict(json.loads(path.read_text()), impl, f"{impl}, measured in {path.parent.name}")

    def decision_s(self, replicas: int) -> float:
        """A decision's CPU seconds among ``replicas``: interpolated in log(replicas) between the
        measured counts, extended linearly in replicas past the largest (the pick is a scan)."""
        sizes = sorted(self.decision_us)
        if replicas <= sizes[0]:
            return self.decision_us[sizes[0]] * 1e-6
        if replicas >= sizes[-1]:
            return self.decision_us[sizes[-1]] * replicas / sizes[-1] * 1e-6
        hi = next(i for i, n in enumerate(sizes) if n >= replicas)
        a, b = sizes[hi - 1], sizes[hi]
        t = math.log(replicas / a) / math.log(b / a)
        return (self.decision_us[a] + t * (self.decision_us[b] - self.decision_us[a])) * 1e-6

    def request_s(self, replicas: int, prompt_blocks: float) -> float:
        """CPU seconds a router spends on one request."""
        per_block = (self.hash_us_per_block + self.predict_us_per_block) * 1e-6
        return self.decision_s(replicas) + prompt_blocks * per_block


@dataclass(frozen=True)
class RouterNeed:
    routers: int | None     # router processes (one core each); None: ingest alone overloads one
    ingest_cores: float     # per router: applying the event stream
    routing_cores: float    # all routers together: the requests
    index_bytes: float      # per router, for ``cached_blocks``
    source: str

    @property
    def cores(self) -> float:
        """Router CPU cores busy in all (every router ingests every event)."""
        return (self.routers or 1) * self.ingest_cores + self.routing_cores

    def text(self) -> str:
        if self.routers is None:
            return (f"router: event ingest alone needs {self.ingest_cores:.2f} cores per router, more than one "
                    f"can give: shard the event stream ({self.source})")
        index = f"; index {self.index_bytes / 1e6:.0f} MB per router" if self.index_bytes else ""
        return (f"router: {self.routers} process(es), one core each ({self.ingest_cores:.2g} cores per router "
                f"applying KV events, {self.routing_cores:.2g} routing in all{index}) ({self.source})")

    def as_dict(self) -> dict:
        return {"routers": self.routers, "ingest_cores_per_router": self.ingest_cores,
                "routing_cores": self.routing_cores, "cores": self.cores, "index_bytes": self.index_bytes,
                "source": self.source}


def routers_needed(cost: RouterCost, prefill_tokens_per_s: float, requests_per_s: float, replicas: int,
                   prompt_tokens: float, block_size: int, cached_blocks: float = 0.0,
                   utilization: float = UTILIZATION) -> RouterNeed:
    """Routers for a fleet that prefills ``prefill_tokens_per_s`` and takes ``requests_per_s``
    requests (of ``prompt_tokens`` on average), each picked among ``replicas``."""
    if block_size < 1 or replicas < 1 or not 0 < utilization <= 1:
        raise SimInputError("block_size and replicas must be >= 1 and utilization in (0, 1]")
    ingest = EVENTS_PER_BLOCK * prefill_tokens_per_s / block_size / cost.ingest_blocks_per_s
    routing = requests_per_s * cost.request_s(replicas, prompt_tokens / block_size)
    room = utilization - ingest
    routers = max(1, math.ceil(routing / room - 1e-9)) if room > 0 else None
    return RouterNeed(routers, ingest, routing, cached_blocks * cost.bytes_per_block, cost.source)


def for_design(design: Design, trace: Trace, cost: RouterCost | None = None,
               block_size: int = BLOCK_SIZE) -> RouterNeed | None:
    """Routers for ``design`` serving ``trace`` at its rate (every prompt token prefilled and
    published; requests picked among the prefill or colocated pool); None without measurements."""
    cost = cost if cost is not None else RouterCost.load()
    if cost is None or not math.isfinite(trace.rate):
        return None
    routed = design.prefill or design.colocated or next(iter(design.pools().values()))
    prompt = float(trace.prompt_tokens.mean())
    return routers_needed(cost, trace.rate * prompt, trace.rate, routed.replicas, prompt, block_size)
