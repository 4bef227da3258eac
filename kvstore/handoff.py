"""KV handoff: move a request's blocks from one worker's cache into another's.

The sender gathers the blocks layer chunk by layer chunk into contiguous buffers
(index_select) and sends each chunk as it is ready; the receiver posts all receives,
then scatters each chunk into its own block ids (index_copy_) as it lands. On CUDA
gathers and scatters run on the current stream and NCCL orders itself against it, so
gathering chunk k+1 overlaps sending chunk k; only the completion is polled from the
CPU (with the transfer timeout). NCCL runs on a high-priority stream (kvstore.pair_groups):
otherwise a scatter that becomes ready with the next receive takes every SM and the
receive waits for it, serialising the pipeline.

A header goes first and the payload follows it at once; the receiver's answer (accept,
or its reason to reject) comes last, after the payload in stream order, so no round trip
stands between the header and the first byte. Every call ends done, rejected, cancelled
or timed out, and the two ends stay in step:

* one call is one exchange. A sender that cannot send (unusable cache or ids) still sends
  a header, a cancel with its reason, and waits for the answer; a receiver that cannot
  take the blocks, or that rejects them, still reads the header, drains the chunks it
  announced into one scratch buffer and answers. The group stays usable.
* headers are matched to receives by request digest (kvstore.handoff_receives): a header
  that reaches a receive waiting for another request goes to its own receive, and the
  receive that read it ends as out of step, instead of every later transfer shifting by one.
* a timeout, a broken backend or an unreadable header (sizes unknown) drops the group here
  and its epoch in Redis; the peer drops its half at its next transfer (kvstore.pair_groups).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import cast

import torch
from torch.distributed.distributed_c10d import Work

from kvstore.block_codec import checked_blocks, gather_layers, layer_chunk, scatter_layers
from kvstore.config import TransportConfig
from kvstore.errors import HandoffCancelledError, HandoffError, HandoffTimeoutError, KVStoreError
from kvstore.handoff_header import HandoffHeader, RequestRef, answer_tensor, empty_message, read_answer
from kvstore.handoff_receives import Receive, Receives
from kvstore.layout import KVLayout
from kvstore.pair_groups import PairGroup, PairGroups

_TAG_HEADER, _TAG_ANSWER, _TAG_CHUNK0 = 1, 2, 16
_SPIN_S = 0.01
_OWNER_GRACE_S = 1.0  # how long a header waits for its receive to be called


class KVHandoff:
    """Both ends of a handoff; one instance per worker, over its PairGroups."""

    def __init__(self, groups: PairGroups, config: TransportConfig) -> None:
        self._groups = groups
        self._config = config
        self._receives = Receives()

    def send(self, kv: torch.Tensor, block_ids: Sequence[int] | torch.Tensor, peer: str,
             request_id: str, give_up: threading.Event | None = None) -> int:
        """Send ``kv[:, :, block_ids]`` of ``request_id`` to ``peer``; returns payload bytes.

        Returns once the peer has received everything. Raises HandoffError if the peer
        rejects it (its reason in the message), HandoffTimeoutError past the timeout; an
        unusable cache or ids raise here as before, after the peer has been told. Setting
        ``give_up`` (another thread: the receiver failed) ends an NCCL send still waiting for
        the peer at once with HandoffCancelledError, and drops the group; a gloo send ends at
        its timeout as before (gloo cannot cut a wait short without closing the pair).
        """
        with self._groups.lock(peer):
            group = self._groups.get(peer)
            deadline = self._deadline()
            try:
                layout, ids = checked_blocks(kv, block_ids)
            except Exception as exc:
                cancel = HandoffHeader.cancel(request_id, f"{type(exc).__name__}: {exc}")
                self._guard(group, cancel.request, lambda: self._send_cancel(group, cancel, deadline))
                raise
            header = HandoffHeader.of(request_id, ids.numel(), layout, self._config.layers_per_chunk)
            sent = self._guard(group, header.request, lambda: self._send(group, kv, ids, header, deadline, give_up))
            return cast(int, sent)  # _send returns an int

    def recv(self, kv: torch.Tensor, block_ids: Sequence[int] | torch.Tensor, peer: str,
             request_id: str) -> int:
        """Receive ``request_id``'s blocks from ``peer`` into ``kv[:, :, block_ids]``.

        ``block_ids`` are this worker's ids, allocated beforehand, in the sender's block
        order. When it returns the blocks are in ``kv``. Same errors as ``send``.
        """
        receive = Receive.of(kv, block_ids, request_id, self._config.layers_per_chunk)
        with self._receives.waiting(peer, receive), self._groups.lock(peer):
            if not receive.done:  # else another call read its header and served it
                group = self._groups.get(peer)
                self._guard(group, receive.request, lambda: self._serve(group, receive))
        return receive.result()

    def _deadline(self) -> float:
        return time.monotonic() + self._config.transfer_timeout_s

    def _guard(self, group: PairGroup, request: RequestRef, transfer: Callable[[], int | None]) -> int | None:
        try:
            return transfer()
        except HandoffTimeoutError as exc:  # a transfer may be stuck in flight: drop the group
            self._groups.close(group.peer, abort=True)
            raise HandoffTimeoutError(f"{exc} (transfer_timeout_s={self._config.transfer_timeout_s:g})") from exc
        except HandoffCancelledError:  # given up mid-exchange: the ends are out of step
            self._groups.close(group.peer, abort=True)
            raise
        except KVStoreError:
            raise
        except Exception as exc:  # the backend broke (or worse) mid-exchange: the group is unusable
            self._groups.close(group.peer, abort=True)
            raise HandoffError(f"handoff of request {request.shown!r} with {group.peer!r} failed "
                               f"(group dropped): {exc}") from exc

    def _send(self, group: PairGroup, kv: torch.Tensor, ids: torch.Tensor, header: HandoffHeader,
              deadline: float, give_up: threading.Event | None = None) -> int:
        works = [group.backend.send([header.to_tensor(kv.device)], group.peer_rank, _TAG_HEADER)]
        chunks = []
        for tag, (first, last) in enumerate(_chunks(header), start=_TAG_CHUNK0):
            chunks.append(gather_layers(kv, ids, first, last))
            works.append(group.backend.send([_as_bytes(chunks[-1])], group.peer_rank, tag))
        answer = empty_message(kv.device)
        works.append(group.backend.recv([answer], group.peer_rank, _TAG_ANSWER))
        for work in works:
            _await(work, kv.device, deadline, f"sending request {header.request.shown!r} to {group.peer!r}",
                   give_up=give_up)
        if (problem := read_answer(answer)) is not None:
            raise HandoffError(f"{group.peer!r} rejected the handoff: {problem}")
        return sum(c.numel() * c.element_size() for c in chunks)

    @staticmethod
    def _send_cancel(group: PairGroup, header: HandoffHeader, deadline: float) -> None:
        answer = empty_message(group.device)
        works = [group.backend.send([header.to_tensor(group.device)], group.peer_rank, _TAG_HEADER),
                 group.backend.recv([answer], group.peer_rank, _TAG_ANSWER)]
        for work in works:
            _await(work, group.device, deadline, f"cancelling request {header.request.shown!r} with {group.peer!r}")

    def _serve(self, group: PairGroup, holder: Receive) -> None:
        """Read the next header and serve the receive it belongs to; ``holder`` always ends."""
        deadline = self._deadline()
        header = self._read_header(group, holder, deadline)
        if (problem := header.request.mismatch(holder.request)) is None:
            holder.finish(self._exchange(group, header, holder, deadline))
            return
        owner = self._receives.claim(group.peer, header.request.digest,
                                     min(deadline, time.monotonic() + _OWNER_GRACE_S))
        if owner is None:  # nobody wants it: drain it and tell the sender why
            self._reject(group, header, problem, _device(holder, group), deadline)
            holder.finish(HandoffError(f"rejected the handoff from {group.peer!r}: {problem}"))
            return
        try:
            owner.finish(self._exchange(group, header, owner, self._deadline()))
        except BaseException as exc:
            owner.finish(exc if isinstance(exc, KVStoreError) else HandoffError(
                f"handoff of request {owner.request.shown!r} with {group.peer!r} failed (group dropped): {exc}"))
            raise
        holder.finish(HandoffError(
            f"out of step with {group.peer!r}: {problem}; it went to its own receive, and "
            f"{holder.request.shown!r} was not sent (its sender gave up or never started)"))

    def _read_header(self, group: PairGroup, holder: Receive, deadline: float) -> HandoffHeader:
        message = empty_message(_device(holder, group))
        _await(group.backend.recv([message], group.peer_rank, _TAG_HEADER), message.device, deadline,
               f"waiting for {group.peer!r} to hand off request {holder.request.shown!r}")
        try:
            return HandoffHeader.from_tensor(message)
        except HandoffError as exc:  # sizes unknown: cannot drain
            self._groups.close(group.peer, abort=True)
            raise HandoffError(f"unreadable handoff header from {group.peer!r} (group dropped): {exc}") from exc

    def _exchange(self, group: PairGroup, header: HandoffHeader, receive: Receive, deadline: float) -> int | Exception:
        """The rest of one exchange for ``receive``: bytes moved, or the error it ends with."""
        device, name = _device(receive, group), receive.request.shown
        if header.cancelled:
            _answer(group, None, device, deadline)
            return receive.local or HandoffError(f"{group.peer!r} cancelled the handoff of request {name!r} "
                                                 f"before sending any block: {header.note}")
        if (problem := receive.problem(header)) is not None:
            self._reject(group, header, problem, device, deadline)
            return receive.local or HandoffError(f"rejected the handoff from {group.peer!r}: {problem}")
        what = f"receiving request {name!r} from {group.peer!r}"
        ids = cast(torch.Tensor, receive.ids)  # set: the receive has no local error (problem() above)
        nbytes = _land(group, receive.kv, ids, header, deadline, what)
        _answer(group, None, device, deadline)
        _await_stream(device, deadline, f"scattering request {name!r}")
        return nbytes

    @staticmethod
    def _reject(group: PairGroup, header: HandoffHeader, problem: str, device: torch.device,
                deadline: float) -> None:
        _drain(group, header, device, deadline, f"draining request {header.request.shown!r} from {group.peer!r}")
        _answer(group, problem, device, deadline)


def _device(receive: Receive, group: PairGroup) -> torch.device:
    """Where the receive's messages live: its cache's device, or the group's if the cache is unusable."""
    return receive.kv.device if receive.local is None else group.device


def _answer(group: PairGroup, problem: str | None, device: torch.device, deadline: float) -> None:
    _await(group.backend.send([answer_tensor(problem, device)], group.peer_rank, _TAG_ANSWER),
           device, deadline, f"answering {group.peer!r}", block_host=False)


def _land(group: PairGroup, kv: torch.Tensor, ids: torch.Tensor, header: HandoffHeader,
          deadline: float, what: str) -> int:
    """Receive every chunk and scatter each into ``kv`` as it lands (in stream order)."""
    chunks = [(first, layer_chunk(kv, ids.numel(), first, last)) for first, last in _chunks(header)]
    works = [group.backend.recv([_as_bytes(buf)], group.peer_rank, tag)
             for tag, (_, buf) in enumerate(chunks, start=_TAG_CHUNK0)]
    for (first, buf), work in zip(chunks, works):
        _await(work, kv.device, deadline, what, block_host=False)
        scatter_layers(kv, ids, first, buf)
    return sum(buf.numel() * buf.element_size() for _, buf in chunks)


def _drain(group: PairGroup, header: HandoffHeader, device: torch.device, deadline: float, what: str) -> None:
    """Receive and discard the chunks ``header`` announces, all into one scratch buffer."""
    if header.cancelled:  # a cancel announces none
        return
    layout = cast(KVLayout, header.layout)  # not cancelled: it has a layout
    layer_bytes = header.num_blocks * layout.bytes_per_block // layout.num_layers
    ranges = _chunks(header)
    scratch = torch.empty(max(last - first for first, last in ranges) * layer_bytes, dtype=torch.uint8,
                          device=device)
    works = [group.backend.recv([scratch[:(last - first) * layer_bytes]], group.peer_rank, tag)
             for tag, (first, last) in enumerate(ranges, start=_TAG_CHUNK0)]
    for work in works:
        _await(work, device, deadline, what, block_host=False)


def _chunks(header: HandoffHeader) -> list[tuple[int, int]]:
    """Layer ranges, one message each. When chunked at all, the first and the last layer
    travel alone: nothing overlaps the gather before the first byte nor the scatter after the
    last, so those are one layer's instead of a chunk's."""
    step, layers = header.layers_per_chunk, cast(KVLayout, header.layout).num_layers  # only sent headers get here
    if step >= layers:
        return [(0, layers)]
    inner = [(first, min(first + step, layers - 1)) for first in range(1, layers - 1, step)]
    return [(0, 1), *inner, (layers - 1, layers)]


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(-1).view(torch.uint8)


def _await(work: Work, device: torch.device, deadline: float, what: str, block_host: bool = True,
           give_up: threading.Event | None = None) -> None:
    """Wait for a backend operation: on the host, or (block_host False) only in stream order;
    with NCCL, HandoffCancelledError once ``give_up`` is set.

    Gloo's work objects only complete inside wait(), which takes a timeout (and a wait that
    times out closes the pair: it cannot be cut into slices to look at ``give_up``); NCCL's
    wait() with a timeout sleeps in 10 ms steps, so its completion is polled instead.
    """
    if device.type == "cpu":  # gloo: a wait cut short closes the pair, so ``give_up`` waits for the end
        try:
            work.wait(timedelta(seconds=max(deadline - time.monotonic(), 1e-3)))
        except RuntimeError as exc:
            if "timed out" in str(exc).lower():
                raise HandoffTimeoutError(f"timed out {what}") from exc
            raise
        return
    if block_host:
        _poll(work.is_completed, deadline, what, give_up)
    work.wait()


def _await_stream(device: torch.device, deadline: float, what: str) -> None:
    if device.type == "cuda":
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(device))
        _poll(done.query, deadline, what)


def _poll(is_done: Callable[[], bool], deadline: float, what: str, give_up: threading.Event | None = None) -> None:
    """Spin for the first few milliseconds (transfers are that short), then back off to 1 ms."""
    start = time.monotonic()
    while not is_done():
        now = time.monotonic()
        if now > deadline:
            raise HandoffTimeoutError(f"timed out {what}")
        if give_up is not None and give_up.is_set():
            raise HandoffCancelledError(f"gave up {what}")
        if now - start > _SPIN_S:
            time.sleep(min(1e-3, (now - start) / 50))
