"""The cluster behind the router: prefill on one pool, KV handoff, decode on another.

For each request: a prefill replica computes the prompt and its first token; a decode
replica reserves blocks (reusing the prefix it has cached); the prefill replica moves the
rest of the KV over their pair group (NCCL or gloo); the decode replica streams the
remaining tokens. Replicas are picked by cached prefix against load (pool_handles). A
colocated cluster sends each request to one replica. Detokenization and stop strings
happen here.

Failures: a replica whose call fails because its process died is marked down (no more
requests until it answers again, pool_handles) and the request gets ReplicaFailed, a
ServiceUnavailableError (HTTP 503 / gRPC UNAVAILABLE with a retry hint), never Ray's
traceback. A request that has streamed nothing yet is retried once on another replica. A
prefill replica that dies after its first token went out, before the handoff, is replaced
once by a prefill of the prompt and that token elsewhere (greedy output is unchanged; a
seeded sampler restarts from its seed). Any other failure after the first token ends with
ReplicaFailed; a handoff that breaks ends the same way; both ends free the request's blocks.
A replica whose process lives but serves nothing (no ping answered for PING_DOWN_S, or its
engine thread died) is killed so that Ray restarts it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

import ray
import redis
from ray import ObjectRef
from ray.exceptions import RayActorError, RayTaskError

from cluster.cluster_view import ClusterView
from cluster.output_channel import OutputDemux, ReplicaFailed
from cluster.output_processor import OutputProcessor
from cluster.pool_handles import HealthState, Replica, RequestShape, first_line, usable
from cluster.stage_timings import TimingLog
from engine.errors import EngineStopped
from engine.outputs import RequestOutput, Reservation
from engine.request_validation import validate_prompt
from engine.sampling_params import SamplingParams
from engine.segments.spec import SegmentReuse, SegmentStats
from engine.step_profile import add_totals
from engine.tokenizer import AnyTokenizer
from kvstore.errors import KVStoreError
from router.backend import BackendHealth, BackendStats
from router.errors import ServiceUnavailableError
from workers.messages import DecodeRequest, PrefillRequest, PrefillResult

log = logging.getLogger(__name__)
PEER_CHECK_S = 0.25  # how often a handoff in flight checks whether its decode replica went down


class NoCapacityError(ServiceUnavailableError):
    """No decode replica could take a request: all were full until the admission timeout, or
    none is up."""

    retry_after_s = 1


class Dispatcher:
    def __init__(self, view: ClusterView, tokenizer: AnyTokenizer, model_name: str, max_model_len: int,
                 vocab_size: int, eos_token_ids: tuple[int, ...], admission_timeout_s: float = 120.0):
        self.view, self.pools = view, view.pools
        self.tokenizer, self.model_name = tokenizer, model_name
        self.max_model_len, self.vocab_size, self.eos_token_ids = max_model_len, vocab_size, eos_token_ids
        self.admission_timeout_s = admission_timeout_s
        self.handoff_bytes = 0
        self.timings = TimingLog()
        self.outputs = OutputDemux(uuid.uuid4().hex, on_failure=self._stream_broke)
        self.pools.on_hung = self._replace
        self.pools.on_error = self._ping_failed

    async def generate(self, request_id: str | None, prompt_token_ids: list[int], params: SamplingParams,
                       cache_salt: str | None = None, segments: SegmentReuse | None = None
                       ) -> AsyncIterator[RequestOutput]:
        """Stream a request's deltas; InvalidRequestError before anything is sent for bad input.
        ``segments``: reused on the replica that prefills (picked where they are held, against
        load); a decode replica receives plain KV (docs/segment_reuse.md)."""
        validate_prompt(prompt_token_ids, self.vocab_size, self.max_model_len)
        if segments is not None:
            segments.validate(len(prompt_token_ids))
        self.view.ensure_running()
        rid = request_id or uuid.uuid4().hex
        out = OutputProcessor(rid, prompt_token_ids, params, self.tokenizer, self.eos_token_ids,
                              self.max_model_len)
        worker_params = dataclasses.replace(params, stop=())
        req = PrefillRequest(rid, list(prompt_token_ids), worker_params, cache_salt, segments=segments)
        shape = self.view.shape(req.prompt_token_ids, cache_salt, segments)
        stages = self._disaggregated(req, shape, out) if self.pools.disaggregated else \
            self._colocated(req, shape, out)
        async with aclosing(stages):  # a caller that leaves closes every stage, freeing its KV
            async for delta in stages:
                yield delta

    async def _colocated(self, req: PrefillRequest, shape: RequestShape, out: OutputProcessor
                         ) -> AsyncIterator[RequestOutput]:
        tried: set[str] = set()
        while True:
            replica = self.view.pick_colocated(self.pools.colocated, shape, tried)
            self.view.routed(replica, shape)
            self.timings.start(req.request_id).workers["colocated"] = replica.worker_id
            streamed = False
            try:
                async for delta in self._colocated_on(replica, req, shape, out):
                    streamed = True
                    yield delta
                return
            except ReplicaFailed:
                if streamed or tried:
                    raise
                tried.add(replica.worker_id)
                log.warning("request %s: retrying on another replica after %s failed", req.request_id,
                            replica.worker_id)

    async def _colocated_on(self, replica: Replica, req: PrefillRequest, shape: RequestShape,
                            out: OutputProcessor) -> AsyncIterator[RequestOutput]:
        tokens = shape.uncached(replica.worker_id)
        replica.inflight += 1
        replica.pending_tokens += tokens  # until its first token: prefill work queued there
        replica.claim(tokens)
        prefilling = True
        try:
            stream = self._stream(replica, lambda channel: replica.actor.start_generate.remote(req, channel),
                                  req.request_id, out)
            async with aclosing(stream):
                async for delta in stream:
                    if prefilling:
                        replica.pending_tokens -= tokens
                        prefilling = False
                    yield delta
        finally:
            replica.inflight -= 1
            if prefilling:
                replica.pending_tokens -= tokens

    async def _disaggregated(self, req: PrefillRequest, shape: RequestShape, out: OutputProcessor
                             ) -> AsyncIterator[RequestOutput]:
        clock = self.timings.start(req.request_id)
        if not usable(self.pools.decode):  # checked before any token is out
            raise NoCapacityError("no decode replica is up: "
                                  + ", ".join(f"{r.worker_id}: {r.state.value}" for r in self.pools.decode))
        prefill, first = await self._prefill_somewhere(req, shape)
        clock.mark("prefill")
        clock.workers["prefill"] = prefill.worker_id
        handed_off, recomputed = False, False
        try:
            delta = out.first_token(first.token_id, first.logprob, first.num_cached_tokens, first.num_reused_tokens)
            yield delta
            while not delta.finished:
                try:
                    decode = await self._handoff(prefill, first, req, shape)
                    handed_off = True
                    break
                except ReplicaFailed as failure:
                    if recomputed or prefill.state is not HealthState.DOWN:
                        raise
                    log.warning("request %s: prefill replica %s died before its handoff (%s); prefilling the "
                                "prompt and the token sent so far again", req.request_id, prefill.worker_id, failure)
                # the token is out: the prompt and it are prefilled elsewhere, whose token is the next one
                recomputed, req = True, _continued(req, first.token_id)
                shape = self.view.shape(req.prompt_token_ids, req.cache_salt, req.segments)
                prefill, first = await self._prefill_somewhere(req, shape)
                clock.workers["prefill"] = prefill.worker_id
                delta = out.first_token(first.token_id, first.logprob, first.num_cached_tokens, first.num_reused_tokens)
                yield delta
            if not handed_off:
                return
            clock.workers["decode"] = decode.worker_id
            clock.mark("handoff")
        finally:
            if not handed_off:  # finished at its prefill's token, or the caller left: drop the held KV
                self._tell(prefill, "release", req.request_id)
        try:
            stream = self._stream(decode, lambda channel: decode.actor.start_stream.remote(req.request_id, channel),
                                  req.request_id, out)
            async with aclosing(stream):
                async for delta in stream:
                    if delta.finished:
                        clock.mark("decode")
                    yield delta
        finally:
            decode.inflight -= 1  # claimed in _reserve

    async def _prefill_somewhere(self, req: PrefillRequest, shape: RequestShape) -> tuple[Replica, PrefillResult]:
        """Prefill on the best replica; if it fails (nothing has streamed yet), once more on another."""
        tried: set[str] = set()
        while True:
            prefill = self.view.pick_prefill(self.pools.prefill, shape, tried)
            self.view.routed(prefill, shape)
            pull = shape.host_pull(prefill.worker_id)
            attempt = dataclasses.replace(req, host_prefix_blocks=pull) if pull else req
            try:
                return prefill, await self._prefill(prefill, attempt, shape.uncached(prefill.worker_id))
            except ReplicaFailed:
                if tried:
                    raise
                tried.add(prefill.worker_id)
                log.warning("request %s: retrying its prefill on another replica after %s failed", req.request_id,
                            prefill.worker_id)

    async def _prefill(self, replica: Replica, req: PrefillRequest, tokens: int) -> PrefillResult:
        replica.inflight += 1
        replica.pending_tokens += tokens
        try:
            return await self._call(replica, replica.actor.prefill.remote(req))
        except asyncio.CancelledError:
            self._tell(replica, "abort", req.request_id)
            raise
        finally:
            replica.inflight -= 1
            replica.pending_tokens -= tokens

    async def _handoff(self, prefill: Replica, first: PrefillResult, req: PrefillRequest,
                       shape: RequestShape) -> Replica:
        """Reserve blocks on a decode replica and move the prompt's KV there."""
        dreq = DecodeRequest(req.request_id, req.prompt_token_ids, [first.token_id], req.params,
                             prefill.worker_id, first.generator_state, req.cache_salt, first.exact_tokens)
        decode, reservation = await self._reserve(dreq, shape)
        try:  # ReplicaFailed if either end dies or the transfer breaks; both ends free the blocks
            sent = await self._call(prefill, prefill.actor.send_kv.remote(req.request_id, decode.worker_id,
                                                                          decode.actor, reservation), decode)
        except BaseException:
            decode.inflight -= 1
            self._tell(decode, "abort", req.request_id)
            raise
        self.handoff_bytes += sent
        return decode

    async def _reserve(self, dreq: DecodeRequest, shape: RequestShape) -> tuple[Replica, Reservation]:
        deadline = asyncio.get_running_loop().time() + self.admission_timeout_s
        while True:
            tried: set[str] = set()
            while (replica := self.view.pick_decode(self.pools.decode, shape, tried)) is not None:
                replica.inflight += 1  # claimed before awaiting, so concurrent picks spread out
                replica.claim(shape.uncached(replica.worker_id) + 1)
                try:
                    reservation = await self._call(replica, replica.actor.reserve.remote(dreq))
                except ReplicaFailed:  # nothing reserved there: try the others
                    reservation = None
                except BaseException:
                    replica.inflight -= 1
                    raise
                if reservation is not None:
                    self.view.routed(replica, shape)
                    return replica, reservation
                replica.inflight -= 1
                tried.add(replica.worker_id)
            if not any(r.state is not HealthState.DOWN for r in self.pools.decode):
                raise NoCapacityError(f"no decode replica is up for request {dreq.request_id!r}")
            if asyncio.get_running_loop().time() > deadline:
                raise NoCapacityError(f"no decode replica had room for request {dreq.request_id!r} "
                                      f"within {self.admission_timeout_s:g} s")
            await asyncio.sleep(0.02)
            await self.pools.refresh(wait_s=0.25)

    async def _call(self, replica: Replica, call: ObjectRef, peer: Replica | None = None):
        """Await an actor call. Its process dying (or its engine stopping) marks the replica down
        and raises ReplicaFailed; so does a KV transfer or a peer failing under it, without
        marking it down, and, with a ``peer``, either of the two going down meanwhile (the call
        is cancelled: a transfer would otherwise wait out its timeouts, and a call to a dead
        replica would wait for its restart to run there). Any other error of the call is
        raised as it is."""
        try:
            if peer is None:
                return await call
            return await self._unless_down((replica, peer), call)
        except RayTaskError as e:  # the actor ran the call: the failure is the call's, or a peer's
            if isinstance(e, EngineStopped):
                replica.mark_down(f"its engine stopped: {first_line(e)}")
                self._replace(replica)
            elif not isinstance(e, (RayActorError, KVStoreError, redis.RedisError)):  # Redis: pair epochs
                raise
            raise ReplicaFailed(f"{replica.worker_id}: {first_line(e.cause if e.cause else e)}") from None
        except RayActorError as e:
            replica.mark_down(first_line(e))
            raise ReplicaFailed(f"replica {replica.worker_id} failed: {first_line(e)}", retry_after_s=5) from None

    @staticmethod
    async def _unless_down(watched: tuple[Replica, ...], call: ObjectRef):
        future = asyncio.ensure_future(_awaited(call))
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=PEER_CHECK_S)
                if done:
                    return future.result()
                if (down := next((r for r in watched if r.state is HealthState.DOWN), None)) is not None:
                    ray.cancel(call)
                    raise ReplicaFailed(f"replica {down.worker_id} went down: {down.reason}", retry_after_s=5)
        finally:
            future.cancel()

    def _tell(self, replica: Replica, method: str, request_id: str) -> None:
        """A call nobody waits for (release, abort); skipped for a replica that is down, whose
        process holds nothing of the request any more (or will drop it when it answers)."""
        if replica.state is not HealthState.DOWN:
            getattr(replica.actor, method).remote(request_id)

    def _ping_failed(self, replica: Replica, error: BaseException) -> None:
        if isinstance(error, EngineStopped):  # its process lives on, serving nothing
            self._replace(replica)

    def _replace(self, replica: Replica) -> None:
        """Kill a replica whose process lives but serves nothing (hung, or its engine thread
        died) so that Ray restarts it; once per incarnation, one log line."""
        if replica.killed == replica.incarnation:
            return
        replica.killed = replica.incarnation
        log.warning("replica %s: killing it for Ray to restart (%s)", replica.worker_id, replica.reason)
        try:
            ray.kill(replica.actor, no_restart=False)
        except Exception as e:  # noqa: BLE001 — already gone: Ray restarts it, or it is being removed
            log.warning("replica %s could not be killed: %s", replica.worker_id, first_line(e))

    def _stream_broke(self, worker_id: str, reason: str) -> None:
        for replica in self.pools.all:
            if replica.worker_id == worker_id:
                replica.mark_down(f"its output stream broke: {reason}")

    async def _stream(self, replica: Replica, start, request_id: str, out: OutputProcessor
                      ) -> AsyncIterator[RequestOutput]:
        """Start a request on ``replica`` (``start(channel)`` returns the actor call) and yield
        its deltas from this dispatcher's batched output channel."""
        queue = self.outputs.open(request_id, replica)
        worker_done = False
        try:
            await self._call(replica, start(self.outputs.channel_for_loop()))
            while True:
                raw = await queue.get()
                if isinstance(raw, ReplicaFailed):
                    raise raw
                worker_done = raw.finished
                delta = out.worker_delta(raw)
                yield delta
                if delta.finished:
                    break
        finally:
            self.outputs.close(request_id)
            if not worker_done:  # the caller left, a stop string ended it here, or the start failed
                self._tell(replica, "abort", request_id)

    def abort(self, request_id: str) -> None:
        for replica in self.pools.all:
            self._tell(replica, "abort", request_id)

    def health(self) -> BackendHealth:
        """Replica states by pool, and Redis's (cluster_view)."""
        return self.view.health()

    def stats(self) -> BackendStats:
        """Totals over the replicas' last reported loads (refreshed in the background; a replica
        that is down reports none)."""
        loads = [r.load for r in self.pools.all if r.load is not None]
        index = self.view.index_size()
        return BackendStats(
            num_waiting=sum(l.waiting for l in loads), num_running=sum(l.running for l in loads),
            num_blocks_used=sum(l.total_blocks - l.free_blocks for l in loads),
            num_blocks_total=sum(l.total_blocks for l in loads),
            prefix_cache_query_tokens=sum(l.prefix_cache_queries for l in loads),
            prefix_cache_hit_tokens=sum(l.prefix_cache_hits for l in loads),
            handoff_bytes_total=self.handoff_bytes, num_preemptions=sum(l.preemptions for l in loads),
            step_totals=add_totals([l.step_totals for l in loads]),
            prefix_index_blocks=index.blocks, prefix_index_bytes=index.nbytes, prefix_index_predicted=index.predicted,
            kv_event_blocks=self.view.follower.applied_blocks if self.view.follower is not None else 0,
            segments=SegmentStats.total([l.segments for l in loads]), segment_index_entries=len(self.view.segments))

    async def profiles(self) -> dict[str, dict]:
        """Every replica's engine step profile, by worker id."""
        replicas = self.pools.all
        found = await asyncio.gather(*(r.actor.profile.remote() for r in replicas))
        return {r.worker_id: p for r, p in zip(replicas, found)}

    async def aclose(self) -> None:
        """Stop the background tasks this loop runs (call on the loop that served requests)."""
        await self.outputs.aclose()
        await self.view.close()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the background tasks of every running loop, from a thread that runs none of them.

        Before Ray shuts down: a load ping or output reader left running on a router's loop
        would otherwise call into Ray after ``ray.shutdown``, which starts a stray Ray (or ends
        the process, when auto-connect is off)."""
        try:
            own = asyncio.get_running_loop()
        except RuntimeError:
            own = None
        loops = {t.get_loop() for t in self.view.tasks} | {t.get_loop() for t, _ in self.outputs.readers.values()}
        for loop in loops:
            if loop.is_closed() or not loop.is_running() or loop is own:
                continue  # a stopped loop runs nothing; this thread's own loop cannot be waited on here
            try:
                asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout_s)
            except Exception as e:  # noqa: BLE001 — shutting down: note it, go on
                log.warning("closing the dispatcher's tasks on a loop failed: %s", first_line(e))



def _continued(req: PrefillRequest, token: int) -> PrefillRequest:
    """``req`` after ``token`` was sent: that token joins the prompt and counts against the
    limits (a decode replica counts only the tokens it is handed)."""
    params = dataclasses.replace(req.params, max_tokens=req.params.max_tokens - 1,
                                 min_tokens=max(0, req.params.min_tokens - 1))
    return PrefillRequest(req.request_id, req.prompt_token_ids + [token], params, req.cache_salt,
                          segments=req.segments)


async def _awaited(call: ObjectRef):
    return await call
