"""When a request is done, decided from its latest token (text-level stop strings aside)."""

from __future__ import annotations

from collections.abc import Collection

from engine.outputs import FinishReason
from engine.sampling_params import SamplingParams


def token_finish_reason(params: SamplingParams, token: int, num_output_tokens: int, num_tokens: int,
                        eos_token_ids: Collection[int], max_model_len: int) -> FinishReason | None:
    """STOP on a stop token or EOS (the sampler never picks one before min_tokens), LENGTH at
    max_tokens or max_model_len, else None."""
    if token in params.stop_token_ids or (not params.ignore_eos and token in eos_token_ids):
        return FinishReason.STOP
    if num_output_tokens >= params.max_tokens or num_tokens >= max_model_len:
        return FinishReason.LENGTH
    return None
