"""The cluster behind the router: prefill on one pool, KV handoff, decode on another.

For each request: a prefill replica computes the prompt and its first token; a decode
replica reserves blocks (reusing the prefix it has cached); the prefill replica moves the
rest of the KV over their pair group (NCCL or gloo); the decode replica streams the
remaining tokens. Replicas are picked by cached prefix against load (pool_handles). A
colocated cluster sends each request to one replica. Detokenization and stop strings
happen here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from contextlib import aclosing
from collections.abc import AsyncIterator

from cluster.cluster_view import ClusterView
from cluster.messages import DecodeRequest, PrefillRequest, PrefillResult
from cluster.output_channel import OutputDemux, ReplicaFailed
from cluster.output_processor import OutputProcessor
from cluster.pool_handles import Replica, RequestShape
from cluster.stage_timings import TimingLog
from engine.llm_engine import Reservation
from engine.outputs import RequestOutput
from engine.step_profile import add_totals
from engine.request_validation import validate_prompt
from engine.sampling_params import SamplingParams
from engine.tokenizer import AnyTokenizer
from router.backend import BackendStats
from router.errors import ServiceUnavailableError


class NoCapacityError(ServiceUnavailableError):
    """No decode replica could take a request before the admission timeout."""


class Dispatcher:
    def __init__(self, view: ClusterView, tokenizer: AnyTokenizer, model_name: str, max_model_len: int,
                 vocab_size: int, eos_token_ids: tuple[int, ...], admission_timeout_s: float = 120.0):
        self.view, self.pools = view, view.pools
        self.tokenizer, self.model_name = tokenizer, model_name
        self.max_model_len, self.vocab_size, self.eos_token_ids = max_model_len, vocab_size, eos_token_ids
        self.admission_timeout_s = admission_timeout_s
        self.handoff_bytes = 0
        self.timings = TimingLog()
        self.outputs = OutputDemux(uuid.uuid4().hex)

    async def generate(self, request_id: str | None, prompt_token_ids: list[int], params: SamplingParams,
                       cache_salt: str | None = None) -> AsyncIterator[RequestOutput]:
        """Stream a request's deltas; InvalidRequestError before anything is sent for bad input."""
        validate_prompt(prompt_token_ids, self.vocab_size, self.max_model_len)
        params.validate()
        self.view.ensure_running()
        rid = request_id or uuid.uuid4().hex
        out = OutputProcessor(rid, prompt_token_ids, params, self.tokenizer, self.eos_token_ids,
                              self.max_model_len)
        worker_params = dataclasses.replace(params, stop=())
        req = PrefillRequest(rid, list(prompt_token_ids), worker_params, cache_salt)
        shape = self.view.shape(req.prompt_token_ids, cache_salt)
        stages = self._disaggregated(req, shape, out) if self.pools.disaggregated else \
            self._colocated(req, shape, out)
        async with aclosing(stages):  # a caller that leaves closes every stage, freeing its KV
            async for delta in stages:
                yield delta

    async def _colocated(self, req: PrefillRequest, shape: RequestShape, out: OutputProcessor
                         ) -> AsyncIterator[RequestOutput]:
        replica = self.view.pick_colocated(self.pools.colocated, shape)
        self.view.routed(replica, shape)
        self.timings.start(req.request_id).workers["colocated"] = replica.worker_id
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
        prefill = self.view.pick_prefill(self.pools.prefill, shape)
        self.view.routed(prefill, shape)
        clock.workers["prefill"] = prefill.worker_id
        pull = shape.host_pull(prefill.worker_id)
        if pull:
            req = dataclasses.replace(req, host_prefix_blocks=pull)
        first = await self._prefill(prefill, req, shape.uncached(prefill.worker_id))
        clock.mark("prefill")
        handed_off = False
        try:
            delta = out.first_token(first.token_id, first.logprob, first.num_cached_tokens)
            yield delta
            if delta.finished:
                return
            decode = await self._handoff(prefill, first, req, shape)
            clock.workers["decode"] = decode.worker_id
            clock.mark("handoff")
            handed_off = True
        finally:
            if not handed_off:  # finished at the first token, or the caller left: drop the held KV
                prefill.actor.release.remote(req.request_id)
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

    async def _prefill(self, replica: Replica, req: PrefillRequest, tokens: int) -> PrefillResult:
        replica.inflight += 1
        replica.pending_tokens += tokens
        try:
            return await replica.actor.prefill.remote(req)
        except asyncio.CancelledError:
            replica.actor.abort.remote(req.request_id)
            raise
        finally:
            replica.inflight -= 1
            replica.pending_tokens -= tokens

    async def _handoff(self, prefill: Replica, first: PrefillResult, req: PrefillRequest,
                       shape: RequestShape) -> Replica:
        """Reserve blocks on a decode replica and move the prompt's KV there."""
        dreq = DecodeRequest(req.request_id, req.prompt_token_ids, [first.token_id], req.params,
                             prefill.worker_id, first.generator_state, req.cache_salt)
        decode, reservation = await self._reserve(dreq, shape)
        try:
            sent = await prefill.actor.send_kv.remote(req.request_id, decode.worker_id, decode.actor,
                                                      reservation)
        except BaseException:
            decode.inflight -= 1
            decode.actor.abort.remote(req.request_id)
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
                    reservation = await replica.actor.reserve.remote(dreq)
                except BaseException:
                    replica.inflight -= 1
                    raise
                if reservation is not None:
                    self.view.routed(replica, shape)
                    return replica, reservation
                replica.inflight -= 1
                tried.add(replica.worker_id)
            if asyncio.get_running_loop().time() > deadline:
                raise NoCapacityError(f"no decode replica had room for request {dreq.request_id!r} "
                                      f"within {self.admission_timeout_s:g} s")
            await asyncio.sleep(0.02)
            await self.pools.refresh()

    async def _stream(self, replica: Replica, start, request_id: str, out: OutputProcessor
                      ) -> AsyncIterator[RequestOutput]:
        """Start a request on ``replica`` (``start(channel)`` returns the actor call) and yield
        its deltas from this dispatcher's batched output channel."""
        queue = self.outputs.open(request_id, replica)
        worker_done = False
        try:
            await start(self.outputs.channel_for_loop())
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
                replica.actor.abort.remote(request_id)

    def abort(self, request_id: str) -> None:
        for replica in self.pools.all:
            replica.actor.abort.remote(request_id)

    def stats(self) -> BackendStats:
        """Totals over the replicas' last reported loads (refreshed in the background)."""
        loads = [r.load for r in self.pools.all if r.load is not None]
        return BackendStats(
            num_waiting=sum(l.waiting for l in loads), num_running=sum(l.running for l in loads),
            num_blocks_used=sum(l.total_blocks - l.free_blocks for l in loads),
            num_blocks_total=sum(l.total_blocks for l in loads),
            prefix_cache_query_tokens=sum(l.prefix_cache_queries for l in loads),
            prefix_cache_hit_tokens=sum(l.prefix_cache_hits for l in loads),
            handoff_bytes_total=self.handoff_bytes, num_preemptions=sum(l.preemptions for l in loads),
            step_totals=add_totals([l.step_totals for l in loads]))

    async def profiles(self) -> dict[str, dict]:
        """Every replica's engine step profile, by worker id."""
        replicas = self.pools.all
        found = await asyncio.gather(*(r.actor.profile.remote() for r in replicas))
        return {r.worker_id: p for r, p in zip(replicas, found)}

    async def aclose(self) -> None:
        """Stop the background tasks (call on the loop that served requests)."""
        await self.outputs.aclose()
        await self.view.close()

