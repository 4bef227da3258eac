"""Per-request serving costs of each path: what the engine-step profiles do not see.

A request's trip through a real cluster adds work and latency beside the engine's steps: the
router's dispatch and the Ray calls in and out (``latency_s``: added to what the client sees of
TTFT and every later token), engine time per request serialized with the iterations
(``busy_s``: a prefill worker's handoff under its peer lock and the calls around it, a decode
engine receiving a KV handoff between two steps, a colocated engine admitting a request), and
on the disaggregated path the calls that set up a handoff before its bytes move
(``handoff_s``). Host noise: every engine step takes ``step_jitter_s * (f - 1)`` longer, ``f``
lognormal of median 1 and log-sd ``step_jitter`` (additive, right-skewed: a garbage collection or a
late Ray call costs a 5 ms decode step and a 30 ms prefill iteration the same milliseconds). It widens
TBT tails (tbt.py; the closed-form step runs alone leave them at the mean step) and is drawn per
prefill iteration (seeded), so it adds to the prefill path's queueing. Host launch: a serving engine's
host schedules, prepares and launches a step ``launch_scale`` times slower than the profile measured
it standalone (the actor's other threads share the GIL and the cores); with overlapped scheduling that
launch decides how a mixed iteration's time splits between two token gaps (overlap.py). Next launch:
the host seconds the serving engine takes to schedule, prepare and launch the decode step after an
eager one (``next_launch_s``), which the device waits for: an eager iteration takes at least its
launch plus that. Delivery: with ``delivery_waits_launch`` the actor's token delivery shares the host
with the engine's launches, so a first token read back as an eager step starts reaches the client
after that step's launch (overlap.py). Decode batch: the serving engine's decode step of B sequences
takes ``1 + decode_batch_slowdown * B`` times the standalone profile's (its per-sequence host work,
token delivery and mixed contexts, which a one-context decode benchmark does not have: measured by
comparing serve.py's step profiles with the same machine's decode-step profile,
``benchmarks.sim_vs_measured.decode_batch_slowdown``); a calibrated decode step only.

Profiles carry them. No command measures them on the user's cluster (`tierserve calibrate` times a
standalone engine, which has none of these costs); they are fitted from serving runs by
``python -m benchmarks.sim_vs_measured --fit`` (all fitted costs, a coordinate search on the 2xH200
sessions j, k) or ``--fit-launch`` (``launch_scale`` alone, a grid), which write OUT/serving_fit.json,
``{"serving": {...}}``: that entry, copied into a profile, is read as

    "serving": {"prefill": {"latency_s": 0.008, "busy_s": 0.011, "handoff_s": 0.004},
                "decode": {"busy_s": 0.002}, "colocated": {"latency_s": 0.006, "busy_s": 0.001},
                "step_jitter": 0.5, "step_jitter_s": 0.003, "source": "fitted from benchmarks/results/serve-2xh200-..."}

Without one, the command line uses ``TIERSERVE_STACK``: tierserve's own stack as fitted on the
2xH200 runs (docs/simulator.md); library callers get ``NONE`` (the bare engine model).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from simulator.errors import SimInputError

PATHS = ("prefill", "decode", "colocated")


@dataclass(frozen=True)
class PathCosts:
    latency_s: float = 0.0   # seconds the client sees added to TTFT (and to each later token)
    busy_s: float = 0.0      # engine seconds per request, serialized with its iterations
    handoff_s: float = 0.0   # prefill path: calls before a KV handoff's bytes move

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 60:
                raise SimInputError(f"serving cost {f.name} must be seconds in [0, 60), got {value!r}")

    def scaled(self, factor: float) -> PathCosts:
        return PathCosts(*(getattr(self, f.name) * factor for f in fields(self)))


@dataclass(frozen=True)
class ServingCosts:
    prefill: PathCosts = PathCosts()
    decode: PathCosts = PathCosts()
    colocated: PathCosts = PathCosts()
    step_jitter: float = 0.0      # log-sd of the host noise's lognormal factor
    step_jitter_s: float = 0.005  # the host noise's scale, seconds
    launch_scale: float = 1.0     # host launch time in the serving engine / the profile's (overlap.py)
    next_launch_s: float = 0.0    # host launch of the decode step after an eager one, seconds (overlap.py)
    delivery_waits_launch: bool = False  # a first token read back as an eager step starts waits for its launch
    decode_batch_slowdown: float = 0.0  # a serving decode step of B sequences: (1 + this * B) x the profile's
    source: str = "none"

    def __post_init__(self) -> None:
        if not 0 <= self.step_jitter <= 2:
            raise SimInputError(f"step_jitter must be a log-sd in [0, 2], got {self.step_jitter!r}")
        if not 0 <= self.step_jitter_s < 1:
            raise SimInputError(f"step_jitter_s must be seconds in [0, 1), got {self.step_jitter_s!r}")
        if not 0 < self.launch_scale <= 10:
            raise SimInputError(f"launch_scale must be in (0, 10], got {self.launch_scale!r}")
        if not isinstance(self.next_launch_s, int | float) or not 0 <= self.next_launch_s < 1:
            raise SimInputError(f"next_launch_s must be seconds in [0, 1), got {self.next_launch_s!r}")
        if not isinstance(self.delivery_waits_launch, bool):
            raise SimInputError(f"delivery_waits_launch must be true or false, got {self.delivery_waits_launch!r}")
        if not isinstance(self.decode_batch_slowdown, int | float) or not 0 <= self.decode_batch_slowdown < 0.1:
            raise SimInputError(f"decode_batch_slowdown must be a fraction per sequence in [0, 0.1), "
                                f"got {self.decode_batch_slowdown!r}")

    def scaled(self, factor: float) -> ServingCosts:
        """Every per-request cost ``factor`` times larger (a slower host or stack)."""
        return replace(self, prefill=self.prefill.scaled(factor), decode=self.decode.scaled(factor),
                       colocated=self.colocated.scaled(factor))

    def as_dict(self) -> dict:
        out: dict = {p: {f.name: getattr(getattr(self, p), f.name) for f in fields(PathCosts)} for p in PATHS}
        return {**out, "step_jitter": self.step_jitter, "step_jitter_s": self.step_jitter_s,
                "launch_scale": self.launch_scale, "next_launch_s": self.next_launch_s,
                "delivery_waits_launch": self.delivery_waits_launch,
                "decode_batch_slowdown": self.decode_batch_slowdown, "source": self.source}


NONE = ServingCosts()

# tierserve's serving stack (Ray actors, dispatcher, NCCL handoff under the peer lock) as fitted by
# `python -m benchmarks.sim_vs_measured --fit` on the 2xH200 serve runs of 2026-11-23 (sessions j and
# k; session l held out), Llama-3-8B, ~1K-token prompts. Host-side costs: they scale with the host and
# the stack's version more than with the GPU.
TIERSERVE_STACK = ServingCosts(
    prefill=PathCosts(latency_s=0.0058, busy_s=0.0201, handoff_s=0.0042),
    decode=PathCosts(busy_s=0.0036),
    # latency_s: 8.7 ms in the first fit; 6 ms refit on j, k's colocated runs (a grid, the rest held)
    # once delivery waits for eager launches (2026-12-02c)
    colocated=PathCosts(latency_s=0.006, busy_s=0.0001),
    step_jitter=0.18,
    launch_scale=1.231,  # `--fit-launch` (2026-12-02): with the other costs held, a grid over [0.5, 2]
    # measured, not fitted: the serving engine's decode steps at 4 req/s (session m, 2026-12-02; batch ~3):
    # schedule + prepare + forward 1.7 ms, and the eager step's finish before it
    next_launch_s=0.0018,
    delivery_waits_launch=True,
    # measured, not fitted: serve.py's decode steps over the decode-step profile of the same machine,
    # sessions m and n (one H200 each, 2026-12-02; 16 runs, batch 3-37): 0.0055; session o (held out,
    # another machine): 0.0074
    decode_batch_slowdown=0.0055,
    source="tierserve stack, fitted on the 2xH200 serve runs of 2026-11-23 (docs/simulator.md)")


def parse_serving(entry: object, where: str) -> ServingCosts:
    """A profile's ``serving`` object."""
    if not isinstance(entry, dict):
        raise SimInputError(f"{where}: serving must be an object")
    unknown = set(entry) - {*PATHS, "step_jitter", "step_jitter_s", "launch_scale", "next_launch_s",
                            "delivery_waits_launch", "decode_batch_slowdown", "source"}
    if unknown:
        raise SimInputError(f"{where}: serving has unknown key(s) {sorted(unknown)}")
    paths = {}
    for path in PATHS:
        costs = entry.get(path, {})
        names = {f.name for f in fields(PathCosts)}
        if not isinstance(costs, dict) or set(costs) - names:
            raise SimInputError(f"{where}: serving.{path} must be an object with {sorted(names)}")
        try:
            paths[path] = PathCosts(**costs)
        except SimInputError as e:
            raise SimInputError(f"{where}: serving.{path}: {e}") from None
    try:
        return ServingCosts(**paths, step_jitter=entry.get("step_jitter", 0.0),
                            step_jitter_s=entry.get("step_jitter_s", ServingCosts.step_jitter_s),
                            launch_scale=entry.get("launch_scale", ServingCosts.launch_scale),
                            next_launch_s=entry.get("next_launch_s", ServingCosts.next_launch_s),
                            delivery_waits_launch=entry.get("delivery_waits_launch",
                                                            ServingCosts.delivery_waits_launch),
                            decode_batch_slowdown=entry.get("decode_batch_slowdown",
                                                            ServingCosts.decode_batch_slowdown),
                            source=str(entry.get("source", where)))
    except SimInputError as e:
        raise SimInputError(f"{where}: serving: {e}") from None
