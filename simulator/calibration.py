"""Roofline times corrected by measured profiles, where measured.

Decode steps: for each measured batch size, a line through (batch context, seconds) (one
context: the roofline line scaled through the point); between measured batch sizes the
correction (measured / roofline) of both terms is interpolated, outside them the nearest is
kept. Prefill: the ratio measured / roofline, interpolated in log(tokens), nearest outside.
Mixed steps (a prompt prefilled beside a decode batch, ``mixed_step``), where measured, take the
place of the prefill correction for mixed iterations: measured / roofline of the whole mixed work,
interpolated in log(prompt tokens + batch). Launch time (``launch_seconds``): the host time an
engine step of that many tokens takes to schedule, prepare and launch, which overlapped scheduling
hides behind the step before it (simulator/overlap.py), times the serving stack's ``launch_scale``
(serving.py): the points' ``host_seconds`` where measured
(mixed steps first, averaged over their batch sizes per prompt length: one host's launches vary by
~30% from one batch size's points to the next), else the prefill curve's floor when it is flat (its
two shortest points within 10%: a host-bound eager step, whatever its tokens), else none. A serving
engine's iteration takes at least that launch plus the next step's (``host_floor_seconds``:
ServingCosts.next_launch_s; overlap.py), and with ServingCosts.delivery_waits_launch a first token
read back as an eager iteration starts reaches the client after its launch (``delivery_hold_seconds``).
Attention-only measurements correct the per-token attention cost (used for offload).
Shared-prefix decode: a measurement less its suffixes (at the per-token attention cost) is the
shared prefix's own cost. Per measured batch size it is piecewise linear in the prefix through
the measured points, constant below the shortest (the path's fixed costs), proportional beyond
the longest; between measured batch sizes its correction (/ the roofline's: prefix read once,
FLOPs as a matmul) is interpolated, outside them the nearest is kept. Without measurements the
roofline's is scaled like the attention.
"""

from __future__ import annotations

import bisect
import math
import statistics

from simulator.errors import SimInputError
from simulator.operators import Work, decode_work, prefill_work
from simulator.profiles import Measurement, Profile
from simulator.roofline import Piece, RooflineCost


def _mean_curve(points: list[tuple[float, float]]) -> tuple[list[float], list[float]] | None:
    """Sorted xs and the mean y at each (None without points)."""
    by_x: dict[float, list[float]] = {}
    for x, y in points:
        by_x.setdefault(x, []).append(y)
    xs = sorted(by_x)
    return (xs, [statistics.fmean(by_x[x]) for x in xs]) if xs else None


def _held_then_proportional(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear through sorted positive xs, constant below the first, proportional beyond the last."""
    return ys[-1] * x / xs[-1] if x >= xs[-1] else _interpolate(xs, ys, x)


def _interpolate(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear through sorted xs, constant beyond the ends."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    f = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + f * (ys[i] - ys[i - 1])


class CalibratedCost:
    """RooflineCost's interface, with measured corrections (see module doc)."""

    def __init__(self, roofline: RooflineCost, profile: Profile, launch_scale: float = 1.0,
                 next_launch_s: float = 0.0, delivery_waits_launch: bool = False,
                 decode_batch_slowdown: float = 0.0) -> None:
        if profile.device != roofline.hw.name or profile.tp != roofline.tp:
            raise SimInputError(f"profile for {profile.device} tp={profile.tp} does not fit "
                                f"{roofline.hw.name} tp={roofline.tp}")
        self.roofline, self.model, self.hw, self.tp = roofline, roofline.model, roofline.hw, roofline.tp
        self._prefill = self._prefill_ratios(profile.of("prefill"))
        self._attention_ratio = self._attention(profile.of("attention"))
        self._shared = self._shared_costs(profile.of("shared_prefix_decode"), profile.device)
        self._decode = self._decode_ratios(profile.of("decode_step"))
        self._mixed = self._mixed_ratios(profile.of("mixed_step"))
        self._launch = self._launch_curve(profile.of("mixed_step"), profile.of("prefill"))
        self.launch_scale = launch_scale  # serving.py: the serving engine's host against the profile's
        self.next_launch_s, self.delivery_waits_launch = next_launch_s, delivery_waits_launch
        self.decode_batch_slowdown = decode_batch_slowdown  # serving.py: a serving decode step against the profile's
        self._pieces: dict[int, tuple[Piece, ...]] = {}

    def _mixed_ratios(self, points: list[Measurement]) -> tuple[list[float], list[float]] | None:
        roof = self.roofline.seconds
        return _mean_curve([(math.log(p.tokens + p.batch), p.seconds / roof(
            prefill_work(p.tokens, 0, 1) + decode_work(p.batch, p.batch * p.context))) for p in points])

    @staticmethod
    def _launch_curve(mixed: list[Measurement], prefill: list[Measurement]
                      ) -> tuple[list[float], list[float]] | None:
        """(log tokens, host seconds) of measured launches, else a flat prefill floor as one point."""
        hosts = [p for p in mixed if p.host_seconds]
        if hosts:
            by_tokens: dict[int, list[Measurement]] = {}
            for p in hosts:
                by_tokens.setdefault(p.tokens, []).append(p)
            return _mean_curve([(math.log(statistics.fmean(p.tokens + p.batch for p in ps)),
                                 statistics.fmean(p.host_seconds for p in ps)) for ps in by_tokens.values()])
        if any(p.host_seconds for p in prefill):
            return _mean_curve([(math.log(p.tokens), p.host_seconds) for p in prefill if p.host_seconds])
        times = sorted(p.seconds for p in prefill if p.context == 0)
        if len(times) >= 2 and times[1] <= 1.1 * times[0]:
            return [0.0], [times[0]]
        return None

    @property
    def launches(self) -> bool:
        """Whether the profile gives host launch times (without, every launch term is 0: overlap.py)."""
        return self._launch is not None

    def launch_seconds(self, tokens: int) -> float:
        """Host seconds to schedule, prepare and launch a step of ``tokens`` (0: not known)."""
        if self._launch is None:
            return 0.0
        return _interpolate(*self._launch, math.log(max(1, tokens))) * self.launch_scale

    def host_floor_seconds(self, tokens: int) -> float:
        """The least a serving engine's iteration of ``tokens`` takes: its launch and the next step's."""
        return self.launch_seconds(tokens) + self.next_launch_s if self._launch is not None else 0.0

    def delivery_hold_seconds(self, tokens: int) -> float:
        """How long a first token read back as an iteration of ``tokens`` starts waits for its launch."""
        return self.launch_seconds(tokens) if self.delivery_waits_launch else 0.0

    def _prefill_ratios(self, points: list[Measurement]) -> tuple[list[float], list[float]] | None:
        roof = self.roofline.seconds
        return _mean_curve([(math.log(p.tokens), p.seconds / roof(prefill_work(p.tokens, p.context, 1)))
                            for p in points])

    def _shared_costs(self, points: list[Measurement], device: str) -> tuple[list[float], list] | None:
        """Per measured batch size, (prefix tokens, seconds of a step) of the shared prefix's own cost."""
        layers = self.model.num_layers
        per_layer = self.attention_seconds_per_token() / layers
        by_batch: dict[int, list[tuple[float, float]]] = {}
        for p in points:
            suffixes = per_layer * p.layers * p.batch * p.suffix
            if p.seconds <= suffixes:
                raise SimInputError(f"profile for {device}: shared_prefix_decode at batch {p.batch}, prefix {p.prefix} "
                                    f"takes {p.seconds:.3g} s, no more than its suffixes' modeled attention "
                                    f"({suffixes:.3g} s)")
            by_batch.setdefault(p.batch, []).append((p.prefix, (p.seconds - suffixes) * layers / p.layers))
        batches = sorted(by_batch)
        return ([float(b) for b in batches], [_mean_curve(by_batch[b]) for b in batches]) if batches else None

    def _attention(self, points: list[Measurement]) -> float:
        per_layer = self.roofline.attention_seconds_per_token() / self.model.num_layers
        ratios = [p.seconds / (per_layer * p.layers * p.batch * p.context) for p in points]
        return statistics.median(ratios) if ratios else 1.0

    def _decode_ratios(self, points: list[Measurement]) -> tuple[list[float], list[float], list[float]] | None:
        by_batch: dict[int, list[tuple[float, float]]] = {}
        for p in points:
            by_batch.setdefault(p.batch, []).append((p.batch * p.context, p.seconds))
        if not by_batch:
            return None
        beta = self.roofline.attention_seconds_per_token()
        batches = sorted(by_batch)
        fits = [self._line_ratios(b, by_batch[b], beta) for b in batches]
        return [float(b) for b in batches], [f[0] for f in fits], [f[1] for f in fits]

    def _line_ratios(self, batch: int, points: list[tuple[float, float]], beta: float) -> tuple[float, float]:
        alpha = self.roofline.seconds(decode_work(batch, 0))
        if len({c for c, _ in points}) < 2:
            r = statistics.fmean(s / (alpha + beta * c) for c, s in points)
            return r, r
        mean_c = statistics.fmean(c for c, _ in points)
        mean_s = statistics.fmean(s for _, s in points)
        slope = (sum((c - mean_c) * (s - mean_s) for c, s in points)
                 / sum((c - mean_c) ** 2 for c, _ in points))
        if slope < 0:
            raise SimInputError(f"decode_step measurements at batch {batch} get faster with more context")
        return max(0.0, mean_s - slope * mean_c) / alpha, slope / beta

    def attention_seconds_per_token(self) -> float:
        return self.roofline.attention_seconds_per_token() * self._attention_ratio

    def decode_attention_per_token(self, batch: int) -> float:
        return self.decode_pieces(batch)[0][2]

    def shared_prefix_seconds(self, members: int, tokens: int) -> float:
        roof = self.roofline.shared_prefix_seconds(members, tokens)
        if self._shared is None or tokens <= 0:
            return roof * self._attention_ratio
        batches, curves = self._shared
        ratios = [_held_then_proportional(*curve, tokens) / self.roofline.shared_prefix_seconds(int(b), tokens)
                  for b, curve in zip(batches, curves)]
        return roof * _interpolate(batches, ratios, members)

    def seconds(self, work: Work) -> float:
        roof = self.roofline.seconds(work)
        if self._prefill is None:
            return roof
        return roof * _interpolate(*self._prefill, math.log(max(1, work.tokens)))

    def mixed_seconds(self, chunks: Work, batch: int, context: int) -> float:
        """One pass over prefill chunks and decode tokens: the mixed work at the measured mixed-step
        correction, else at the prefill correction."""
        work = chunks + decode_work(batch, context)
        if self._mixed is None:
            return self.seconds(work)
        return self.roofline.seconds(work) * _interpolate(*self._mixed, math.log(max(1, work.tokens)))

    def decode_pieces(self, batch: int) -> tuple[Piece, ...]:
        pieces = self._pieces.get(batch)
        if pieces is None:
            alpha = self.roofline.seconds(decode_work(batch, 0))
            beta = self.attention_seconds_per_token()
            if self._decode is not None:
                xs, ra, rb = self._decode
                alpha *= _interpolate(xs, ra, batch)
                beta = self.roofline.attention_seconds_per_token() * _interpolate(xs, rb, batch)
            if self.decode_batch_slowdown:
                slower = 1.0 + self.decode_batch_slowdown * batch
                alpha, beta = alpha * slower, beta * slower
            pieces = self._pieces[batch] = ((0.0, alpha, beta),)
        return pieces
