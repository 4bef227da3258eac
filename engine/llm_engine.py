"""The single-process engine: tokenize, schedule, run the model, sample, detokenize.

    engine = LLMEngine(EngineConfig(model="path/to/checkpoint"))
    engine.add_request("r1", "Hello", SamplingParams(max_tokens=8, temperature=0))
    while engine.has_unfinished():
        for delta in engine.step(): ...
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import cast

import torch

from engine.attention import default_backend_name, get_backend
from engine.attention.shared_prefix import PlanCache
from engine.batch import build_model_input
from engine.cache_sizing import choose_num_blocks, resolve_max_model_len
from engine.config import EngineConfig, parse_dtype
from engine.detokenizer import IncrementalDetokenizer
from engine.eos_tokens import eos_token_ids
from engine.kv_cache_manager import KVCacheManager
from engine.launched_step import LaunchedStep
from engine.model.llama import LlamaForCausalLM
from engine.model.loader import load_model
from engine.model_config import ModelConfig
from engine.model_runner import KVCacheLost, ModelRunner, RunnerFactory, StepRunner
from engine.outputs import FinishReason, GenerationResult, RequestOutput, Reservation, TokenLogprob
from engine.request import PENDING, Request
from engine.request_validation import validate_prompt
from engine.sampler import Sampler
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.scheduler import Scheduler, SchedulerOutput
from engine.segments.planner import PagedKV, SegmentPlanner
from engine.segments.spec import SegmentReuse, SegmentStats
from engine.segments.store import SegmentStore
from engine.step_profile import StepProfile, step_kind
from engine.stop_conditions import token_finish_reason
from engine.tokenizer import check_stop_strings, load_tokenizer


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_blocks: int
    num_free_blocks: int
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    step_totals: dict = field(default_factory=dict)  # StepProfile.totals(): per step kind
    segments: SegmentStats = field(default_factory=SegmentStats)
    num_kv_handoffs: int = 0  # requests whose KV is held for a handoff or on its way here


def shared_prefix_threshold(config: EngineConfig, device: torch.device) -> int | None:
    """Saved K/V tokens per layer above which a decode step takes the shared-prefix path."""
    if not (config.shared_prefix_attention and config.cache.enable_prefix_caching):
        return None
    if config.shared_prefix_min_tokens is not None:
        return config.shared_prefix_min_tokens
    return 1 << 20 if device.type == "cuda" else 256


class LLMEngine:
    def __init__(self, config: EngineConfig, model: LlamaForCausalLM | None = None,
                 runner_factory: RunnerFactory | None = None):
        """``model`` injects weights already on the device (benchmarks); else they are loaded.
        ``runner_factory`` builds a runner whose KV cache lives elsewhere (it tells the block
        count); None: a ModelRunner over a cache sized here."""
        self.config = config
        self.device = torch.device(config.device)
        self.model_config = ModelConfig.from_dir(config.model)
        self.tokenizer = load_tokenizer(config.model)  # a NoTokenizer without tokenizer.json
        dtype = parse_dtype(config.dtype or self.model_config.torch_dtype)
        max_len = resolve_max_model_len(self.model_config, config.scheduler.max_model_len)
        if model is None:
            model = load_model(config.model, dtype, self.device, max_positions=max_len,
                               load_format=config.load_format)
        block_size = config.cache.block_size
        backend = None
        if runner_factory is None:
            backend = get_backend(config.attention_backend or default_backend_name(self.device))
            self.runner: StepRunner = ModelRunner(model, backend, choose_num_blocks(model, config, max_len),
                                                  block_size)
        else:
            self.runner = runner_factory(model)
        num_blocks = self.runner.num_blocks
        self.max_model_len = min(max_len, num_blocks * block_size)
        self.kv = KVCacheManager(num_blocks, block_size, config.cache.enable_prefix_caching)
        self.segments = self._segment_planner()
        self.scheduler = Scheduler(config.scheduler, self.kv, self.segments)
        self.eos_token_ids = eos_token_ids(config.model, self.model_config, self.tokenizer)
        self.sampler = Sampler(self.eos_token_ids)
        self.requests: dict[str, Request] = {}
        self.held: dict[str, Request] = {}         # finished, blocks kept for a handoff
        self.awaiting_kv: dict[str, Request] = {}  # blocks allocated, KV on its way
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self._seeds = torch.Generator().manual_seed(config.seed)
        self._ids = itertools.count()
        self.num_preemptions = 0
        self.profile = StepProfile()
        self._shared_prefix_min = shared_prefix_threshold(config, self.device)
        self._plan_cache = PlanCache()  # the last shared-prefix plan, reused while the batch is unchanged
        self._in_flight: LaunchedStep | None = None  # async scheduling: the step queued, not read back
        self.async_scheduling = (config.async_scheduling if config.async_scheduling is not None
                                 else self.device.type == "cuda")
        if self.device.type == "cuda" and backend is not None and backend.name == "triton":
            cast(ModelRunner, self.runner).warm_up()  # compile the prefill kernels now, not in the first request
            if config.cuda_graphs:
                cast(ModelRunner, self.runner).capture_graphs(config.scheduler.max_num_seqs, self.max_model_len,
                                                                config.scheduler.max_num_batched_tokens)

    # -- requests -------------------------------------------------------------------------
    def add_request(self, request_id: str | None, prompt: str | list[int], params: SamplingParams,
                    cache_salt: str | None = None, hold_kv: bool = False,
                    segments: SegmentReuse | None = None) -> str:
        """Queue a request; raises InvalidRequestError with a message for bad input.

        hold_kv keeps the request's blocks after it finishes (see ``held_kv``): the prefill
        side of a handoff runs a request to its first token and ships the prompt's KV.
        segments: reuse the KV of these prompt segments where this engine holds it (computed
        by earlier requests after other prefixes), keep it where not (docs/segment_reuse.md).
        """
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        if isinstance(prompt, str) and not prompt:
            raise InvalidRequestError("prompt is empty")
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        validate_prompt(ids, self.model_config.vocab_size, self.max_model_len)
        check_stop_strings(self.tokenizer, params.stop)
        if segments is not None:
            segments.validate(len(ids))
            if self.segments is None:
                raise InvalidRequestError("segment reuse is not available on this engine (its KV cache is elsewhere)")
        req = Request(request_id, ids, params, generator=self._generator(params),
                      cache_salt=(cache_salt or "").encode(), hold_kv=hold_kv)
        if segments is not None and segments.spans:
            req.segments = cast(SegmentPlanner, self.segments).plan(req, segments)  # checked above
        self._track(req)
        self.scheduler.add(req)
        return request_id

    def _track(self, req: Request) -> None:
        self.requests[req.request_id] = req
        if self.config.detokenize:
            self.detokenizers[req.request_id] = IncrementalDetokenizer(
                self.tokenizer, req.params.stop, req.all_token_ids)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Cancel a request and free its blocks; returns its final (empty) delta."""
        self.release_kv(request_id)
        req = self.requests.get(request_id) or self.awaiting_kv.pop(request_id, None)
        if req is None:
            return None
        self._release(req)
        req.finish_reason = FinishReason.ABORT
        self._forget(req)
        return RequestOutput(request_id, [], "", True, FinishReason.ABORT,
                             num_prompt_tokens=req.num_prompt_tokens)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or self._in_flight is not None

    def generate(self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams]
                 ) -> list[GenerationResult]:
        """Run prompts to completion (all queued at once, batched continuously)."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise InvalidRequestError(f"{len(prompts)} prompts but {len(params_list)} sampling params")
        results = {}
        for prompt, p in zip(prompts, params_list):
            rid = self.add_request(None, prompt, p)
            results[rid] = GenerationResult(rid, list(self.requests[rid].prompt_token_ids))
        while any(r.finish_reason is None for r in results.values()):
            for delta in self.step():
                if delta.request_id in results:
                    results[delta.request_id].add(delta)
        while self._in_flight is not None and not self.scheduler.has_unfinished():
            self.step()  # read back a queued step of spare rows: its blocks are freed after it
        return list(results.values())

    # -- stepping -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one scheduled batch; returns a delta for every request that sampled.

        With ``async_scheduling`` the batch is queued on the device and the deltas are those
        of the step before it (whose tokens the device sampled while this one was prepared):
        the host's work for a step overlaps the device's work for the previous one.
        """
        prof = self.profile
        prof.begin()
        sched = self.scheduler.schedule()
        self.num_preemptions += len(sched.preempted)
        launched = None
        if not sched.is_empty:
            prof.lap("schedule")
            try:
                launched = self._launch(sched)
            except KVCacheLost:
                self._recompute_all()
            prof.lap("forward")
        previous, self._in_flight = self._in_flight, launched
        if not self.async_scheduling:
            previous, self._in_flight = launched, None
        outputs = []
        if previous is not None:
            previous.wait()
            prof.lap("wait")
            outputs = self._read_back(previous)
            prof.lap("finish")
        if launched is not None:
            prof.end(launched.kind, launched.num_tokens, launched.num_seqs)
        elif previous is not None:  # the last queued step read back: its time counts, as no step of its own
            prof.end(previous.kind, 0, 0, count=False)
        if launched is None and previous is None or not self.has_unfinished():
            # idle, or the last request just ended: the last batch's plan, layout and graph can go
            self._plan_cache.clear()
            self.runner.release_shared()
        return outputs

    def _launch(self, sched: SchedulerOutput) -> LaunchedStep:
        """Queue one step's forward and sampling on the device; nothing here waits for it."""
        inp = build_model_input(sched.scheduled, self.kv.block_size, self.device, self._shared_prefix_min,
                                self._plan_cache)
        if self._in_flight is not None:
            self._in_flight.feed(sched.scheduled, inp.input_ids)
        sampling = [s.request for s in sched.scheduled if s.samples]
        self.profile.lap("prepare")
        logits = self.runner.execute(inp)
        for s in sched.scheduled:
            s.request.num_computed_tokens += s.num_new_tokens
            self.kv.commit_computed(s.request)
            if s.request.segments is not None:
                cast(SegmentPlanner, self.segments).after_compute(s.request)  # planned by it
        meta = inp.meta
        tokens = self.sampler.sample(logits, sampling) if sampling else None
        step = LaunchedStep(
            self.device, sampling, [len(r.output_token_ids) for r in sampling], tokens,
            self.sampler.logprob_tensors(logits, cast(torch.Tensor, tokens), sampling) if sampling else None,
            {id(s.request) for s in sched.scheduled},
            step_kind(meta.decode_only, meta.shared is not None, self.runner.last_graphed),
            sum(s.num_new_tokens for s in sched.scheduled), meta.num_seqs)
        for r in sampling:
            r.output_token_ids.append(PENDING)
            r.num_pending_tokens += 1
            r.stop_pending = (r.hold_kv or len(r.output_token_ids) >= r.params.max_tokens
                              or r.num_tokens >= self.max_model_len)
        return step

    def _recompute_all(self) -> None:
        """The runner lost the cache's contents: forget every cached prefix and preempt every
        request (each recomputes prompt + generated tokens when it runs again)."""
        self.kv.pool.reset_cache()
        self.num_preemptions += len(self.scheduler.preempt_all())

    def _read_back(self, step: LaunchedStep) -> list[RequestOutput]:
        """Fill in a launched step's tokens: stop checks, detokenizing, deltas; then free the
        blocks of requests released while it ran."""
        tokens, logprobs = step.results()
        outputs = []
        for req, slot, token, lp in zip(step.sampling, step.slots, tokens, logprobs):
            if req.finish_reason is not None:  # finished (or aborted) by an earlier token: a spare row
                continue
            req.num_pending_tokens -= 1
            req.stop_pending = req.stop_pending and req.num_pending_tokens > 0
            outputs.append(self._append(req, slot, token, lp))
        for req in step.deferred:
            self.kv.free(req)
        return outputs

    def _append(self, req: Request, slot: int, token: int, logprob: TokenLogprob | None) -> RequestOutput:
        req.output_token_ids[slot] = token  # in place of PENDING
        self.kv.commit_computed(req)  # the block this token's step completed, now that its ids are known
        num_output = slot + 1
        detok = self.detokenizers.get(req.request_id)
        reason = token_finish_reason(req.params, token, num_output, req.num_prompt_tokens + num_output,
                                     self.eos_token_ids, self.max_model_len)
        if detok is not None and reason is not FinishReason.STOP:
            detok.add(token)
            if detok.stopped:
                reason = FinishReason.STOP
        if reason is not None:
            del req.output_token_ids[num_output:]  # tokens a later step was sampling: never returned
            req.num_pending_tokens, req.stop_pending = 0, False
            req.finish_reason = reason
            self._finish(req)
        text = detok.take(final=reason is not None) if detok is not None else ""
        return RequestOutput(req.request_id, [token], text, finished=reason is not None,
                             finish_reason=reason, new_logprobs=[logprob] if logprob is not None else [],
                             num_prompt_tokens=req.num_prompt_tokens,
                             num_cached_tokens=req.num_cached_tokens + req.num_reused_tokens,
                             num_reused_segment_tokens=req.num_reused_tokens)

    def _finish(self, req: Request) -> None:
        """Free a finished request's blocks, or keep them for a KV handoff if it holds its KV."""
        if req.hold_kv:
            self.scheduler.detach(req)
            self.held[req.request_id] = req
        else:
            self._release(req)
        self._forget(req)

    def _release(self, req: Request) -> None:
        """Drop a request from the scheduler and free its blocks, once no queued step writes them."""
        if self._in_flight is not None and self._in_flight.defer_free(req):
            self.scheduler.detach(req)
        else:
            self.scheduler.finish(req)

    def _forget(self, req: Request) -> None:
        self.requests.pop(req.request_id, None)
        self.detokenizers.pop(req.request_id, None)

    def _segment_planner(self) -> SegmentPlanner | None:
        """Segment reuse over this engine's KV cache (None when the cache lives elsewhere)."""
        cache = getattr(self.runner, "kv_cache", None)
        if not isinstance(cache, torch.Tensor):
            return None
        cfg = self.config.segments
        store = SegmentStore(cfg.budget(self.device), cfg.max_anchors)
        return SegmentPlanner(store, PagedKV(cache), self.model_config, cfg.temperature)

    def _generator(self, params: SamplingParams) -> torch.Generator | None:
        if params.greedy:
            return None
        seed = params.seed if params.seed is not None else int(
            torch.randint(0, 2**62, (1,), generator=self._seeds))
        return torch.Generator(device=self.device).manual_seed(seed)

    # -- KV handoff ---------------------------------------------------------------------
    def held_kv(self, request_id: str) -> Request:
        """A finished hold_kv request: its block_ids hold the KV of its first num_computed_tokens."""
        if request_id not in self.held:
            raise KeyError(f"request {request_id!r} holds no KV here")
        return self.held[request_id]

    def release_kv(self, request_id: str) -> None:
        """Free the blocks of a held request (after its handoff, or to drop it)."""
        req = self.held.pop(request_id, None)
        if req is not None:
            self.kv.free(req)

    def add_prefilled(self, request_id: str, prompt_token_ids: list[int], output_token_ids: list[int],
                      params: SamplingParams, generator_state: torch.Tensor | None = None,
                      cache_salt: str | None = None, exact_tokens: int | None = None) -> Reservation | None:
        """Reserve blocks for a request whose prompt KV another engine computed.

        Leading blocks already in this engine's prefix cache are reused; the reservation
        lists the blocks still to receive (the prompt's blocks after ``num_cached_blocks``).
        None if the pool lacks room. The request starts decoding after ``kv_arrived``.
        ``exact_tokens``: the KV is exact for these leading tokens only (the sender reused
        segments after other prefixes): later blocks never go to this engine's prefix cache.
        """
        if request_id in self.requests or request_id in self.awaiting_kv:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        validate_prompt(prompt_token_ids, self.model_config.vocab_size, self.max_model_len)
        req = Request(request_id, list(prompt_token_ids), params, generator=self._generator(params),
                      cache_salt=(cache_salt or "").encode(), output_token_ids=list(output_token_ids),
                      exact_tokens=exact_tokens)
        if generator_state is not None and req.generator is not None:
            req.generator.set_state(generator_state)
        cached = self.kv.match_prefix(req) // self.kv.block_size
        if not self.kv.allocate_slots(req, req.num_prompt_tokens):
            self.kv.free(req)
            return None
        req.num_computed_tokens = req.num_prompt_tokens
        req.num_cached_tokens = cached * self.kv.block_size
        self.kv.count_lookup(req.num_prompt_tokens, req.num_cached_tokens)
        self.awaiting_kv[request_id] = req
        return Reservation(req.block_ids[cached:], cached)

    def kv_not_coming(self, request_id: str) -> None:
        """A reserved prompt's KV will not be sent (the engine holding it cannot reach this
        cache): its blocks go back, and the request computes its prompt here when it runs,
        as a preempted one does. ``kv_arrived`` still queues it."""
        req = self.awaiting_kv[request_id]
        self.kv.count_lookup(-req.num_prompt_tokens, -req.num_cached_tokens)  # counted again when it is admitted
        self.kv.free(req)
        req.num_computed_tokens = req.num_cached_tokens = 0
        req.exact_tokens = None  # computed here, in full

    def kv_arrived(self, request_id: str) -> None:
        """The prompt KV is in place: queue the request to decode."""
        req = self.awaiting_kv.pop(request_id)
        self.kv.commit_computed(req)
        self._track(req)
        self.scheduler.add(req)

    # -- introspection --------------------------------------------------------------------
    def stats(self) -> EngineStats:
        return EngineStats(len(self.scheduler.running), len(self.scheduler.waiting),
                           self.runner.num_blocks, self.kv.num_free_blocks, self.num_preemptions,
                           self.kv.prefix_queries, self.kv.prefix_hits, self.profile.totals(),
                           self.segments.stats() if self.segments is not None else SegmentStats(),
                           len(self.held) + len(self.awaiting_kv))
