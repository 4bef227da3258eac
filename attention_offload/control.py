"""The per-step control message from a model worker to its attention worker.

One message per step, before the step's first layer tensors, on the up link: a fixed header
(int64 [8]) and a payload (int64 [payload_len]) that the header sizes. The payload holds the
micro-batch boundaries (sequence indices), five numbers per sequence and the block ids the
attention worker does not have yet:

    bounds [m + 1] | per sequence: handle, query_len, seq_len, keep, num_new | new block ids

``handle`` names a sequence's block table on the attention worker; ``keep`` leading entries of
the table it had after the previous step stay, ``num_new`` ids follow (``attention_offload.tables``).
The new tokens' cache slots follow from the table and the lengths (they sit at positions
seq_len - query_len .. seq_len - 1), so no slot mapping travels.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

MAGIC = 0x7A77_0FF1  # "attention offload", version 1
HEADER_LEN = 8
PER_SEQ = 5


class Kind(enum.IntEnum):
    STEP = 1     # a forward step: layer tensors follow
    RESET = 2    # forget every block table (a model worker attaching anew)
    STOP = 3     # the model worker detaches: the session ends


class ControlError(ValueError):
    """A control message that cannot be read (another protocol, or corrupt)."""


@dataclass(frozen=True)
class StepControl:
    kind: Kind
    step: int
    bounds: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))  # [m + 1] sequence bounds
    seqs: np.ndarray = field(default_factory=lambda: np.zeros((0, PER_SEQ), dtype=np.int64))  # [B, 5]
    new_blocks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def num_seqs(self) -> int:
        return int(self.seqs.shape[0])

    @property
    def num_micro_batches(self) -> int:
        return int(self.bounds.shape[0]) - 1

    @property
    def query_lens(self) -> np.ndarray:
        return self.seqs[:, 1]

    def micro_batch_tokens(self) -> list[int]:
        """Query rows of each micro-batch: the size of its layer tensors."""
        ends = np.concatenate([[0], np.cumsum(self.query_lens)])
        return [int(ends[hi] - ends[lo]) for lo, hi in zip(self.bounds[:-1], self.bounds[1:])]

    def header(self) -> torch.Tensor:
        m, b = self.num_micro_batches, self.num_seqs
        payload = (m + 1 if self.kind is Kind.STEP else 0) + PER_SEQ * b + len(self.new_blocks)
        return torch.tensor([MAGIC, int(self.kind), self.step, b, int(self.query_lens.sum()), m, payload, 0],
                            dtype=torch.int64)

    def payload(self) -> torch.Tensor | None:
        if self.kind is not Kind.STEP:
            return None
        return torch.from_numpy(np.concatenate([self.bounds, self.seqs.reshape(-1), self.new_blocks]))

    @staticmethod
    def read_header(header: torch.Tensor) -> tuple[Kind, int, int, int, int]:
        """(kind, step, num_seqs, num_micro_batches, payload_len) of a received header."""
        magic, kind, step, b, _, m, payload, _ = header.tolist()
        if magic != MAGIC:
            raise ControlError(f"not an attention-offload control header (magic {magic:#x}, expected {MAGIC:#x})")
        try:
            kind = Kind(kind)
        except ValueError:
            raise ControlError(f"unknown control kind {kind}") from None
        if b < 0 or m < 0 or payload < 0 or (kind is Kind.STEP and payload < m + 1 + PER_SEQ * b):
            raise ControlError(f"inconsistent control header {header.tolist()}")
        return kind, step, b, m, payload

    @classmethod
    def decode(cls, kind: Kind, step: int, num_seqs: int, m: int, payload: np.ndarray | None) -> StepControl:
        if kind is not Kind.STEP:
            return cls(kind, step)
        data = cast(np.ndarray, payload)  # a STEP message always has a payload (Link.recv_control)
        bounds = data[:m + 1]
        seqs = data[m + 1:m + 1 + PER_SEQ * num_seqs].reshape(num_seqs, PER_SEQ)
        new = data[m + 1 + PER_SEQ * num_seqs:]
        if int(seqs[:, 4].sum()) != len(new) or bounds[0] != 0 or bounds[-1] != num_seqs:
            raise ControlError(f"step {step}: control payload does not add up")
        return cls(kind, step, bounds, seqs, new)
