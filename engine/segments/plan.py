"""A request's segment plan: its reusable spans and what was decided and done for its current
attempt (engine/segments/planner.py decides). Light: engine/request.py holds one."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.segments.spec import SegmentKey, SegmentReuse


@dataclass
class PlannedSpan:
    """One segment of a request: tokens [start, end); reused tokens would be [probe_end, fill_end)."""

    start: int
    end: int
    key: SegmentKey
    probe_end: int
    fill_end: int
    context: bytes | None = None  # hash of the prompt before it, computed when first needed

    @property
    def fillable(self) -> bool:
        return self.probe_end < self.fill_end


@dataclass
class SegmentPlan:
    """A request's segments and, for its current attempt, what was decided and done."""

    reuse: SegmentReuse
    spans: list[PlannedSpan]
    position: int = 0                                   # the furthest position planned at
    computed: set[int] = field(default_factory=set)     # spans decided to be computed in full
    filled: dict[int, int] = field(default_factory=dict)  # span -> tokens filled
    captured: set[int] = field(default_factory=set)     # spans whose KV was stored

    @property
    def num_reused_tokens(self) -> int:
        return sum(self.filled.values())

    def restart(self) -> None:
        self.computed.clear()
        self.filled.clear()
        self.captured.clear()
