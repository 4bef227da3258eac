"""The operators of one engine iteration, as FLOPs and bytes that are linear in what the batch computes.

Every operator's FLOPs and bytes are ``const + per_token*tokens + per_logit*logits +
per_attended*attended + per_kv_read*kv_read`` (see ``Work``), summed over the model's layers and
already divided over ``tp`` tensor-parallel devices. The same table gives the operator list that
validation sums and the fast closed forms the simulator uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from simulator.models import ModelSpec

UNITS = ("device", "attention", "interconnect", "fixed")
ALLREDUCE_LATENCY_S = 5e-6  # one small NCCL all-reduce inside a node, when no device says (op_table)


class Work(NamedTuple):
    """What one iteration computes: query tokens, sequences that need logits, and attention sizes.

    attended: sum over query tokens of the keys each attends (causal); kv_read: KV tokens read.
    A decode step of B sequences with total context C is Work(B, B, C, C). (A named tuple: one is
    made per simulated iteration, and a frozen dataclass costs several times as much to build.)
    """

    tokens: int
    logits: int
    attended: int
    kv_read: int

    def __add__(self, other: Work) -> Work:  # field by field, not tuple concatenation
        return Work(self[0] + other[0], self[1] + other[1], self[2] + other[2], self[3] + other[3])


@dataclass(frozen=True)
class Linear:
    """const + per_token*tokens + per_logit*logits + per_attended*attended + per_kv_read*kv_read."""

    const: float = 0.0
    per_token: float = 0.0
    per_logit: float = 0.0
    per_attended: float = 0.0
    per_kv_read: float = 0.0

    def at(self, w: Work) -> float:
        return (self.const + self.per_token * w.tokens + self.per_logit * w.logits
                + self.per_attended * w.attended + self.per_kv_read * w.kv_read)


@dataclass(frozen=True)
class OpShape:
    """One operator over all layers. unit: device (weights and activations), attention (reads the KV
    cache; offloadable), interconnect (tensor-parallel all-reduce bytes), fixed (seconds in fixed_s)."""

    name: str
    unit: str
    flops: Linear
    bytes: Linear
    fixed_s: float = 0.0


@dataclass(frozen=True)
class Op:
    """An operator evaluated for one Work."""

    name: str
    unit: str
    flops: float
    bytes: float
    fixed_s: float = 0.0


def op_table(m: ModelSpec, tp: int, allreduce_latency_s: float = ALLREDUCE_LATENCY_S) -> tuple[OpShape, ...]:
    """The operators of a dense Llama-style decoder on ``tp`` devices (one layer's cost times layers);
    with tp > 1, two all-reduces per layer of ``allreduce_latency_s`` each plus their bytes."""
    L, h, b, inter, t = m.num_layers, m.hidden_size, m.dtype_bytes, m.intermediate_size, tp
    q, kv = m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim

    def dense(name: str, n_in: int, n_out: int) -> OpShape:  # a weight matrix sharded over tp
        return OpShape(name, "device", Linear(per_token=2 * L * n_in * n_out / t),
                       Linear(L * n_in * n_out * b / t, per_token=L * (n_in + n_out) * b / t))

    ops = [
        OpShape("embedding", "device", Linear(), Linear(per_token=h * b)),
        dense("qkv_proj", h, q + 2 * kv),
        OpShape("attention", "attention", Linear(per_attended=4 * L * q / t),
                Linear(per_kv_read=2 * L * kv * b / t)),
        OpShape("attention_io", "device", Linear(), Linear(per_token=L * (2 * q + 2 * kv) * b / t)),
        dense("o_proj", q, h),
        dense("mlp_gate_up", h, 2 * inter),
        dense("mlp_down", inter, h),
        OpShape("norms_residual", "device", Linear(per_token=10 * L * h), Linear(per_token=10 * L * h * b)),
        OpShape("lm_head", "device", Linear(per_logit=2 * h * m.vocab_size / t),
                Linear(h * m.vocab_size * b / t, per_logit=(h + m.vocab_size / t) * b)),
    ]
    if tp > 1:
        ops.append(OpShape("tp_allreduce", "interconnect", Linear(),
                           Linear(per_token=2 * L * h * b * 2 * (t - 1) / t), fixed_s=2 * L * allreduce_latency_s))
    return tuple(ops)


def evaluate(table: tuple[OpShape, ...], work: Work) -> list[Op]:
    return [Op(s.name, s.unit, s.flops.at(work), s.bytes.at(work), s.fixed_s) for s in table]


def prefill_work(chunk: int, prefix: int, logits: int) -> Work:
    """A prefill chunk of ``chunk`` tokens after ``prefix`` tokens whose KV already exists."""
    return Work(chunk, logits, chunk * prefix + chunk * (chunk + 1) // 2, prefix + chunk)


def decode_work(batch: int, context: int) -> Work:
    """A decode step of ``batch`` sequences whose contexts (including the new token) sum to ``context``."""
    return Work(batch, batch, context, context)
