"""Process groups of two workers, made on demand and cached, for KV transfers.

Each pair of workers that exchanges KV gets its own torch.distributed process group of
size 2, built directly (ProcessGroupNCCL on CUDA, ProcessGroupGloo on CPU) instead of
through ``init_process_group``: no global default group, so one process can hold a group
per peer. The worker with the smaller id is rank 0; it opens a TCPStore listening on its
advertised address only (a socket bound there, handed to the store), publishes a signed
record through Redis (kvstore.rendezvous) and the other side connects; the two prove to
each other that they hold the cluster's secret (kvstore.pair_auth) before any backend is
built. Both sides must call ``get(peer)`` within the rendezvous timeout.

Each group has an epoch, published by rank 0. ``get`` compares the cached group's epoch
with Redis (one GET per transfer) and ``close`` deletes it, so a group that one side
dropped is dropped by the other at its next transfer and the pair forms a new one.
A new ``PairGroups`` deletes every epoch naming its worker: a peer still holding a group
with this worker's previous process drops it instead of sending into it.

A live group needs no Redis: while Redis cannot answer (gone, or hung: the check's client
times out after ``EPOCH_CHECK_TIMEOUT_S``) the cached group is used, the check is skipped for
``EPOCH_RETRY_S`` after each failure (a hung Redis costs one timeout per span, not one per
transfer), and one line is logged when the checks stop working and one when they work again.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, replace
from datetime import timedelta

import redis
import torch
import torch.distributed as dist

from kvstore.config import TransportConfig
from kvstore.errors import KVStoreError, PeerAuthError, RendezvousTimeoutError
from kvstore.keys import RedisKeys, check_worker_id
from kvstore.pair_auth import REFUSED, check, new_nonce, proof, refusal, refused_by, require_secret_off_loopback
from kvstore.rendezvous import PairKeys, Record, current_epoch, drop_epoch, forget_worker, publish, take, withdraw

_AUTH0, _AUTH1 = "tierserve/auth/0", "tierserve/auth/1"
EPOCH_CHECK_TIMEOUT_S = 1.0  # the longest an epoch check (or a drop) waits for Redis
EPOCH_RETRY_S = 2.0          # after a failed check, transfers use their cached group unchecked this long
log = logging.getLogger(__name__)


@dataclass
class PairGroup:
    """A live group with one peer, formed at ``epoch``."""

    peer: str
    rank: int
    epoch: str
    backend: dist.ProcessGroup
    store: dist.Store
    device: torch.device

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
        require_secret_off_loopback(config.secret, self._host)
        self._groups: dict[str, PairGroup] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._lock = threading.Lock()
        forget_worker(client, keys, self.worker_id)
        self._epochs = _timed_client(client, EPOCH_CHECK_TIMEOUT_S)  # checks and drops: never stuck on Redis
        self._unchecked_until = 0.0
        self._redis_failing = False

    def lock(self, peer: str) -> threading.RLock:
        """Held around one transfer with ``peer``, so transfers over a pair are serialized."""
        with self._lock:
            return self._locks.setdefault(peer, threading.RLock())

    def get(self, peer: str) -> PairGroup:
        """The group with ``peer``: the cached one while the peer still holds it, else a new
        one (the peer must do the same within the rendezvous timeout)."""
        check_worker_id(peer)
        if peer == self.worker_id:
            raise ValueError(f"worker {peer!r} cannot form a pair group with itself")
        pair = self._pair(peer)
        with self.lock(peer):
            group = self._groups.get(peer)
            if group is not None and self._still_held(group, pair):
                return group
            if group is not None:  # the peer dropped its half
                self.close(peer, abort=True)
            group = self._form(peer, pair)
            with self._lock:
                self._groups[peer] = group
            return group

    def close(self, peer: str, abort: bool = False) -> None:
        """Tear down the group with ``peer`` (abort: also cancel transfers in flight) and tell
        the peer, which drops its half at its next transfer."""
        with self._lock:
            group = self._groups.pop(peer, None)
        if group is None:
            return
        _shut_down(group.backend, abort)
        try:
            drop_epoch(self._epochs, self._pair(peer), group.epoch)
        except redis.RedisError:
            pass  # Redis is gone too: the peer's next transfer fails and drops its half

    def close_all(self) -> None:
        for peer in list(self._groups):
            self.close(peer)

    def __enter__(self) -> PairGroups:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()

    def _still_held(self, group: PairGroup, pair: PairKeys) -> bool:
        """Whether the peer still holds ``group``; assumed while Redis cannot say (a live group
        needs no Redis: a drop is then only learned when a transfer fails or times out)."""
        now = time.monotonic()
        if now < self._unchecked_until:
            return True
        try:
            epoch = current_epoch(self._epochs, pair)
        except redis.RedisError as exc:
            self._unchecked_until = now + EPOCH_RETRY_S
            if not self._redis_failing:
                log.warning("%s: pair-epoch checks failing (%s: %s); using the live pair groups unchecked",
                            self.worker_id, type(exc).__name__, exc)
            self._redis_failing = True
            return True
        if self._redis_failing:
            log.warning("%s: pair-epoch checks work again", self.worker_id)
            self._redis_failing = False
        return group.epoch == epoch

    def _pair(self, peer: str) -> PairKeys:
        return PairKeys.of(self._keys, *sorted((self.worker_id, peer)))

    def _form(self, peer: str, pair: PairKeys) -> PairGroup:
        rank = 0 if self.worker_id < peer else 1
        timeout = timedelta(seconds=self._config.rendezvous_timeout_s)
        label = "|".join(sorted((self.worker_id, peer)))
        store, epoch = (self._host_store if rank == 0 else self._join_store)(pair, label, peer, timeout)
        try:
            backend = self._make_backend(store, rank)
            _warm_up(backend, rank, self.device)
        except RuntimeError as exc:
            drop_epoch(self._redis, pair, epoch)
            raise RendezvousTimeoutError(f"could not form a pair group between {self.worker_id!r} and "
                                         f"{peer!r} within {timeout.total_seconds():g} s: {exc}") from exc
        return PairGroup(peer, rank, epoch, backend, store, self.device)

    def _host_store(self, pair: PairKeys, label: str, peer: str, timeout: timedelta) -> tuple[dist.Store, str]:
        """Rank 0: listen, publish a signed record, check rank 1's proof, prove ours."""
        secret = self._config.secret
        store = dist.TCPStore(self._host, 0, 2, True, timeout=timeout, wait_for_workers=False,
                              master_listen_fd=_listen(self._host))
        record = Record(new_nonce()[:16], self._host, store.port, new_nonce(), "")
        record = replace(record, proof=proof(secret, "record", label, record.epoch, record.host, str(record.port),
                                             record.nonce))
        publish(self._redis, pair, record, timeout.total_seconds())
        try:
            joined = _parse(_store_get(store, _AUTH1, peer, timeout))
            if joined == REFUSED:
                raise PeerAuthError(refused_by(peer, label))
            if not check(secret, joined.get("proof"), "rank1", label, record.epoch, record.nonce):
                store.set(_AUTH0, REFUSED)
                raise PeerAuthError(refusal(f"{peer!r} (or whoever joined as it)", label, secret))
            store.set(_AUTH0, proof(secret, "rank0", label, record.epoch, str(joined.get("nonce"))))
        except BaseException:
            withdraw(self._redis, pair, record)
            raise
        return store, record.epoch

    def _join_store(self, pair: PairKeys, label: str, peer: str, timeout: timedelta) -> tuple[dist.Store, str]:
        """Rank 1: take rank 0's record, check its proof, prove ours, check rank 0's answer."""
        secret = self._config.secret
        record = take(self._redis, pair, timeout.total_seconds(), peer)
        try:
            store = dist.TCPStore(record.host, record.port, 2, False, timeout=timeout)
        except RuntimeError as exc:
            raise RendezvousTimeoutError(f"could not reach the pair-group store of {peer!r} at "
                                         f"{record.host}:{record.port}: {exc}") from exc
        if not check(secret, record.proof, "record", label, record.epoch, record.host, str(record.port),
                     record.nonce):
            store.set(_AUTH1, REFUSED)  # so that rank 0 fails at once with a clear error too
            raise PeerAuthError(refusal(f"{peer!r}", label, secret))
        nonce = new_nonce()
        store.set(_AUTH1, json.dumps({"nonce": nonce, "proof": proof(secret, "rank1", label, record.epoch,
                                                                      record.nonce)}))
        answer = _store_get(store, _AUTH0, peer, timeout).decode(errors="replace")
        if answer == REFUSED:
            raise PeerAuthError(refused_by(peer, label))
        if not check(secret, answer, "rank0", label, record.epoch, nonce):
            raise PeerAuthError(refusal(f"{peer!r}", label, secret))
        return store, record.epoch

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


def _timed_client(client: redis.Redis, timeout_s: float) -> redis.Redis:
    """A client beside ``client`` (same server and credentials) whose calls time out."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def _listen(host: str) -> int:
    """A socket listening on ``host`` only, for TCPStore to serve on (it takes the fd over).
    TCPStore alone would listen on every interface."""
    family, _, _, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise KVStoreError(f"cannot listen on {host!r} for pair groups: {exc}; TransportConfig.advertise_host "
                           f"must be an address of this machine") from exc
    return sock.detach()


def _store_get(store: dist.Store, key: str, peer: str, timeout: timedelta) -> bytes:
    try:
        return store.get(key)
    except RuntimeError as exc:
        raise RendezvousTimeoutError(f"{peer!r} did not complete the pair-group handshake within "
                                     f"{timeout.total_seconds():g} s: {exc}") from exc


def _parse(raw: bytes) -> dict | str:
    text = raw.decode(errors="replace")
    if text == REFUSED:
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


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
