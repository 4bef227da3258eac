"""Turning logits into next tokens: greedy, temperature, top-k, top-p, per-request seeds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch

from engine.outputs import TokenLogprob
from engine.request import Request
from engine.uploads import upload


class Sampler:
    def __init__(self, eos_token_ids: Sequence[int]):
        self.eos_token_ids = tuple(eos_token_ids)

    def sample(self, logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
        """int64 [N] next tokens, left on the logits' device: nothing here waits for the device."""
        logits = self._mask_early_stops(logits, requests)
        tokens = logits.argmax(dim=-1)
        rand_rows = [i for i, r in enumerate(requests) if not r.params.greedy]
        if rand_rows:
            rows = _index(rand_rows if len(rand_rows) < len(requests) else slice(None), logits.device)
            tokens[rows] = self._sample_rows(logits[rows], [requests[i] for i in rand_rows])
        return tokens

    def _mask_early_stops(self, logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
        """Forbid EOS and stop tokens for requests below their min_tokens."""
        rows, cols = [], []
        for i, r in enumerate(requests):
            if len(r.output_token_ids) < r.params.min_tokens:  # pending tokens count: they exist
                banned = list(r.params.stop_token_ids) + ([] if r.params.ignore_eos else list(self.eos_token_ids))
                rows += [i] * len(banned)
                cols += banned
        if not rows:
            return logits
        logits = logits.clone()
        logits[_index(rows, logits.device), _index(cols, logits.device)] = float("-inf")
        return logits

    def _sample_rows(self, logits: torch.Tensor, requests: Sequence[Request]) -> torch.Tensor:
        temps = upload(torch.tensor([r.params.temperature for r in requests]), logits.device)
        logits = logits / temps.unsqueeze(1)
        logits = apply_top_k(logits, [r.params.top_k for r in requests])
        logits = apply_top_p(logits, [r.params.top_p for r in requests])
        probs = torch.softmax(logits, dim=-1)
        noise = torch.empty_like(probs)
        for i, r in enumerate(requests):
            noise[i].exponential_(generator=r.generator)
        return (probs / noise).argmax(dim=-1)

    @staticmethod
    def logprob_tensors(raw: torch.Tensor, tokens: torch.Tensor, requests: Sequence[Request]
                        ) -> LogprobTensors | None:
        """The sampled tokens' log-probabilities and each asking row's top-n, computed where the
        logits are (nothing waits for the device); None when no row asks."""
        rows = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
        if not rows:
            return None
        index = _index(rows, raw.device)
        logp = torch.log_softmax(raw[index], dim=-1)
        counts = cast("list[int]", [requests[i].params.logprobs for i in rows])  # rows ask: none is None
        top = torch.topk(logp, max(counts), dim=-1)
        return LogprobTensors(rows, counts, logp.gather(1, tokens[index].unsqueeze(1)).squeeze(1),
                              top.values, top.indices)


@dataclass
class LogprobTensors:
    """One step's log-probabilities for the sampling rows that asked (``rows``, top-``counts``)."""

    rows: list[int]
    counts: list[int]
    chosen: torch.Tensor      # fp32 [R]: each row's sampled token
    top_values: torch.Tensor  # fp32 [R, max(counts)], descending
    top_ids: torch.Tensor     # int64 [R, max(counts)]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> LogprobTensors:
        return LogprobTensors(self.rows, self.counts, fn(self.chosen), fn(self.top_values), fn(self.top_ids))

    def assemble(self, tokens: list[int]) -> list[TokenLogprob | None]:
        """Per sampling row (``tokens`` in row order): its TokenLogprob, or None if it did not ask."""
        result: list[TokenLogprob | None] = [None] * len(tokens)
        chosen, values, ids = self.chosen.tolist(), self.top_values.tolist(), self.top_ids.tolist()
        for j, (i, n) in enumerate(zip(self.rows, self.counts)):
            result[i] = TokenLogprob(tokens[i], chosen[j], tuple(zip(ids[j][:n], values[j][:n])))
        return result


def apply_top_k(logits: torch.Tensor, top_k: Sequence[int]) -> torch.Tensor:
    """Keep each row's k largest logits (k <= 0 keeps all)."""
    vocab = logits.shape[-1]
    ks = [k if 0 < k < vocab else vocab for k in top_k]
    if all(k == vocab for k in ks):
        return logits
    k_t = upload(torch.tensor(ks), logits.device)
    sorted_vals = logits.sort(dim=-1, descending=True).values
    kth = sorted_vals.gather(1, (k_t - 1).unsqueeze(1))
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: Sequence[float]) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p."""
    if all(p >= 1.0 for p in top_p):
        return logits
    p_t = upload(torch.tensor(top_p, dtype=logits.dtype), logits.device).unsqueeze(1)
    sorted_vals, order = logits.sort(dim=-1, descending=True)
    probs = sorted_vals.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass strictly above each token
    drop_sorted = before >= p_t
    drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _index(rows, device: torch.device):
    """Python row indices as a device index tensor (a slice stays a slice)."""
    return rows if isinstance(rows, slice) else upload(torch.tensor(rows, dtype=torch.int64), device)
