"""The link between a model worker and its attention worker: two pair groups, one per direction.

``up`` carries the model worker's control message and packed q/k/v, ``down`` the attention
outputs. Each direction is its own communicator (NCCL between GPUs, gloo on CPU), so both
ends can send at once while micro-batches ping-pong: NCCL runs one communicator's
operations in order, and an output on its way down would otherwise wait behind the next
micro-batch's q/k/v going up.

The groups form through kvstore's rendezvous (``PairGroups``, under the worker ids
``<id>/up`` and ``<id>/down``: Redis only for forming them and their epochs, nothing per step).
Tags (gloo matches on them; NCCL keeps order) name the layer and micro-batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import redis
import torch
from torch.distributed.distributed_c10d import Work

from attention_offload.control import HEADER_LEN, ControlError, Kind, StepControl
from kvstore.config import TransportConfig
from kvstore.keys import RedisKeys
from kvstore.pair_groups import PairGroup, PairGroups

MAX_MICRO_BATCHES = 8
_TAG_HEADER, _TAG_PAYLOAD, _TAG_LAYER0 = 1, 2, 16
_SPIN_S = 0.01
_FOREVER_S = 10 * 365 * 86400.0


class LinkError(RuntimeError):
    """The link broke (the peer died, a timeout, an unreadable message): its groups are dropped."""


def layer_tag(layer: int, micro_batch: int) -> int:
    return _TAG_LAYER0 + layer * MAX_MICRO_BATCHES + micro_batch


class Link:
    """One end of a model/attention link over two formed pair groups."""

    def __init__(self, up: PairGroup, down: PairGroup, timeout_s: float,
                 on_break: Callable[[], None] | None = None):
        self.up, self.down = up, down
        self.device = up.device
        self.timeout_s = timeout_s
        self._on_break = on_break
        self.broken = False

    # -- raw operations (both ends) -------------------------------------------------------
    def send(self, group: PairGroup, tensor: torch.Tensor, tag: int) -> Work:
        return self._op(lambda: group.backend.send([_bytes(tensor)], group.peer_rank, tag))

    def recv(self, group: PairGroup, tensor: torch.Tensor, tag: int) -> Work:
        if not tensor.is_contiguous():
            raise ValueError("a link receives into contiguous tensors only")
        return self._op(lambda: group.backend.recv([_bytes(tensor)], group.peer_rank, tag))

    def wait(self, work: Work, what: str, block_host: bool = False) -> None:
        """Gloo: wait on the host (with the timeout). NCCL: in stream order only, unless
        ``block_host`` (then polled against the timeout)."""
        try:
            if self.device.type == "cpu":
                work.wait(timedelta(seconds=self.timeout_s))
                return
            if block_host:
                deadline, start = time.monotonic() + self.timeout_s, time.monotonic()
                while not work.is_completed():
                    if self.broken:  # superseded by a new link with the same peer (it restarted)
                        raise TimeoutError("the link was replaced")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"timed out after {self.timeout_s:g} s")
                    if time.monotonic() - start > _SPIN_S:
                        time.sleep(1e-4)
            work.wait()
        except (RuntimeError, TimeoutError) as exc:
            self._break()
            raise LinkError(f"attention link with {self.up.peer!r} broke {what}: {exc}") from exc

    def _op(self, post: Callable[[], Work]) -> Work:
        if self.broken:
            raise LinkError(f"attention link with {self.up.peer!r} is broken")
        try:
            return post()
        except RuntimeError as exc:
            self._break()
            raise LinkError(f"attention link with {self.up.peer!r} broke: {exc}") from exc

    def abandon(self) -> None:
        """Drop the link's groups (the peer's next operation fails): after an error that
        leaves the two ends out of step."""
        self._break()

    def _break(self) -> None:
        if not self.broken:
            self.broken = True
            if self._on_break is not None:
                self._on_break()

    # -- control messages -----------------------------------------------------------------
    def send_control(self, ctrl: StepControl) -> list[tuple[torch.Tensor, Work]]:
        """Model side: post the header and payload; keep what it returns until the step ends."""
        header = ctrl.header().to(self.device)
        sent = [(header, self.send(self.up, header, _TAG_HEADER))]
        payload = ctrl.payload()
        if payload is not None:
            payload = payload.to(self.device)
            sent.append((payload, self.send(self.up, payload, _TAG_PAYLOAD)))
        return sent

    def recv_control(self, timeout_s: float | None = None) -> StepControl:
        """Attention side: the next control message (waits up to ``timeout_s``; None: forever)."""
        header = torch.zeros(HEADER_LEN, dtype=torch.int64, device=self.device)
        self._wait_idle(self.recv(self.up, header, _TAG_HEADER), timeout_s)
        try:
            kind, step, b, m, size = StepControl.read_header(header.cpu())
        except ControlError as exc:
            self._break()
            raise LinkError(f"unreadable control message from {self.up.peer!r}: {exc}") from exc
        payload = None
        if kind is Kind.STEP:
            buf = torch.zeros(size, dtype=torch.int64, device=self.device)
            self.wait(self.recv(self.up, buf, _TAG_PAYLOAD), "receiving a control payload", block_host=True)
            payload = buf.cpu().numpy()
        try:
            return StepControl.decode(kind, step, b, m, payload)
        except ControlError as exc:
            self._break()
            raise LinkError(str(exc)) from exc

    def _wait_idle(self, work: Work, timeout_s: float | None) -> None:
        """Wait for a message that comes when the peer has work: no transfer timeout by default
        (a timed-out gloo wait would close the pair), but the link breaks as the peer's process
        goes away (gloo sees the connection close; NCCL only at its own timeout)."""
        saved = self.timeout_s
        self.timeout_s = timeout_s if timeout_s is not None else _FOREVER_S
        try:
            self.wait(work, "waiting for a control message", block_host=True)
        finally:
            self.timeout_s = saved


class LinkEndpoint:
    """One worker's pair-group caches for links, one per direction (kvstore.pair_groups)."""

    def __init__(self, worker_id: str, client: redis.Redis, keys: RedisKeys, config: TransportConfig,
                 device: torch.device | str):
        self.worker_id, self.config = worker_id, config
        self.up = PairGroups(f"{worker_id}/up", client, keys, config, device)
        self.down = PairGroups(f"{worker_id}/down", client, keys, config, device)
        self._links: dict[str, Link] = {}

    def connect(self, peer: str) -> Link:
        """Form (or take the live) groups with ``peer``; the peer calls ``connect`` too, within
        the rendezvous timeout. Up first, then down, on both ends. A link this endpoint made
        before with ``peer`` on other groups is marked broken (a wait polling on it ends)."""
        up = self.up.get(f"{peer}/up")
        down = self.down.get(f"{peer}/down")
        old = self._links.get(peer)
        if old is not None and (old.up is not up or old.down is not down):
            old.broken = True
        link = self._links[peer] = Link(up, down, self.config.transfer_timeout_s, on_break=lambda: self.close(peer))
        return link

    def close(self, peer: str) -> None:
        """Drop both groups (and their epochs: the peer drops its halves when it next forms)."""
        self.up.close(f"{peer}/up", abort=True)
        self.down.close(f"{peer}/down", abort=True)

    def close_all(self) -> None:
        self.up.close_all()
        self.down.close_all()


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)
