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
stands between the header and the first byte. A receiver that rejects still drains the
chunks the header announced (into one scratch buffer), so both ends stay in step and the
group stays usable; only an unreadable header, whose sizes are unknown, drops the group.
"""

from __future__ import annotations

import time
from datetime import timedelta
from collections.abc import Callable, Sequence

import torch
from torch.distributed.distributed_c10d import Work

from kvstore.block_codec import block_index_tensor, gather_layers, layer_chunk, scatter_layers
from kvstore.config import TransportConfig
from kvstore.errors import HandoffError, HandoffTimeoutError, KVStoreError
from kvstore.handoff_header import HandoffHeader, answer_tensor, empty_message, read_answer
from kvstore.layout import KVLayout
from kvstore.pair_groups import PairGroup, PairGroups

_TAG_HEADER, _TAG_ANSWER, _TAG_CHUNK0 = 1, 2, 16
_SPIN_S = 0.01


class KVHandoff:
    """Both ends of a handoff; one instance per worker, over its PairGroups."""

    def __init__(self, groups: PairGroups, config: TransportConfig) -> None:
        self._groups = groups
        self._config = config

    def send(self, kv: torch.Tensor, block_ids: Sequence[int] | torch.Tensor, peer: str,
             request_id: str) -> int:
        """Send ``kv[:, :, block_ids]`` of ``request_id`` to ``peer``; returns payload bytes.

        Returns once the peer has received everything. Raises HandoffError if the peer
        rejects it (its reason in the message), HandoffTimeoutError past the timeout.
        """
        layout, ids = _prepare(kv, block_ids)
        header = HandoffHeader(request_id, ids.numel(), layout, self._config.layers_per_chunk)
        return self._run(peer, request_id, lambda group, deadline: self._send(group, kv, ids, header, deadline))

    def recv(self, kv: torch.Tensor, block_ids: Sequence[int] | torch.Tensor, peer: str,
             request_id: str) -> int:
        """Receive ``request_id``'s blocks from ``peer`` into ``kv[:, :, block_ids]``.

        ``block_ids`` are this worker's ids, allocated beforehand, in the sender's block
        order. When it returns the blocks are in ``kv``. Same errors as ``send``.
        """
        layout, ids = _prepare(kv, block_ids)
        expected = HandoffHeader(request_id, ids.numel(), layout, self._config.layers_per_chunk)
        return self._run(peer, request_id, lambda group, deadline: self._recv(group, kv, ids, expected, deadline))

    def _run(self, peer: str, request_id: str, transfer: Callable[[PairGroup, float], int]) -> int:
        group = self._groups.get(peer)
        with group.lock:
            try:
                return transfer(group, time.monotonic() + self._config.transfer_timeout_s)
            except HandoffTimeoutError as exc:  # a transfer may be stuck in flight: drop the group
                self._groups.close(peer, abort=True)
                raise HandoffTimeoutError(f"{exc} (transfer_timeout_s={self._config.transfer_timeout_s:g})") from exc
            except KVStoreError:
                raise
            except RuntimeError as exc:  # the backend broke: the group is unusable
                self._groups.close(peer, abort=True)
                raise HandoffError(f"handoff of request {request_id!r} with {peer!r} failed: {exc}") from exc

    def _send(self, group: PairGroup, kv: torch.Tensor, ids: torch.Tensor, header: HandoffHeader,
              deadline: float) -> int:
        works = [group.backend.send([header.to_tensor(kv.device)], group.peer_rank, _TAG_HEADER)]
        chunks = []
        for tag, (first, last) in enumerate(_chunks(header), start=_TAG_CHUNK0):
            chunks.append(gather_layers(kv, ids, first, last))
            works.append(group.backend.send([_as_bytes(chunks[-1])], group.peer_rank, tag))
        answer = empty_message(kv.device)
        works.append(group.backend.recv([answer], group.peer_rank, _TAG_ANSWER))
        for work in works:
            _await(work, kv.device, deadline, f"sending request {header.request_id!r} to {group.peer!r}")
        if (problem := read_answer(answer)) is not None:
            raise HandoffError(f"{group.peer!r} rejected the handoff: {problem}")
        return sum(c.numel() * c.element_size() for c in chunks)

    def _recv(self, group: PairGroup, kv: torch.Tensor, ids: torch.Tensor, expected: HandoffHeader,
              deadline: float) -> int:
        message = empty_message(kv.device)
        _await(group.backend.recv([message], group.peer_rank, _TAG_HEADER),
               kv.device, deadline, f"waiting for {group.peer!r} to hand off request {expected.request_id!r}")
        try:
            header = HandoffHeader.from_tensor(message)
        except (HandoffError, ValueError, KeyError, TypeError) as exc:  # sizes unknown: cannot drain
            self._groups.close(group.peer, abort=True)
            raise HandoffError(f"unreadable handoff header from {group.peer!r} (group dropped): {exc}") from exc
        problem = header.mismatch(expected)
        what = f"receiving request {expected.request_id!r} from {group.peer!r}"
        if problem is None:
            nbytes = self._land(group, kv, ids, header, deadline, what)
        else:
            _drain(group, header, kv.device, deadline, what)
        _await(group.backend.send([answer_tensor(problem, kv.device)], group.peer_rank, _TAG_ANSWER),
               kv.device, deadline, f"answering {group.peer!r} about request {expected.request_id!r}",
               block_host=False)
        if problem is not None:
            raise HandoffError(f"rejected the handoff from {group.peer!r}: {problem}")
        _await_stream(kv.device, deadline, f"scattering request {expected.request_id!r}")
        return nbytes

    @staticmethod
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
    layer_bytes = header.num_blocks * header.layout.bytes_per_block // header.layout.num_layers
    ranges = _chunks(header)
    scratch = torch.empty(max(last - first for first, last in ranges) * layer_bytes, dtype=torch.uint8,
                          device=device)
    works = [group.backend.recv([scratch[:(last - first) * layer_bytes]], group.peer_rank, tag)
             for tag, (first, last) in enumerate(ranges, start=_TAG_CHUNK0)]
    for work in works:
        _await(work, device, deadline, what, block_host=False)


def _prepare(kv: torch.Tensor, block_ids: Sequence[int] | torch.Tensor) -> tuple[KVLayout, torch.Tensor]:
    layout = KVLayout.of_cache(kv)
    layout.check_cache(kv)
    ids = block_index_tensor(block_ids, kv.shape[2], kv.device)
    if ids.numel() == 0:
        raise ValueError("a handoff needs at least one block id")
    return layout, ids


def _chunks(header: HandoffHeader) -> list[tuple[int, int]]:
    """Layer ranges, one message each. When chunked at all, the first and the last layer
    travel alone: nothing overlaps the gather before the first byte nor the scatter after the
    last, so those are one layer's instead of a chunk's."""
    step, layers = header.layers_per_chunk, header.layout.num_layers
    if step >= layers:
        return [(0, layers)]
    inner = [(first, min(first + step, layers - 1)) for first in range(1, layers - 1, step)]
    return [(0, 1), *inner, (layers - 1, layers)]


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(-1).view(torch.uint8)


def _await(work: Work, device: torch.device, deadline: float, what: str, block_host: bool = True) -> None:
    """Wait for a backend operation: on the host, or (block_host False) only in stream order.

    Gloo's work objects only complete inside wait(), which takes a timeout; NCCL's wait()
    with a timeout sleeps in 10 ms steps, so its completion is polled instead.
    """
    if device.type == "cpu":
        try:
            work.wait(timedelta(seconds=max(deadline - time.monotonic(), 1e-3)))
        except RuntimeError as exc:
            if "timed out" in str(exc).lower():
                raise HandoffTimeoutError(f"timed out {what}") from exc
            raise
        return
    if block_host:
        _poll(work.is_completed, deadline, what)
    work.wait()


def _await_stream(device: torch.device, deadline: float, what: str) -> None:
    if device.type == "cuda":
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(device))
        _poll(done.query, deadline, what)


def _poll(is_done: Callable[[], bool], deadline: float, what: str) -> None:
    """Spin for the first few milliseconds (transfers are that short), then back off to 1 ms."""
    start = time.monotonic()
    while not is_done():
        now = time.monotonic()
        if now > deadline:
            raise HandoffTimeoutError(f"timed out {what}")
        if now - start > _SPIN_S:
            time.sleep(min(1e-3, (now - start) / 50))
