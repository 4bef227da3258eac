"""Overlapped scheduling and token gaps: where a mixed iteration's time shows in the TBT.

With overlapped scheduling (EngineConfig.async_scheduling, the CUDA default) the engine launches step
k+1 before it reads step k's tokens. A decode step replays a CUDA graph, so its launch is short; a
mixed step (a prompt chunk beside the decode batch) run eagerly takes the host ``H`` seconds to
schedule, prepare and launch (on an H200 with Llama-3-8B, 14-21 ms, whatever its tokens). The tokens
of the decode step before it, done on the device after ``d`` seconds, reach the client only when that
launch is done: their gap is max(d, H), not d. The mixed step's own tokens come when the device is
done with it, d + T after the step before's start (T: the mixed step's time), so their gap is
T - (H - d). Its time is split between two gaps, not added to one: a 50 ms mixed step after a 6 ms
decode step with a 20 ms launch shows as gaps of 20 and 36 ms, not 6 and 50. The timeline (TTFT,
throughput) is unchanged: the prompt's first token still comes T after the step starts.

A cost model whose ``launches`` is true says ``launch_seconds(tokens)`` (calibration.py: measured host
time, or a host-bound prefill floor); without (the roofline, a profile with no launch times) nothing is
split, and a replica skips these terms.

The launch also bounds the timeline (2026-12-02, one colocated H200): an eager step takes at least its
host launch ``H`` plus the host launch of the decode step after it (``ServingCosts.next_launch_s``),
which the device waits for once the eager step's kernels are done (``host_floor``: in the serving
engine's step profiles the decode step after an eager one pays its own launch, 1.7-3.5 ms). And the
serving actor's I/O (token delivery) shares the host with those launches: a first token read back
at an iteration boundary where an eager step starts reaches the client after that step's launch
(``delivery_hold``; ``ServingCosts.delivery_waits_launch``).
"""

from __future__ import annotations


def launch_shift(cost: object, tokens: int, seconds: float, previous_gap: float) -> float:
    """Seconds a mixed iteration of ``tokens`` taking ``seconds`` moves from its own token gap to the
    previous step's (``previous_gap``): max(0, min(H, seconds) - previous_gap)."""
    launch = getattr(cost, "launch_seconds", None)
    if launch is None or previous_gap <= 0:
        return 0.0
    return max(0.0, min(launch(tokens), seconds) - previous_gap)


def host_floor(cost: object, tokens: int) -> float:
    """Seconds an iteration of ``tokens`` takes at least: its host launch and the next step's (0: not known)."""
    floor = getattr(cost, "host_floor_seconds", None)
    return floor(tokens) if floor is not None else 0.0


def delivery_hold(cost: object, tokens: int) -> float:
    """Seconds a first token read back as an iteration of ``tokens`` starts waits to reach the client."""
    hold = getattr(cost, "delivery_hold_seconds", None)
    return hold(tokens) if hold is not None else 0.0
