"""Per-request stage timings of the disaggregated path (prefill, handoff, decode)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class StageTimings:
    """Seconds spent in each stage, in the order they ended."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    stages: dict[str, float] = field(default_factory=dict)
    workers: dict[str, str] = field(default_factory=dict)   # role -> the replica that served it
    _last: float = 0.0

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = now - (self._last or self.started)
        self._last = now

    @property
    def total(self) -> float:
        return sum(self.stages.values())


class TimingLog:
    """The timings of the most recent requests (bounded)."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self.entries: OrderedDict[str, StageTimings] = OrderedDict()

    def start(self, request_id: str) -> StageTimings:
        timings = self.entries[request_id] = StageTimings(request_id)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return timings

    def get(self, request_id: str) -> StageTimings | None:
        return self.entries.get(request_id)
