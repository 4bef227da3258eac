"""Decode steps with attention offloaded (Lamina-style): dense operators on the compute replica,
attention on a share of the attention pool's memory devices, q/k/v and outputs over the network.

With ``micro_batches`` batches rotating through the three stages (dense, network, attention),
a step takes the slowest stage plus 1/micro_batches of the others (the pipeline's fill):
``T = max(dense, net, attn) + (dense + net + attn - max) / micro_batches``. Only attention grows
with the context, so T is two affine pieces in the context (the kink where attention becomes
the slowest stage).
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.errors import SimInputError
from simulator.operators import Work
from simulator.roofline import IterationCost, Piece


@dataclass(frozen=True)
class OffloadLink:
    bandwidth: float  # bytes/s from one compute replica to its attention devices
    latency_s: float  # one way


class OffloadCost:
    """Decode cost of one compute replica that uses ``share`` attention devices (fractional: the
    pool is shared evenly between compute replicas)."""

    def __init__(self, compute: IterationCost, attention: IterationCost, share: float, link: OffloadLink,
                 micro_batches: int = 2) -> None:
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

    def stages(self, batch: int, context: int) -> tuple[float, float, float]:
        """(dense seconds, network seconds, attention seconds) of one step."""
        dense = self.compute.decode_pieces(batch)[0][1]
        net = batch * self.bytes_per_token / self.link.bandwidth + 2 * self.model.num_layers * self.link.latency_s
        return dense, net, context * self.attention_per_token

    def attention_seconds_per_token(self) -> float:
        return self.attention_per_token

    def decode_attention_per_token(self, batch: int) -> float:
        return self.attention_per_token

    def shared_prefix_seconds(self, members: int, tokens: int) -> float:
        """On the attention devices (the attention stage)."""
        return self.attention.shared_prefix_seconds(members, tokens) / self.share

    def step_seconds(self, batch: int, context: int) -> float:
        stages = self.stages(batch, context)
        slowest = max(stages)
        return slowest + (sum(stages) - slowest) / self.micro_batches

    def decode_pieces(self, batch: int) -> tuple[Piece, ...]:
        pieces = self._pieces.get(batch)
        if pieces is None:
            pieces = self._pieces[batch] = self._make_pieces(batch)
        return pieces

    def _make_pieces(self, batch: int) -> tuple[Piece, ...]:
        dense, net, _ = self.stages(batch, 0)
        y, k = self.attention_per_token, self.micro_batches
        top = max(dense, net)
        below = (0.0, top + (dense + net - top) / k, y / k)
        above = (top / y, (dense + net) / k, y)
        return (below, above)

    def seconds(self, work: Work) -> float:
        """Prefill is not offloaded: a mixed iteration runs on the compute replica as usual."""
        return self.compute.seconds(work)

