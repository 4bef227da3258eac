"""Decode steps with attention offloaded (Lamina-style): dense operators on the compute replica,
attention on a share of the attention pool's memory devices, q/k/v and outputs over the network.

With ``micro_batches`` batches rotating through the three stages (dense, network, attention),
a step takes the slowest stage plus 1/micro_batches of the others (the pipeline's fill):
``T = max(dense, net, attn) + (dense + net + attn - max) / micro_batches``. Only attention grows
with the context, so T is two affine pieces in the context (the kink where attention becomes
the slowest stage).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from simulator.errors import SimInputError
from simulator.operators import Work
from simulator.profiles import Profile
from simulator.roofline import IterationCost, Piece


def _curve(points: list[tuple[float, float]], x: float) -> float:
    """Through sorted (x, y) points: linear between them, proportional beyond the last (the work grows with
    the batch), the first below it (fixed costs)."""
    if x >= points[-1][0]:
        return points[-1][1] * x / points[-1][0]
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    raise AssertionError


@dataclass(frozen=True)
class OffloadCurves:
    """Measured stages of offloaded decode steps on one compute device (benchmarks/offload_decode.py):
    the model worker's dense part and the link's part of a step by batch size, and measured whole steps.
    ``correction(m)``: the mean of measured / modeled step time over the measured steps with m micro-batches
    (the pipeline's fill and the host's gaps that the stage model leaves out); 1 when none was measured."""

    dense: tuple[tuple[int, float], ...] = ()
    link: tuple[tuple[int, float], ...] = ()
    steps: tuple[tuple[int, int, int, float], ...] = ()  # (batch, context per sequence, micro-batches, seconds)

    @classmethod
    def of(cls, profile: Profile | None) -> OffloadCurves | None:
        if profile is None or not (profile.of("offload_dense") or profile.of("offload_link")):
            return None

        def mean_by_batch(op: str) -> tuple[tuple[int, float], ...]:
            by: dict[int, list[float]] = {}
            for m in profile.of(op):
                by.setdefault(m.batch, []).append(m.seconds)
            return tuple(sorted((b, statistics.fmean(v)) for b, v in by.items()))
        steps = tuple((m.batch, m.context, m.micro_batches, m.seconds) for m in profile.of("offload_step"))
        return cls(mean_by_batch("offload_dense"), mean_by_batch("offload_link"), steps)


@dataclass(frozen=True)
class OffloadLink:
    bandwidth: float  # bytes/s from one compute replica to its attention devices
    latency_s: float  # one way


class OffloadCost:
    """Decode cost of one compute replica that uses ``share`` attention devices (fractional: the
    pool is shared evenly between compute replicas)."""

    def __init__(self, compute: IterationCost, attention: IterationCost, share: float, link: OffloadLink,
                 micro_batches: int = 2, curves: OffloadCurves | None = None) -> None:
        """``curves``: measured dense and link stages replace the compute cost's and the link's estimates,
        and the modeled step is scaled by the measured steps' correction for ``micro_batches``."""
        if share <= 0 or micro_batches < 1:
            raise SimInputError("offload share must be > 0 and micro_batches >= 1")
        if attention.tp != 1:
            raise SimInputError("attention devices are modeled one by one (tp=1)")
        self.compute, self.attention, self.share = compute, attention, share
        self.micro_batches, self.link = micro_batches, link
        self.model, self.hw, self.tp = compute.model, compute.hw, compute.tp
        self.attention_per_token = attention.attention_seconds_per_token() / share
        m = compute.model
        self.bytes_per_token = m.num_layers * (2 * m.num_heads + 2 * m.num_kv_heads) * m.head_dim * m.dtype_bytes
        self._pieces: dict[int, tuple[Piece, ...]] = {}
        self.curves = curves
        self.correction = 1.0
        if curves is not None and curves.steps:  # against the uncorrected model
            ratios = [s / self._modeled(b, b * c, m) for b, c, m, s in curves.steps if m == micro_batches]
            self.correction = statistics.fmean(ratios) if ratios else 1.0

    def stages(self, batch: int, context: int) -> tuple[float, float, float]:
        """(dense seconds, network seconds, attention seconds) of one step."""
        c = self.curves
        dense = _curve(c.dense, batch) if c and c.dense else self.compute.decode_pieces(batch)[0][1]
        if c and c.link:
            net = _curve(c.link, batch)
        else:
            net = batch * self.bytes_per_token / self.link.bandwidth + 2 * self.model.num_layers * self.link.latency_s
        return dense, net, context * self.attention_per_token

    def _modeled(self, batch: int, context: int, micro_batches: int) -> float:
        stages = self.stages(batch, context)
        slowest = max(stages)
        return slowest + (sum(stages) - slowest) / micro_batches

    def attention_seconds_per_token(self) -> float:
        return self.attention_per_token

    def decode_attention_per_token(self, batch: int) -> float:
        return self.attention_per_token

    def shared_prefix_seconds(self, members: int, tokens: int) -> float:
        """On the attention devices (the attention stage)."""
        return self.attention.shared_prefix_seconds(members, tokens) / self.share

    def step_seconds(self, batch: int, context: int) -> float:
        return self.correction * self._modeled(batch, context, self.micro_batches)

    def decode_pieces(self, batch: int) -> tuple[Piece, ...]:
        pieces = self._pieces.get(batch)
        if pieces is None:
            pieces = self._pieces[batch] = self._make_pieces(batch)
        return pieces

    def _make_pieces(self, batch: int) -> tuple[Piece, ...]:
        dense, net, _ = self.stages(batch, 0)
        y, k, f = self.attention_per_token, self.micro_batches, self.correction
        top = max(dense, net)
        below = (0.0, f * (top + (dense + net - top) / k), f * y / k)
        above = (top / y, f * (dense + net) / k, f * y)
        return (below, above)

    def seconds(self, work: Work) -> float:
        """Prefill is not offloaded: a mixed iteration runs on the compute replica as usual."""
        return self.compute.seconds(work)

    def mixed_seconds(self, chunks: Work, batch: int, context: int) -> float:
        """A preempted request's recompute beside a decode step: the chunks on the compute replica, then
        the offloaded step (the engine runs them as two passes)."""
        return self.compute.seconds(chunks) + self.step_seconds(batch, context)

