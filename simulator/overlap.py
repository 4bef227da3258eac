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

A cost model says ``launch_seconds(tokens)`` (calibration.py: measured host time, or a host-bound
prefill floor); without it (the roofline) nothing is split.
"""

from __future__ import annotations


def launch_shift(cost: object, tokens: int, seconds: float, previous_gap: float) -> float:
    """Seconds a mixed iteration of ``tokens`` taking ``seconds`` moves from its own token gap to the
    previous step's (``previous_gap``): max(0, min(H, seconds) - previous_gap)."""
    launch = getattr(cost, "launch_seconds", None)
    if launch is None or previous_gap <= 0:
        return 0.0
    return max(0.0, min(launch(tokens), seconds) - previous_gap)
