"""A step whose forward and sampling are queued on the device, and whose tokens are on their way.

Under overlapped scheduling (``EngineConfig.async_scheduling``) the engine queues step N+1
before it reads step N's tokens, so the host schedules, prepares and post-processes while
the device computes. A ``LaunchedStep`` carries what the engine needs to finish step N later:
which requests sampled and where their ``PENDING`` placeholders are, the sampled tokens on the
device (the next step's input rows are filled from them there, ``feed``) and their copy to the
host with their logprobs, started as soon as they are queued, and an event that marks the
step's end on the device. Requests released while their step is in flight keep their blocks
until it is read back (``defer_free``): the device may still write their KV, and a block
handed to another request could be filled meanwhile by a KV transfer on another stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import torch

from engine.outputs import TokenLogprob
from engine.request import Request
from engine.sampler import LogprobTensors
from engine.scheduler import ScheduledRequest
from engine.uploads import upload


@dataclass(eq=False)
class LaunchedStep:
    device: torch.device
    sampling: list[Request]            # requests that sampled, in row order
    slots: list[int]                   # each one's index of its PENDING token in output_token_ids
    tokens: torch.Tensor | None        # int64 [len(sampling)] on the device (None: nothing sampled)
    logprobs: LogprobTensors | None    # for the rows that asked, on the device
    members: set[int]                  # id() of every scheduled request: this step writes their blocks
    kind: str                          # the step profile's kind
    num_tokens: int
    num_seqs: int
    deferred: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Start the copy of the tokens (and logprobs) to the host, and mark the step's end: an
        event after its last kernel, recorded even when nothing sampled, so that ``wait``
        means the step's KV writes are done too."""
        self._row = {id(r): i for i, r in enumerate(self.sampling)}
        self._ready: torch.cuda.Event | None = None
        self._host_tokens, self._host_logprobs = self.tokens, self.logprobs
        if self.device.type != "cuda":
            return
        if self.tokens is not None:
            self._host_tokens = _to_host(self.tokens)
        if self.logprobs is not None:
            self._host_logprobs = self.logprobs.map(_to_host)
        self._ready = torch.cuda.Event()
        self._ready.record()

    def feed(self, scheduled: Sequence[ScheduledRequest], input_ids: torch.Tensor) -> None:
        """Copy this step's tokens, on the device, into the input rows of the next step that are
        still ``PENDING`` (a request's pending token is the last row of its one-token chunk)."""
        dst, src, row = [], [], 0
        for s in scheduled:
            row += s.num_new_tokens
            if s.request.num_pending_tokens:
                if s.num_new_tokens != 1 or id(s.request) not in self._row:
                    raise AssertionError(f"request {s.request.request_id} is scheduled with a pending token "
                                         "that this step did not sample")
                dst.append(row - 1)
                src.append(self._row[id(s.request)])
        if dst:
            index = upload(torch.tensor([dst, src], dtype=torch.int64), input_ids.device)
            input_ids[index[0]] = cast(torch.Tensor, self.tokens)[index[1]]  # sampled: it has tokens

    def defer_free(self, request: Request) -> bool:
        """Keep a released request's blocks until this step is read back, if it writes them."""
        if id(request) not in self.members:
            return False
        self.deferred.append(request)
        return True

    def wait(self) -> None:
        """Block until the step is done on the device and its results are on the host."""
        if self._ready is not None:
            self._ready.synchronize()

    def results(self) -> tuple[list[int], list[TokenLogprob | None]]:
        """The sampled tokens and their logprobs (None for rows that did not ask), after ``wait``."""
        self.wait()
        tokens = [] if self._host_tokens is None else self._host_tokens.tolist()
        if self._host_logprobs is None:
            return tokens, [None] * len(tokens)
        return tokens, self._host_logprobs.assemble(tokens)


def _to_host(values: torch.Tensor) -> torch.Tensor:
    """A pinned host copy of a device tensor, queued behind the kernels that compute it."""
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    return host
