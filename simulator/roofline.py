"""Roofline iteration times: each operator takes max(FLOPs / reachable FLOP/s, bytes / reachable
bandwidth) on its device group, and an iteration is the sum of its operators plus a fixed overhead."""

from __future__ import annotations

from typing import Protocol

from simulator.errors import SimInputError
from simulator.hardware import HardwareSpec
from simulator.models import ModelSpec
from simulator.operators import Op, OpShape, Work, decode_work, evaluate, op_table
from simulator.row_sum import compile_rows

Piece = tuple[float, float, float]  # (context from, seconds at context 0, seconds per context token)


class IterationCost(Protocol):
    """What the simulator asks of a cost model (RooflineCost, CalibratedCost, OffloadCost)."""

    model: ModelSpec
    hw: HardwareSpec
    tp: int

    def seconds(self, work: Work) -> float:
        """One iteration (prefill chunks, or chunks mixed with decode tokens)."""

    def mixed_seconds(self, chunks: Work, batch: int, context: int) -> float:
        """One iteration of prefill ``chunks`` beside a decode step of ``batch`` sequences (total context)."""

    def decode_pieces(self, batch: int) -> tuple[Piece, ...]:
        """A decode step of ``batch`` sequences as affine pieces in their total context, sorted by start."""

    def attention_seconds_per_token(self) -> float:
        """Decode attention seconds per context token."""

    def decode_attention_per_token(self, batch: int) -> float:
        """Attention seconds per context token in a decode step of ``batch`` sequences (the slope of
        its pieces in the context where attention binds)."""

    def shared_prefix_seconds(self, members: int, tokens: int) -> float:
        """A decode step's attention over a ``tokens``-long prefix that ``members`` sequences share
        (Hydragen: its K/V read once, its FLOPs as one matrix product), in decode_attention_per_token's units."""


class RooflineCost:
    """Iteration seconds of one replica: ``tp`` devices of ``hw`` running ``model``."""

    def __init__(self, model: ModelSpec, hw: HardwareSpec, tp: int) -> None:
        if tp < 1 or tp > hw.max_devices_per_node:
            raise SimInputError(f"tp={tp} on {hw.name}: must be 1..{hw.max_devices_per_node} (one node)")
        self.model, self.hw, self.tp = model, hw, tp
        self.table = op_table(model, tp, hw.allreduce_latency_s(tp))
        self.overhead_s = hw.iteration_overhead_us * 1e-6
        self._rows = [self._row(s) for s in self.table]
        self._sum = compile_rows(self._rows, self.overhead_s)
        shape = self.attention_shape()
        self._prefix_flops_s = shape.flops.per_attended / hw.flops  # per prefix token and member
        self._prefix_read_s = shape.bytes.per_kv_read / hw.memory_bandwidth  # per prefix token
        self._attention_per_token = self.shared_prefix_seconds(1, 1)
        self._pieces: dict[int, tuple[Piece, ...]] = {}

    def _row(self, shape: OpShape) -> tuple[float, ...]:
        """The operator's seconds per unit of each Work field, compute side then memory side, then fixed."""
        if shape.unit == "interconnect":
            rate_f, rate_b = float("inf"), self.hw.interconnect_gbs * 1e9
        else:
            rate_f, rate_b = self.hw.flops, self.hw.memory_bandwidth
        f, b = shape.flops, shape.bytes
        return (f.const / rate_f, f.per_token / rate_f, f.per_logit / rate_f, f.per_attended / rate_f,
                f.per_kv_read / rate_f, b.const / rate_b, b.per_token / rate_b, b.per_logit / rate_b,
                b.per_attended / rate_b, b.per_kv_read / rate_b, shape.fixed_s)

    def op_seconds(self, op: Op) -> float:
        """One operator's time on this replica's devices."""
        if op.unit == "fixed":
            return op.fixed_s
        if op.unit == "interconnect":
            return op.fixed_s + op.bytes / (self.hw.interconnect_gbs * 1e9)
        return max(op.flops / self.hw.flops, op.bytes / self.hw.memory_bandwidth)

    def ops(self, work: Work) -> list[Op]:
        """The iteration's operators, the engine overhead last."""
        return evaluate(self.table, work) + [Op("iteration_overhead", "fixed", 0.0, 0.0, self.overhead_s)]

    def seconds(self, work: Work) -> float:
        """Sum of ``op_seconds`` over ``ops(work)``, without building the list (row_sum.py)."""
        return self._sum(*work)

    def mixed_seconds(self, chunks: Work, batch: int, context: int) -> float:
        """Prefill chunks and a decode step in one iteration: one pass over the weights."""
        t, n, a, k = chunks  # + decode_work(batch, context), field by field
        return self._sum(t + batch, n + batch, a + context, k + context)

    def attention_seconds_per_token(self) -> float:
        """Attention time per context token of a decode step (the KV read or its FLOPs, whichever binds)."""
        return self._attention_per_token

    def decode_attention_per_token(self, batch: int) -> float:
        return self._attention_per_token

    def shared_prefix_seconds(self, members: int, tokens: int) -> float:
        """The prefix's K/V read once or its FLOPs for every member, whichever binds."""
        return tokens * max(members * self._prefix_flops_s, self._prefix_read_s)

    def attention_shape(self) -> OpShape:
        return next(s for s in self.table if s.unit == "attention")

    def decode_pieces(self, batch: int) -> tuple[Piece, ...]:
        """A decode step of ``batch`` sequences costs a + b * context: one piece, exact."""
        pieces = self._pieces.get(batch)
        if pieces is None:
            pieces = self._pieces[batch] = ((0.0, self.seconds(decode_work(batch, 0)),
                                             self.attention_seconds_per_token()),)
        return pieces


class SlowedCost:
    """Another cost model with every time ``factor`` times longer (uncertainty bands: a slowdown drawn
    from what calibration residuals, or the spread of engines against the roofline, leave open)."""

    def __init__(self, cost: IterationCost, factor: float) -> None:
        if not factor > 0:
            raise SimInputError(f"a slowdown factor must be > 0, got {factor}")
        self.inner, self.factor = cost, factor
        self.model, self.hw, self.tp = cost.model, cost.hw, cost.tp
        self._pieces: dict[int, tuple[Piece, ...]] = {}

    def seconds(self, work: Work) -> float:
        return self.inner.seconds(work) * self.factor

    def mixed_seconds(self, chunks: Work, batch: int, context: int) -> float:
        return self.inner.mixed_seconds(chunks, batch, context) * self.factor

    @property
    def launches(self) -> bool:
        """Whether the inner model knows host launch times (overlap.py)."""
        return getattr(self.inner, "launches", False)

    def launch_seconds(self, tokens: int) -> float:
        return self._slowed("launch_seconds", tokens)

    def host_floor_seconds(self, tokens: int) -> float:
        return self._slowed("host_floor_seconds", tokens)

    def delivery_hold_seconds(self, tokens: int) -> float:
        return self._slowed("delivery_hold_seconds", tokens)

    def _slowed(self, name: str, tokens: int) -> float:
        """The inner model's ``name(tokens)`` seconds, slowed (0 where it has none)."""
        method = getattr(self.inner, name, None)
        return method(tokens) * self.factor if method is not None else 0.0

    def decode_pieces(self, batch: int) -> tuple[Piece, ...]:
        pieces = self._pieces.get(batch)
        if pieces is None:
            f = self.factor
            pieces = self._pieces[batch] = tuple((c, a * f, b * f) for c, a, b in self.inner.decode_pieces(batch))
        return pieces

    def attention_seconds_per_token(self) -> float:
        return self.inner.attention_seconds_per_token() * self.factor

    def decode_attention_per_token(self, batch: int) -> float:
        return self.inner.decode_attention_per_token(batch) * self.factor

    def shared_prefix_seconds(self, members: int, tokens: int) -> float:
        return self.inner.shared_prefix_seconds(members, tokens) * self.factor
