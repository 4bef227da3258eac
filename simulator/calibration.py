"""Roofline times corrected by measured profiles, where measured.

Decode steps: for each measured batch size, a line through (batch context, seconds) (one
context: the roofline line scaled through the point); between measured batch sizes the
correction (measured / roofline) of both terms is interpolated, outside them the nearest is
kept. Prefill: the ratio measured / roofline, interpolated in log(tokens), nearest outside.
Attention-only measurements correct the per-token attention cost (used for offload).
"""

from __future__ import annotations

import bisect
import math
import statistics

from simulator.errors import SimInputError
from simulator.operators import Work, decode_work, prefill_work
from simulator.profiles import Measurement, Profile
from simulator.roofline import Piece, RooflineCost


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

    def __init__(self, roofline: RooflineCost, profile: Profile) -> None:
        if profile.device != roofline.hw.name or profile.tp != roofline.tp:
            raise SimInputError(f"profile for {profile.device} tp={profile.tp} does not fit "
                                f"{roofline.hw.name} tp={roofline.tp}")
        self.roofline, self.model, self.hw, self.tp = roofline, roofline.model, roofline.hw, roofline.tp
        self._prefill = self._prefill_ratios(profile.of("prefill"))
        self._attention_ratio = self._attention(profile.of("attention"))
        self._decode = self._decode_ratios(profile.of("decode_step"))
        self._pieces: dict[int, tuple[Piece, ...]] = {}

    def _prefill_ratios(self, points: list[Measurement]) -> tuple[list[float], list[float]] | None:
        by_size: dict[float, list[float]] = {}
        for p in points:
            roof = self.roofline.seconds(prefill_work(p.tokens, p.context, 1))
            by_size.setdefault(math.log(p.tokens), []).append(p.seconds / roof)
        xs = sorted(by_size)
        return (xs, [statistics.fmean(by_size[x]) for x in xs]) if xs else None

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

    def seconds(self, work: Work) -> float:
        roof = self.roofline.seconds(work)
        if self._prefill is None:
            return roof
        return roof * _interpolate(*self._prefill, math.log(max(1, work.tokens)))

    def decode_pieces(self, batch: int) -> tuple[Piece, ...]:
        pieces = self._pieces.get(batch)
        if pieces is None:
            alpha = self.roofline.seconds(decode_work(batch, 0))
            beta = self.attention_seconds_per_token()
            if self._decode is not None:
                xs, ra, rb = self._decode
                alpha *= _interpolate(xs, ra, batch)
                beta = self.roofline.attention_seconds_per_token() * _interpolate(xs, rb, batch)
            pieces = self._pieces[batch] = ((0.0, alpha, beta),)
        return pieces
