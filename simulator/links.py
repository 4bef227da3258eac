"""Links between tiers: bandwidth and latency of a transfer between devices of two hardware kinds."""

from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import SimInputError
from simulator.hardware import Catalog


@dataclass(frozen=True)
class Link:
    """A transfer of n bytes between one device of each side takes latency_s + n / bandwidth."""

    bandwidth: float
    latency_s: float

    def __post_init__(self) -> None:
        if not self.bandwidth > 0 or self.latency_s < 0:
            raise SimInputError(f"a link needs bandwidth > 0 and latency >= 0, got {self}")

    def seconds(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bandwidth


class LinkTable:
    """Links per tier pair (both directions): catalog links, then measured ones, else the slower NIC."""

    def __init__(self, catalog: Catalog, measured: dict[tuple[str, str], Link] | None = None) -> None:
        self.catalog = catalog
        self.links: dict[tuple[str, str], Link] = {}
        for o in catalog.links:
            self.links[_key(o.src, o.dst)] = Link(o.gbps * 1e9 / 8, o.latency_us * 1e-6)
        for (src, dst), link in (measured or {}).items():
            _ = catalog[src], catalog[dst]  # unknown names raise
            self.links[_key(src, dst)] = link

    def between(self, a: str, b: str) -> Link:
        link = self.links.get(_key(a, b))
        if link is not None:
            return link
        ha, hb = self.catalog[a], self.catalog[b]
        return Link(min(ha.network_bandwidth, hb.network_bandwidth),
                    max(ha.network_latency_us, hb.network_latency_us) * 1e-6)


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def fit_link(points: list[tuple[float, float]]) -> Link:
    """Least-squares latency + bytes/bandwidth through (bytes, seconds) points; one point: no latency."""
    if not points:
        raise SimInputError("no link measurements to fit")
    if len({b for b, _ in points}) == 1:
        nbytes = points[0][0]
        return Link(nbytes / min(s for _, s in points), 0.0)
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_s = sum(s for _, s in points) / n
    cov = sum((b - mean_b) * (s - mean_s) for b, s in points)
    var = sum((b - mean_b) ** 2 for b, _ in points)
    slope = cov / var
    if slope <= 0:
        raise SimInputError(f"link measurements do not grow with size: {points}")
    return Link(1 / slope, max(0.0, mean_s - slope * mean_b))
