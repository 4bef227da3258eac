"""One request's state as it moves through the scheduler."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.block_hash import BlockHash
from engine.outputs import FinishReason
from engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from engine.segments.plan import SegmentPlan

PENDING = -1  # an output token sampled on the device and not yet read back (overlapped scheduling)


class RequestStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    """Tokens are ``prompt_token_ids + output_token_ids``; the first ``num_computed_tokens``
    of them have their KV in ``block_ids``. A preempted request keeps its output tokens and
    recomputes their KV when it runs again.

    Under overlapped scheduling the last ``num_pending_tokens`` output tokens are ``PENDING``:
    sampled by a step whose results are still on the device. They count as tokens (the next
    step feeds them from the device), but nothing on the host reads their ids (hashes, stop
    checks) until the engine fills them in. ``stop_pending``: the pending token is the
    request's last by length, or it keeps its KV for a handoff, so it is not scheduled again.

    ``segments``: the request's segment-reuse plan (None: off, the default). Its KV is exact
    for the first ``exact_tokens`` tokens only (None: all) when a segment was filled with KV
    computed after another prefix: later blocks never go to the prefix cache.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None = None
    cache_salt: bytes = b""
    hold_kv: bool = False
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[BlockHash] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_committed_blocks: int = 0  # leading blocks of block_ids already offered to the prefix cache
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    num_pending_tokens: int = 0
    stop_pending: bool = False
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    segments: SegmentPlan | None = None
    exact_tokens: int | None = None
    num_reused_tokens: int = 0  # prompt tokens filled from the segment store, not computed
    _block_array: BlockIdArray | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_known_tokens(self) -> int:
        """Tokens whose ids the host has (all but the pending ones)."""
        return self.num_tokens - self.num_pending_tokens

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_ids(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + output without building the whole list."""
        p = self.num_prompt_tokens
        if end <= p:
            return self.prompt_token_ids[start:end]
        if start >= p:
            return self.output_token_ids[start - p:end - p]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - p]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def block_id_array(self) -> np.ndarray:
        """``block_ids`` as int32, for the step's block table; a view valid until the next call."""
        if self._block_array is None:
            self._block_array = BlockIdArray()
        return self._block_array.sync(self.block_ids)


class BlockIdArray:
    """An int32 copy of one request's ``block_ids``, brought up to date by copying the new tail.

    Converting every sequence's whole block list each step costs host time that grows with
    context (263k ints per step at 256 sequences x 16K tokens). ``block_ids`` only grows by
    ``extend`` or is replaced by a new list (``match_prefix``, ``free``), so while the list is
    the object last seen and no shorter, only the blocks appended since then need copying.
    """

    __slots__ = ("source", "array", "size")

    def __init__(self) -> None:
        self.source: list[int] | None = None  # held, so its identity cannot be reused
        self.array = np.empty(0, dtype=np.int32)
        self.size = 0                         # leading entries of array that mirror source

    def sync(self, block_ids: list[int]) -> np.ndarray:
        n = len(block_ids)
        if block_ids is not self.source or n < self.size:
            self.source, self.size = block_ids, 0
        if n > self.size:
            if n > len(self.array):  # grow geometrically: appends stay amortized O(new blocks)
                grown = np.empty(max(n, 2 * len(self.array)), dtype=np.int32)
                grown[:self.size] = self.array[:self.size]
                self.array = grown
            self.array[self.size:n] = block_ids[self.size:]
            self.size = n
        return self.array[:n]
