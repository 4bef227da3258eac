"""Service-level objectives: ``ttft_p99=2,tbt_p99=0.1`` (seconds; ``ms`` suffix allowed)."""

from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import SimInputError

METRICS = ("ttft", "tbt", "tpot", "e2e")
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0}
KEYS = tuple(f"{m}_{p}" for m in METRICS for p in PERCENTILES)


@dataclass(frozen=True)
class SLO:
    """Upper bounds on latency percentiles, in seconds, keyed like ``ttft_p99``.

    ttft: time to first token; tbt: gap between consecutive tokens (all tokens); tpot: a
    request's mean gap; e2e: arrival to last token. A tbt bound also bounds tpot at the same
    percentile (unless tpot is given): a request that waits long for a decode slot stalls one
    token only, which token percentiles hide but its mean gap shows.
    """

    limits: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        for key, value in self.limits:
            if key not in KEYS:
                raise SimInputError(f"SLO key {key!r} is not one of {', '.join(KEYS)}")
            if not value > 0:
                raise SimInputError(f"SLO {key} must be > 0 seconds, got {value}")

    def limit(self, metric: str) -> float | None:
        """The tightest bound on a metric, for per-request attainment (tbt bounds tpot too)."""
        names = ("tbt", "tpot") if metric == "tpot" else (metric,)
        bounds = [v for k, v in self.limits if k.split("_")[0] in names]
        return min(bounds) if bounds else None

    @property
    def checked(self) -> tuple[tuple[str, float], ...]:
        """The bounds a result must meet: the given ones plus tpot bounds implied by tbt ones."""
        given = dict(self.limits)
        implied = [(k.replace("tbt", "tpot"), v) for k, v in self.limits
                   if k.startswith("tbt") and k.replace("tbt", "tpot") not in given]
        return self.limits + tuple(implied)

    def violations(self, percentiles: dict[str, float]) -> list[str]:
        return [f"{k}={percentiles[k]:.3g}s > {v:g}s" for k, v in self.checked if not percentiles[k] <= v]

    def text(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in self.limits)


def parse_slo(text: str) -> SLO:
    limits = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SimInputError(f"SLO item {item!r} is not key=seconds (e.g. ttft_p99=2,tbt_p99=0.1)")
        limits.append((key.strip(), _seconds(value.strip(), key)))
    if not limits:
        raise SimInputError("empty SLO: give e.g. ttft_p99=2,tbt_p99=0.1")
    return SLO(tuple(limits))


def _seconds(value: str, key: str) -> float:
    scale = 1e-3 if value.endswith("ms") else 1.0
    try:
        return float(value.removesuffix("ms").removesuffix("s")) * scale
    except ValueError:
        raise SimInputError(f"SLO {key}: {value!r} is not a number of seconds") from None
