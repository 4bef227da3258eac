"""The cluster behind the router: prefill on one pool, KV handoff, decode on another.

For each request: a prefill replica computes the prompt and its first token; a decode
replica reserves blocks; both ends move the KV over their pair group (NCCL or gloo); the
decode replica streams the remaining tokens. Replicas are picked by load. A colocated
cluster sends each request to one replica. Detokenization and stop strings happen here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from contextlib import aclosing
from collections.abc import AsyncIterator

from cluster.messages import DecodeRequest, PrefillRequest, PrefillResult
from cluster.stage_timings import StageTimings, TimingLog
from cluster.output_processor import OutputProcessor
from cluster.pool_handles import Pools, Replica, pick_decode, pick_prefill
from engine.outputs import RequestOutput
from engine.request_validation import validate_prompt
from engine.sampling_params import SamplingParams
from engine.tokenizer import Tokenizer
from router.backend import BackendStats


class NoCapacityError(RuntimeError):
    """No decode replica could take a request before the admission timeout."""


class Dispatcher:
    def __init__(self, pools: Pools, tokenizer: Tokenizer, model_name: str, max_model_len: int,
                 vocab_size: int, eos_token_ids: tuple[int, ...], admission_timeout_s: float = 120.0):
        self.pools, self.tokenizer, self.model_name = pools, tokenizer, model_name
        self.max_model_len, self.vocab_size, self.eos_token_ids = max_model_len, vocab_size, eos_token_ids
        self.admission_timeout_s = admission_timeout_s
        self.handoff_bytes = 0
        self.timings = TimingLog()
        self._refresher: asyncio.Task | None = None

    async def generate(self, request_id: str | None, prompt_token_ids: list[int], params: SamplingParams,
                       cache_salt: str | None = None) -> AsyncIterator[RequestOutput]:
        """Stream a request's deltas; InvalidRequestError before anything is sent for bad input."""
        validate_prompt(prompt_token_ids, self.vocab_size, self.max_model_len)
        params.validate()
        self._keep_loads_fresh()
        rid = request_id or uuid.uuid4().hex
        out = OutputProcessor(rid, prompt_token_ids, params, self.tokenizer, self.eos_token_ids,
                              self.max_model_len)
        worker_params = dataclasses.replace(params, stop=())
        req = PrefillRequest(rid, list(prompt_token_ids), worker_params, cache_salt)
        stages = self._disaggregated(req, out) if self.pools.disaggregated else self._colocated(req, out)
        async with aclosing(stages):  # a caller that leaves closes every stage, freeing its KV
            async for delta in stages:
                yield delta

    async def _colocated(self, req: PrefillRequest, out: OutputProcessor) -> AsyncIterator[RequestOutput]:
        replica = pick_prefill(self.pools.colocated)
        replica.inflight += 1
        try:
            stream = self._stream(replica, replica.actor.generate.remote(req), req.request_id, out)
            async with aclosing(stream):
                async for delta in stream:
                    yield delta
        finally:
            replica.inflight -= 1

    async def _disaggregated(self, req: PrefillRequest, out: OutputProcessor) -> AsyncIterator[RequestOutput]:
        clock = self.timings.start(req.request_id)
        prefill = pick_prefill(self.pools.prefill)
        first = await self._prefill(prefill, req)
        clock.mark("prefill")
        handed_off = False
        try:
            delta = out.first_token(first.token_id, first.logprob, first.num_cached_tokens)
            yield delta
            if delta.finished:
                return
            decode = await self._handoff(prefill, first, req)
            clock.mark("handoff")
            handed_off = True
        finally:
            if not handed_off:  # finished at the first token, or the caller left: drop the held KV
                prefill.actor.release.remote(req.request_id)
        try:
            stream = self._stream(decode, decode.actor.stream.remote(req.request_id), req.request_id, out)
            async with aclosing(stream):
                async for delta in stream:
                    if delta.finished:
                        clock.mark("decode")
                    yield delta
        finally:
            decode.inflight -= 1  # claimed in _reserve
    async def _prefill(self, replica: Replica, req: PrefillRequest) -> PrefillResult:
        replica.inflight += 1
        try:
            return await replica.actor.prefill.remote(req)
        except asyncio.CancelledError:
            replica.actor.abort.remote(req.request_id)
            raise
        finally:
            replica.inflight -= 1

    async def _handoff(self, prefill: Replica, first: PrefillResult, req: PrefillRequest) -> Replica:
        """Reserve blocks on a decode replica and move the prompt's KV there."""
        dreq = DecodeRequest(req.request_id, req.prompt_token_ids, [first.token_id], req.params,
                             prefill.worker_id, first.generator_state, req.cache_salt)
        decode, blocks = await self._reserve(dreq)
        try:
            sent = await prefill.actor.send_kv.remote(req.request_id, decode.worker_id, decode.actor, blocks)
        except BaseException:
            decode.inflight -= 1
            decode.actor.abort.remote(req.request_id)
            raise
        self.handoff_bytes += sent
        return decode

    async def _reserve(self, dreq: DecodeRequest) -> tuple[Replica, list[int]]:
        deadline = asyncio.get_running_loop().time() + self.admission_timeout_s
        while True:
            tried: set[str] = set()
            while (replica := pick_decode(self.pools.decode, tried)) is not None:
                replica.inflight += 1  # claimed before awaiting, so concurrent picks spread out
                try:
                    blocks = await replica.actor.reserve.remote(dreq)
                except BaseException:
                    replica.inflight -= 1
                    raise
                if blocks is not None:
                    return replica, blocks
                replica.inflight -= 1
                tried.add(replica.worker_id)
            if asyncio.get_running_loop().time() > deadline:
                raise NoCapacityError(f"no decode replica had room for request {dreq.request_id!r} "
                                      f"within {self.admission_timeout_s:g} s")
            await asyncio.sleep(0.02)
            await self.pools.refresh()

    async def _stream(self, replica: Replica, stream, request_id: str, out: OutputProcessor
                      ) -> AsyncIterator[RequestOutput]:
        worker_done = False
        try:
            async for ref in stream:
                raw = await ref
                worker_done = raw.finished
                delta = out.worker_delta(raw)
                yield delta
                if delta.finished:
                    break
        finally:
            if not worker_done:  # the caller left, or a stop string ended it here
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
            handoff_bytes_total=self.handoff_bytes, num_preemptions=sum(l.preemptions for l in loads))

    async def aclose(self) -> None:
        """Stop the background load refresh (call on the loop that served requests)."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None

    def _keep_loads_fresh(self, interval_s: float = 0.25) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loads(interval_s))

    async def _refresh_loads(self, interval_s: float) -> None:
        while True:
            await self.pools.refresh()
            await asyncio.sleep(interval_s)

