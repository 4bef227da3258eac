"""Process groups of two workers, made on demand and cached, for KV transfers.

Each pair of workers that exchanges KV gets its own torch.distributed process group of
size 2, built directly (ProcessGroupNCCL on CUDA, ProcessGroupGloo on CPU) instead of
through ``init_process_group``: no global default group, so one process can hold a group
per peer. The worker with the smaller id is rank 0; it opens a TCPStore on a free port
and publishes ``host:port`` through Redis (kvstore.rendezvous); the other connects.
Both sides must call ``get(peer)`` within the rendezvous timeout.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from datetime import timedelta

import redis
import torch
import torch.distributed as dist

from kvstore.config import TransportConfig
from kvstore.errors import RendezvousTimeoutError
from kvstore.keys import RedisKeys, check_worker_id
from kvstore.rendezvous import publish_address, wait_address, withdraw_address


@dataclass
class PairGroup:
    """A live group with one peer; ``lock`` serializes transfers over it."""

    peer: str
    rank: int
    backend: dist.ProcessGroup
    store: dist.Store
    device: torch.device
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def peer_rank(self) -> int:
        return 1 - self.rank


class PairGroups:
    """This worker's cache of pair groups, keyed by peer worker id."""

    def __init__(self, worker_id: str, client: redis.Redis, keys: RedisKeys, config: TransportConfig,
                 device: torch.device | str) -> None:
        self.worker_id = check_worker_id(worker_id)
        self.device = torch.device(device)
        self._redis, self._keys, self._config = client, keys, config
        self._host = config.advertise_host or _this_host()
        self._groups: dict[str, PairGroup] = {}
        self._lock = threading.Lock()

    def get(self, peer: str) -> PairGroup:
        """The group with ``peer``, formed now if there is none (the peer must do the same)."""
        check_worker_id(peer)
        if peer == self.worker_id:
            raise ValueError(f"worker {peer!r} cannot form a pair group with itself")
        with self._lock:
            if peer not in self._groups:
                self._groups[peer] = self._form(peer)
            return self._groups[peer]

    def close(self, peer: str, abort: bool = False) -> None:
        """Tear down the group with ``peer`` (abort: also cancel transfers in flight)."""
        with self._lock:
            group = self._groups.pop(peer, None)
        if group is not None:
            _shut_down(group.backend, abort)

    def close_all(self) -> None:
        for peer in list(self._groups):
            self.close(peer)

    def __enter__(self) -> PairGroups:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()

    def _form(self, peer: str) -> PairGroup:
        rank = 0 if self.worker_id < peer else 1
        key = self._keys.rendezvous(*sorted((self.worker_id, peer)))
        timeout = timedelta(seconds=self._config.rendezvous_timeout_s)
        store = self._open_store(rank, key, peer, timeout)
        try:
            backend = self._make_backend(store, rank)
            _warm_up(backend, rank, self.device)
        except RuntimeError as exc:
            if rank == 0:
                withdraw_address(self._redis, key)
            raise RendezvousTimeoutError(f"could not form a pair group between {self.worker_id!r} and "
                                         f"{peer!r} within {timeout.total_seconds():g} s: {exc}") from exc
        return PairGroup(peer, rank, backend, store, self.device)

    def _open_store(self, rank: int, key: str, peer: str, timeout: timedelta) -> dist.Store:
        if rank == 0:
            store = dist.TCPStore("0.0.0.0", 0, 2, True, timeout=timeout, wait_for_workers=False)
            publish_address(self._redis, key, f"{self._host}:{store.port}", timeout.total_seconds())
            return store
        host, _, port = wait_address(self._redis, key, timeout.total_seconds(), peer).rpartition(":")
        try:
            return dist.TCPStore(host, int(port), 2, False, timeout=timeout)
        except RuntimeError as exc:
            raise RendezvousTimeoutError(f"could not reach the pair-group store of {peer!r} at "
                                         f"{host}:{port}: {exc}") from exc

    def _make_backend(self, store: dist.Store, rank: int) -> dist.ProcessGroup:
        timeout = timedelta(seconds=self._config.transfer_timeout_s)
        if self.device.type == "cuda":
            # high priority: a gather or scatter on the compute stream must not hold the next
            # chunk's send/recv off the SMs (kvstore.handoff)
            options = dist.ProcessGroupNCCL.Options(is_high_priority_stream=True)
            options._timeout = 2 * timeout + timedelta(seconds=60)  # KVHandoff times out first
            return dist.ProcessGroupNCCL(store, rank, 2, options)
        options = dist.ProcessGroupGloo._Options()
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=self._host)]
        options._timeout = timeout
        return dist.ProcessGroupGloo(store, rank, 2, options)


def _warm_up(backend: dist.ProcessGroup, rank: int, device: torch.device) -> None:
    """One tiny message, so the first handoff does not pay for connection setup."""
    probe = torch.zeros(1, dtype=torch.uint8, device=device)
    work = backend.send([probe], 1, 0) if rank == 0 else backend.recv([probe], 0, 0)
    work.wait()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _shut_down(backend: dist.ProcessGroup, abort: bool) -> None:
    """Gloo shuts down; NCCL always aborts, since finalizing can wait on a peer that is gone."""
    try:
        backend.abort() if abort or backend.name().lower() == "nccl" else backend.shutdown()
    except RuntimeError:
        pass  # already broken: nothing left to release


def _this_host() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
