"""What the dispatcher knows of the cluster, kept fresh in the background: each replica's
load and state (polled, pool_handles), which prefixes each one holds (followed from the KV
event stream into a compact prefix index, started from the latest snapshot: index_follower)
and whether Redis answers.

Redis down costs prefix routing and the host tier, not service: the view logs one line
when it stops answering and one when it is back, and then, if it came back empty (a new
server: another ``run_id``), forgets what the host tier held and reads the new event
stream from its start. A replica that comes back as a new process has its prefixes
forgotten too (its own CLEARED event says the same, if Redis carried it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import redis

from cluster.config import MAX_PREDICTED, POLICIES
from cluster.index.compact_index import CompactPrefixIndex, IndexSize
from cluster.index.index_follower import IndexFollower
from cluster.index.prefix_core import prompt_block_ids
from cluster.index.segment_index import RequestSegments, SegmentIndex
from cluster.pool_handles import (
    DECODE_LOAD_WEIGHT,
    Pools,
    Replica,
    RequestShape,
    first_line,
    pick_colocated,
    pick_decode,
    pick_prefill,
    usable,
)
from cluster.prefill_board import PrefillBoard
from engine.segments.spec import SegmentReuse
from kvstore.keys import HOST_WORKER
from kvstore.kv_events import KVEventSubscriber
from router.backend import BackendHealth, HealthState
from router.errors import ServiceUnavailableError

log = logging.getLogger(__name__)

REDIS_PING_TIMEOUT_S = 2.0
MAX_BACKOFF_S = 2.0


class NoReplicaError(ServiceUnavailableError):
    """Every replica of a pool is down (dead, restarting or hung)."""

    retry_after_s = 5  # a restarted replica loads its model first


class ClusterView:
    def __init__(self, pools: Pools, block_size: int, events: KVEventSubscriber | None,
                 load_interval_s: float = 0.25, host_pull_weight: float = 0.5, policy: str = "prefix-aware",
                 prediction_ttl_s: float = 30.0, snapshot_interval_s: float = 30.0,
                 max_predicted: int = MAX_PREDICTED):
        if policy not in POLICIES:
            raise ValueError(f"routing policy must be one of {POLICIES}, got {policy!r}")
        self.pools, self.block_size, self.events = pools, block_size, events
        self.host_pull_weight, self.policy = host_pull_weight, policy
        self._turns: dict[str, int] = {}
        self.prefixes = CompactPrefixIndex(max_predicted)
        self.follower = IndexFollower(events, self.prefixes, snapshot_interval_s) if events is not None else None
        self.segments = SegmentIndex()  # who holds which segments (not in snapshots: from the stream only)
        self._restored = False
        self.load_interval_s = load_interval_s
        self.prediction_ttl_s = prediction_ttl_s
        self.redis_state = HealthState.READY if events is not None else None
        self._redis_run_id: str | None = None
        self._pinger = _ping_client(events.client) if events is not None else None
        self._redis_ping: asyncio.Future | None = None
        self._tasks: list[asyncio.Task] = []
        self._boards: dict[str, PrefillBoard] = {}  # the prefill and the colocated pool's
        pools.on_restart = self._restarted

    def shape(self, prompt: list[int], cache_salt: str | None, segments: SegmentReuse | None = None
              ) -> RequestShape:
        if self.policy == "round-robin":
            return RequestShape(len(prompt), self.block_size, {}, 1.0)
        ids = prompt_block_ids(prompt, self.block_size, (cache_salt or "").encode())
        now = time.monotonic()
        self.prefixes.expire(now)
        matched = self.prefixes.matched_blocks(ids)
        shape = RequestShape(len(prompt), self.block_size, matched, self.host_pull_weight, ids)
        if segments is None or not segments.usable_spans():
            return shape
        self.segments.expire(now)
        wanted = RequestSegments.of(prompt, cache_salt, segments)
        reusable = self.segments.reusable_tokens(wanted, {w: n * self.block_size for w, n in matched.items()}, now)
        return dataclasses.replace(shape, segment_tokens=reusable, segments=wanted)

    def routed(self, replica: Replica, shape: RequestShape) -> None:
        """``replica`` will compute (or receive) the request's prompt blocks: predict it holds them."""
        if len(shape.hashes):
            self.prefixes.predict(replica.worker_id, shape.hashes, time.monotonic() + self.prediction_ttl_s)
        if shape.segments is not None and replica.role != "decode":  # a decode replica gets blocks, not segments
            self.segments.predict(replica.worker_id, shape.segments, time.monotonic() + self.prediction_ttl_s)

    def pick_prefill(self, replicas: list[Replica], shape: RequestShape, exclude: set[str] = frozenset()) -> Replica:
        """NoReplicaError when every replica (but those in ``exclude``) is down. The prefill pool's
        choice runs over its board's arrays (cluster/prefill_board.py); another list of replicas
        gets the same rule in Python (pick_prefill)."""
        if self.policy != "round-robin" and replicas and replicas is self.pools.prefill:
            return self._on_board(self._board(replicas, None), shape, exclude)
        options = self._options(replicas, exclude)
        return self._next(options) if self.policy == "round-robin" else pick_prefill(options, shape)

    def pick_colocated(self, replicas: list[Replica], shape: RequestShape, exclude: set[str] = frozenset()
                       ) -> Replica:
        """As pick_prefill, the load counting the KV each replica holds (pick_colocated's rule)."""
        if (self.policy != "round-robin" and replicas and replicas is self.pools.colocated
                and shape.block_size == self.block_size):
            return self._on_board(self._board(replicas, DECODE_LOAD_WEIGHT), shape, exclude)
        options = self._options(replicas, exclude)
        return self._next(options) if self.policy == "round-robin" else pick_colocated(options, shape)

    @staticmethod
    def _on_board(board: PrefillBoard, shape: RequestShape, exclude: set[str]) -> Replica:
        chosen = board.pick(shape, exclude)
        if chosen is None:
            raise _none_up(board.replicas)
        return chosen

    def _board(self, replicas: list[Replica], decode_weight: float | None) -> PrefillBoard:
        """The pool's board, attached anew if the pool changed or another view took its replicas."""
        pool = "prefill" if decode_weight is None else "colocated"
        board = self._boards.get(pool)
        if board is None or board.replicas is not replicas or len(board.slots) != len(replicas) \
                or any(r.board is not board for r in (replicas[0], replicas[-1])):
            board = self._boards[pool] = PrefillBoard(replicas, self.prefixes, self.block_size, decode_weight)
        return board

    def pick_decode(self, replicas: list[Replica], shape: RequestShape, exclude: set[str]) -> Replica | None:
        """None when no replica is left to try (all down, or in ``exclude``)."""
        options = usable(replicas, exclude)
        if not options:
            return None
        return self._next(options) if self.policy == "round-robin" else pick_decode(options, shape)

    @staticmethod
    def _options(replicas: list[Replica], exclude: set[str]) -> list[Replica]:
        options = usable(replicas, exclude)
        if not options:
            raise _none_up(replicas)
        return options

    def health(self) -> BackendHealth:
        """Replica states by pool and Redis's state, as last seen (no remote calls)."""
        pools = {role: {r.worker_id: r.state for r in getattr(self.pools, role)}
                 for role in ("prefill", "decode", "colocated") if getattr(self.pools, role)}
        components = {"redis": self.redis_state} if self.redis_state is not None else {}
        return BackendHealth(pools, components)

    def _restarted(self, replica: Replica) -> None:
        """A replica answered from a new process: the prefixes and segments it held are gone."""
        self.prefixes.clear(replica.worker_id)
        self.segments.clear(replica.worker_id)

    def _next(self, replicas: list[Replica]) -> Replica:
        """Round robin over a pool's usable replicas (keyed by role)."""
        key = replicas[0].role
        turn = self._turns.get(key, 0)
        self._turns[key] = turn + 1
        return replicas[turn % len(replicas)]

    def ensure_running(self) -> None:
        """Start the background tasks on the running loop (once, or again if they died)."""
        if self._tasks and not any(t.done() for t in self._tasks):
            return
        for t in self._tasks:
            t.cancel()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll_loads())]
        if self.events is not None:
            self._tasks.append(loop.create_task(self._follow_events()))

    @property
    def tasks(self) -> tuple[asyncio.Task, ...]:
        """The background tasks (all on the loop that last started them)."""
        return tuple(self._tasks)

    async def close(self) -> None:
        """Stop the background tasks if they run on this loop (a task is only stopped on its own)."""
        loop = asyncio.get_running_loop()
        if any(t.get_loop() is not loop for t in self._tasks):
            return
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._pinger is not None:
            self._pinger.close()

    def index_size(self) -> IndexSize:
        """The prefix index's size (for /metrics)."""
        return self.prefixes.size()

    async def catch_up(self) -> None:
        """Apply every event published so far (tests and benchmarks use it to settle)."""
        if self.follower is not None:
            while (batch := await asyncio.to_thread(self.events.read_batch, 0)).position is not None:
                self.follower.apply(batch)
                self.segments.apply(batch)

    async def _poll_loads(self) -> None:
        while True:
            await self.pools.refresh(wait_s=self.load_interval_s)
            self._check_redis()
            await asyncio.sleep(self.load_interval_s)

    def _check_redis(self) -> None:
        """Start a ping of Redis (one in flight at a time) and judge the last one."""
        if self._pinger is None:
            return
        ping = self._redis_ping
        if ping is None:
            self._redis_ping = asyncio.ensure_future(asyncio.to_thread(self._pinger.info, "server"))
            self._redis_ping.add_done_callback(self._redis_answered)

    def _redis_answered(self, ping: asyncio.Future) -> None:
        self._redis_ping = None
        if ping.cancelled():
            return
        if (error := ping.exception()) is not None:
            self._redis_failed(error)
            return
        run_id = ping.result().get("run_id")
        if self.redis_state is not HealthState.READY:
            log.warning("Redis answers again%s", "" if run_id == self._redis_run_id else " (a new, empty server)")
        if self._redis_run_id is not None and run_id != self._redis_run_id:
            self._redis_replaced()
        self._redis_run_id, self.redis_state = run_id, HealthState.READY

    def _redis_failed(self, error: BaseException) -> None:
        if self.redis_state is HealthState.READY:
            log.warning("Redis is unreachable (%s); routing without prefix events, host tier off until it is "
                        "back", first_line(error))
        self.redis_state = HealthState.DOWN

    def _redis_replaced(self) -> None:
        """Redis restarted empty: the host tier holds nothing, the event stream starts over."""
        self.prefixes.clear(HOST_WORKER)
        if self.follower is not None:
            self.events.last_id = self.follower.position = "0-0"

    async def _follow_events(self) -> None:
        pause = 0.0
        while True:
            try:
                if not self._restored:  # a router starting: from the latest snapshot, if any
                    found = await asyncio.to_thread(self.follower.fetch_snapshot)
                    if found is not None:
                        self.follower.load(*found)
                    self._restored = True
                batch = await asyncio.to_thread(self.events.read_batch, 200)
                self.follower.apply(batch)
                self.segments.apply(batch)
                if self.follower.snapshot_due():
                    await asyncio.to_thread(self.follower.save, *self.follower.export())
            except redis.RedisError as e:  # Redis away: route without prefix knowledge, retry
                self._redis_failed(e)
                pause = min(max(2 * pause, 0.1), MAX_BACKOFF_S)
                await asyncio.sleep(pause)
                continue
            pause = 0.0


def _none_up(replicas: list[Replica]) -> NoReplicaError:
    role = replicas[0].role if replicas else "?"
    states = ", ".join(f"{r.worker_id}: {r.state.value}" for r in replicas)
    return NoReplicaError(f"no {role} replica is up ({states})")


def _ping_client(client: redis.Redis) -> redis.Redis:
    """A client for health pings beside ``client`` (same server and credentials) whose calls
    time out, so a hung Redis cannot hold a thread for long."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": REDIS_PING_TIMEOUT_S,
              "socket_connect_timeout": REDIS_PING_TIMEOUT_S}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
