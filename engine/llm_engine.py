"""The single-process engine: tokenize, schedule, run the model, sample, detokenize.

    engine = LLMEngine(EngineConfig(model="path/to/checkpoint"))
    engine.add_request("r1", "Hello", SamplingParams(max_tokens=8, temperature=0))
    while engine.has_unfinished():
        for delta in engine.step(): ...
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from engine.attention import default_backend_name, get_backend
from engine.batch import build_model_input
from engine.cache_sizing import choose_num_blocks, resolve_max_model_len
from engine.config import EngineConfig, parse_dtype
from engine.detokenizer import IncrementalDetokenizer
from engine.kv_cache_manager import KVCacheManager
from engine.model.loader import load_model
from engine.model_config import ModelConfig
from engine.model_runner import ModelRunner
from engine.outputs import FinishReason, RequestOutput, TokenLogprob
from engine.request import Request
from engine.request_validation import validate_prompt
from engine.sampler import Sampler
from engine.sampling_params import InvalidRequestError, SamplingParams
from engine.scheduler import Scheduler
from engine.tokenizer import Tokenizer


@dataclass
class GenerationResult:
    """A finished request, assembled from its deltas."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    num_cached_tokens: int = 0

    def add(self, delta: RequestOutput) -> None:
        self.token_ids += delta.new_token_ids
        self.text += delta.new_text
        self.logprobs += delta.new_logprobs
        self.num_cached_tokens = delta.num_cached_tokens
        if delta.finished:
            self.finish_reason = delta.finish_reason


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_blocks: int
    num_free_blocks: int
    num_preemptions: int
    prefix_cache_queries: int
    prefix_cache_hits: int


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.device = torch.device(config.device)
        self.model_config = ModelConfig.from_dir(config.model)
        self.tokenizer = Tokenizer(config.model)
        dtype = parse_dtype(config.dtype or self.model_config.torch_dtype)
        max_len = resolve_max_model_len(self.model_config, config.scheduler.max_model_len)
        model = load_model(config.model, dtype, self.device, max_positions=max_len)
        backend = get_backend(config.attention_backend or default_backend_name(self.device))
        block_size = config.cache.block_size
        num_blocks = choose_num_blocks(model, config, max_len)
        self.max_model_len = min(max_len, num_blocks * block_size)
        self.runner = ModelRunner(model, backend, num_blocks, block_size)
        self.kv = KVCacheManager(num_blocks, block_size, config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.kv)
        eos = set(self.model_config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = tuple(sorted(eos))
        self.sampler = Sampler(self.eos_token_ids)
        self.requests: dict[str, Request] = {}
        self.detokenizers: dict[str, IncrementalDetokenizer] = {}
        self._seeds = torch.Generator().manual_seed(config.seed)
        self._ids = itertools.count()
        self.num_preemptions = 0
        if self.device.type == "cuda" and config.cuda_graphs and backend.name == "triton":
            self.runner.capture_graphs(config.scheduler.max_num_seqs, self.max_model_len)

    # -- requests -------------------------------------------------------------------------
    def add_request(self, request_id: str | None, prompt: str | list[int], params: SamplingParams,
                    cache_salt: str | None = None) -> str:
        """Queue a request; raises InvalidRequestError with a message for bad input."""
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        if isinstance(prompt, str) and not prompt:
            raise InvalidRequestError("prompt is empty")
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        validate_prompt(ids, self.model_config.vocab_size, self.max_model_len)
        params.validate()
        req = Request(request_id, ids, params, generator=self._generator(params),
                      cache_salt=(cache_salt or "").encode())
        self.requests[request_id] = req
        self.detokenizers[request_id] = IncrementalDetokenizer(self.tokenizer, params.stop, ids)
        self.scheduler.add(req)
        return request_id

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Cancel a request and free its blocks; returns its final (empty) delta."""
        req = self.requests.get(request_id)
        if req is None:
            return None
        self.scheduler.finish(req)
        req.finish_reason = FinishReason.ABORT
        self._forget(req)
        return RequestOutput(request_id, [], "", True, FinishReason.ABORT,
                             num_prompt_tokens=req.num_prompt_tokens)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

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
        return list(results.values())

    # -- stepping -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one scheduled batch; returns a delta for every request that sampled."""
        sched = self.scheduler.schedule()
        self.num_preemptions += len(sched.preempted)
        if sched.is_empty:
            return []
        inp = build_model_input(sched.scheduled, self.kv.block_size, self.device)
        sampling = [s.request for s in sched.scheduled if s.samples]
        logits = self.runner.execute(inp)
        for s in sched.scheduled:
            s.request.num_computed_tokens += s.num_new_tokens
            self.kv.commit_computed(s.request)
        if not sampling:
            return []
        tokens, logprobs = self.sampler(logits, sampling)
        return [self._append(r, t, lp) for r, t, lp in zip(sampling, tokens, logprobs)]

    def _append(self, req: Request, token: int, logprob: TokenLogprob | None) -> RequestOutput:
        req.output_token_ids.append(token)
        detok = self.detokenizers[req.request_id]
        reason = self._stop_token_reason(req, token)
        if reason is None:
            detok.add(token)
            reason = self._length_reason(req, detok)
        if reason is not None:
            req.finish_reason = reason
            self.scheduler.finish(req)
            self._forget(req)
        return RequestOutput(req.request_id, [token], detok.take(final=reason is not None),
                             finished=reason is not None, finish_reason=reason,
                             new_logprobs=[logprob] if logprob is not None else [],
                             num_prompt_tokens=req.num_prompt_tokens,
                             num_cached_tokens=req.num_cached_tokens)

    def _stop_token_reason(self, req: Request, token: int) -> FinishReason | None:
        p = req.params  # the sampler never picks a stop token before min_tokens
        if token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_token_ids):
            return FinishReason.STOP
        return None

    def _length_reason(self, req: Request, detok: IncrementalDetokenizer) -> FinishReason | None:
        if detok.stopped:
            return FinishReason.STOP
        if len(req.output_token_ids) >= req.params.max_tokens or req.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return None

    def _forget(self, req: Request) -> None:
        self.requests.pop(req.request_id, None)
        self.detokenizers.pop(req.request_id, None)

    def _generator(self, params: SamplingParams) -> torch.Generator | None:
        if params.greedy:
            return None
        seed = params.seed if params.seed is not None else int(
            torch.randint(0, 2**62, (1,), generator=self._seeds))
        return torch.Generator(device=self.device).manual_seed(seed)

    # -- introspection --------------------------------------------------------------------
    def stats(self) -> EngineStats:
        return EngineStats(len(self.scheduler.running), len(self.scheduler.waiting),
                           self.runner.num_blocks, self.kv.num_free_blocks, self.num_preemptions,
                           self.kv.prefix_queries, self.kv.prefix_hits)
