"""Turning a worker's token stream into the caller's deltas: text, stop strings, finish.

Workers stream token ids only; the router side owns detokenization, so stop strings are
applied here and the worker is told to stop when one appears.
"""

from __future__ import annotations

from engine.detokenizer import IncrementalDetokenizer
from engine.outputs import FinishReason, RequestOutput, TokenLogprob
from engine.sampling_params import SamplingParams
from engine.stop_conditions import token_finish_reason
from engine.tokenizer import AnyTokenizer, check_stop_strings


class OutputProcessor:
    def __init__(self, request_id: str, prompt: list[int], params: SamplingParams, tokenizer: AnyTokenizer,
                 eos_token_ids: tuple[int, ...], max_model_len: int):
        check_stop_strings(tokenizer, params.stop)
        self.request_id, self.params = request_id, params
        self.num_prompt_tokens = len(prompt)
        self.detok = IncrementalDetokenizer(tokenizer, params.stop, prompt)
        self.eos_token_ids, self.max_model_len = eos_token_ids, max_model_len
        self.stop_token_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
        self.num_output_tokens = 0
        self.finished = False
        self.prefilled: tuple[int, int] | None = None  # (cached, reused) prompt tokens, once a prefill said

    def first_token(self, token: int, logprob: TokenLogprob | None, num_cached: int,
                    num_reused: int = 0) -> RequestOutput:
        """The prefill's token (the first, or the next one when the prompt and the tokens so far
        were prefilled again): finish reasons are decided here, the prefill engine knows none.
        Its prompt counts (cached, reused segment tokens) stand for the rest of the request."""
        n = self.num_output_tokens + 1
        reason = token_finish_reason(self.params, token, n, self.num_prompt_tokens + n,
                                     self.eos_token_ids, self.max_model_len)
        self.prefilled = (num_cached, num_reused)
        return self._emit([token], [logprob] if logprob else [], reason, self.prefilled)

    def worker_delta(self, delta: RequestOutput) -> RequestOutput:
        """A decode worker's delta (its finish reason stands, a stop string may override it)."""
        counts = self.prefilled or (delta.num_cached_tokens, delta.num_reused_segment_tokens)
        return self._emit(delta.new_token_ids, delta.new_logprobs, delta.finish_reason, counts, delta.finished)

    def _emit(self, tokens: list[int], logprobs: list, reason: FinishReason | None, counts: tuple[int, int],
              finished: bool = False) -> RequestOutput:
        self.num_output_tokens += len(tokens)
        for t in tokens:
            if t not in self.stop_token_ids:  # a stop token ends the output and adds no text
                self.detok.add(t)
        if self.detok.stopped:
            reason = FinishReason.STOP
        self.finished = finished or reason is not None
        return RequestOutput(self.request_id, tokens, self.detok.take(final=self.finished),
                             self.finished, reason, list(logprobs), self.num_prompt_tokens, *counts)
