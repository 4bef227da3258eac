"""Checks on a prompt before it is queued; each failure names what is wrong."""

from __future__ import annotations

from engine.sampling_params import InvalidRequestError


def validate_prompt(token_ids: list[int], vocab_size: int, max_model_len: int) -> None:
    if not token_ids:
        raise InvalidRequestError("prompt is empty")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in token_ids):
        raise InvalidRequestError("prompt token ids must be integers")
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequestError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    if len(token_ids) >= max_model_len:
        raise InvalidRequestError(
            f"prompt has {len(token_ids)} tokens; max_model_len is {max_model_len}, "
            "which leaves no room for output")
